import pytest

from interp.corpus import Document, EmptyCorpusError, make_contexts, read_documents, split_of


def test_reads_txt_jsonl_parquet_and_non_utf8(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_bytes("caf\xe9 cr\xe8me".encode("cp1252"))  # not valid UTF-8
    (tmp_path / "b.jsonl").write_text('{"text": "first row"}\n\n{"text": "second row"}\n')
    pq.write_table(pa.table({"text": ["parquet row"]}), tmp_path / "c.parquet")
    docs = {d.name: d.text for d in read_documents([str(tmp_path)])}
    assert docs[str(tmp_path / "a.txt")] == "café crème"
    assert {"first row", "second row", "parquet row", "café crème"} == set(docs.values())


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(EmptyCorpusError, match="holds no text"):
        list(read_documents([str(tmp_path)]))
    with pytest.raises(EmptyCorpusError, match="matches no"):
        list(read_documents([str(tmp_path / "nothing-*.txt")]))


def test_jsonl_without_text_field_names_the_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="x.jsonl:1 has no 'text'"):
        list(read_documents([str(tmp_path)]))


def test_contexts_are_bos_prefixed_fixed_length_and_split_by_document(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs = [Document("toy", f"doc{i}.txt", "abcdefghij" * (3 + i)) for i in range(40)]
    ctxs = list(make_contexts(docs, tok, ctx_len=8, eval_fraction=0.25))
    assert all(len(c.tokens) == 8 and c.tokens[0] == tok.bos_token_id for c in ctxs)
    # every window of a document lands in the same split, and both splits occur
    by_doc = {}
    for c in ctxs:
        by_doc.setdefault(c.source, set()).add(c.split)
    assert all(len(s) == 1 for s in by_doc.values())
    assert {c.split for c in ctxs} == {"train", "eval"}
    # windows tile the document: doc0 has 30 chars -> 30 // 7 = 4 windows whose bodies concatenate to its prefix
    doc0 = [c.tokens[1:] for c in ctxs if c.source == "doc0.txt"]
    assert len(doc0) == 4
    assert tok.decode(sum(doc0, [])).replace(" ", "") == ("abcdefghij" * 3)[:28]
    assert split_of("dir/doc0.txt", 0.25) == split_of("other/doc0.txt", 0.25)


def test_corpus_is_the_first_level_subfolder_or_the_named_source(tmp_path):
    for sub in ("sotu", "plays/comedies"):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "x.txt").write_text(f"text of {sub}")
    (tmp_path / "loose.txt").write_text("a loose file")
    by_name = {d.name: d.corpus for d in read_documents([str(tmp_path)])}
    assert by_name[str(tmp_path / "sotu" / "x.txt")] == "sotu"
    assert by_name[str(tmp_path / "plays" / "comedies" / "x.txt")] == "plays"
    assert by_name[str(tmp_path / "loose.txt")] == tmp_path.name
    glob = str(tmp_path / "sotu" / "*.txt")
    assert {d.corpus for d in read_documents([glob, str(tmp_path / "loose.txt")])} == {glob, "loose.txt"}

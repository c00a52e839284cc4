"""Text corpus -> fixed-length token contexts with a deterministic train/eval split.

Steps:
  1. `read_documents(sources)` yields Documents (corpus, name, text) from folders, globs, or single files (.txt,
     .jsonl with a 'text' field, .parquet with a 'text' column), or `hf:<dataset>[:<split>]` for a Hugging Face
     dataset (online). Bytes that are not UTF-8 are decoded as cp1252 (then latin-1), with a warning naming the
     file. `corpus` names the source a document belongs to, the unit that samples are stratified by
     (interp.sampling): a folder's first-level subfolder (the default corpora folder holds sotu/, shakespeare/,
     moby-dick/), else the folder, file, glob or dataset the user named.
  2. `split_of(name, eval_fraction)` assigns a whole document to 'train' or 'eval' by a stable hash of its name,
     so no held-out document ever leaks into training.
  3. `make_contexts` tokenizes each document without special tokens, cuts it into windows of ctx_len - 1 tokens,
     and prepends BOS to each (the trailing partial window is dropped).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


class EmptyCorpusError(ValueError):
    pass


class Document(NamedTuple):
    corpus: str  # the source it belongs to, for stratified sampling
    name: str  # file path, 'path:row' or 'dataset:row'
    text: str


@dataclass(frozen=True)
class Context:
    split: str
    corpus: str
    source: str
    tokens: list[int]  # [ctx_len], BOS first


def decode_bytes(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.warning("%s is not valid UTF-8; decoding it as cp1252/latin-1", name)
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


def _files(source: str) -> list[str]:
    if os.path.isdir(source):
        found = [
            os.path.join(root, f)
            for root, _, names in os.walk(source)
            for f in names
            if f.endswith(TEXT_SUFFIXES)
        ]
    elif os.path.isfile(source):
        found = [source]
    else:
        found = [f for f in glob.glob(source, recursive=True) if f.endswith(TEXT_SUFFIXES)]
    return sorted(found)


def _read_file(path: str) -> Iterator[tuple[str, str]]:
    if path.endswith(".txt"):
        with open(path, "rb") as f:
            yield path, decode_bytes(f.read(), path)
    elif path.endswith(".jsonl"):
        with open(path, "rb") as f:
            for i, line in enumerate(f):
                if line.strip():
                    row = json.loads(decode_bytes(line, path))
                    if "text" not in row:
                        raise ValueError(f"{path}:{i + 1} has no 'text' field; each JSONL row needs one.")
                    yield f"{path}:{i}", row["text"]
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise ValueError(f"{path} has no 'text' column (columns: {table.column_names}).")
        for i, text in enumerate(table.column("text").to_pylist()):
            yield f"{path}:{i}", text or ""


def _read_hf(spec: str) -> Iterator[tuple[str, str]]:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ValueError(
            f"Corpus {spec!r} is a Hugging Face dataset but HF_HUB_OFFLINE=1; use a local folder."
        )
    import datasets  # optional dependency, only for online use

    name, _, split = spec[3:].partition(":")
    for i, row in enumerate(datasets.load_dataset(name, split=split or "train", streaming=True)):
        yield f"{name}:{i}", row["text"]


def corpus_name(source: str, path: str) -> str:
    """The corpus a file of `source` belongs to: its first-level subfolder of a folder source, else the source."""
    if os.path.isdir(source):
        rel = os.path.relpath(path, source).split(os.sep)
        return rel[0] if len(rel) > 1 else os.path.basename(os.path.normpath(source))
    return os.path.basename(source) if os.path.isfile(source) else source


def read_documents(sources: Iterable[str]) -> Iterator[Document]:
    """Every document of every source; an empty result is an error."""
    n = 0
    for source in sources:
        if source.startswith("hf:"):
            docs: Iterable[Document] = (Document(source[3:], name, t) for name, t in _read_hf(source))
        else:
            files = _files(source)
            if not files:
                raise EmptyCorpusError(
                    f"Corpus source {source!r} matches no {'/'.join(TEXT_SUFFIXES)} files."
                )
            docs = (
                Document(corpus_name(source, path), name, t) for path in files for name, t in _read_file(path)
            )
        for doc in docs:
            text = doc.text.replace("\x00", "")
            if text.strip():
                n += 1
                yield doc._replace(text=text)
    if n == 0:
        raise EmptyCorpusError(f"Corpus {list(sources)} holds no text; point the corpus at non-empty files.")


def split_of(name: str, eval_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha256(os.path.basename(name).encode()).digest()[:8], "big") / 2**64
    return "eval" if h < eval_fraction else "train"


def make_contexts(
    docs: Iterable[Document], tokenizer, ctx_len: int, eval_fraction: float, batch_docs: int = 64
) -> Iterator[Context]:
    """Tokenize documents into BOS-prefixed windows of `ctx_len` tokens (batched through a fast tokenizer)."""
    if ctx_len < 2:
        raise ValueError(f"ctx_len must be >= 2 (BOS + one token), got {ctx_len}.")
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("The tokenizer has no BOS token; contexts need one to start each window.")
    body = ctx_len - 1
    batch: list[Document] = []

    def flush() -> Iterator[Context]:
        ids = tokenizer([doc.text for doc in batch], add_special_tokens=False)["input_ids"]
        for doc, toks in zip(batch, ids):
            split = split_of(doc.name, eval_fraction)
            for start in range(0, len(toks) - body + 1, body):
                yield Context(
                    split, doc.corpus, os.path.basename(doc.name), [bos, *toks[start : start + body]]
                )
        batch.clear()

    for doc in docs:
        batch.append(doc)
        if len(batch) >= batch_docs:
            yield from flush()
    if batch:
        yield from flush()

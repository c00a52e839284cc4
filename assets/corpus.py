"""Assets `contexts` and `vocab`: the tokenized corpus and the model's token strings."""

import time

import dagster as dg
import polars as pl
from tqdm import tqdm

from assets.metadata import md_table
from assets.resources import AtlasModel
from interp.corpus import make_contexts, read_documents
from storage import corpus as corpus_store
from storage import layout


class CorpusConfig(dg.Config):
    sources: list[
        str
    ] = []  # folders, globs, files (.txt/.jsonl/.parquet) or 'hf:<name>'; [] = fetched defaults
    ctx_len: int = 128  # tokens per context, BOS included
    # share of documents held out (whole documents, by name hash); 10% of the default corpus is ~3.1k contexts,
    # room for the >= 250k-token mining set (features asset)
    eval_fraction: float = 0.1
    max_contexts: int = 0  # 0 = every window of the corpus


@dg.asset(group_name="corpus", kinds={"duckdb"})
def contexts(
    context: dg.AssetExecutionContext, config: CorpusConfig, atlas_model: AtlasModel
) -> dg.MaterializeResult:
    """Corpus text cut into BOS-prefixed fixed-length token windows with a deterministic train/eval split."""
    sources = config.sources or [layout.corpora_dir()]
    tok = atlas_model.tokenizer()
    t0 = time.perf_counter()
    rows: dict[str, list] = {"split": [], "corpus": [], "source": [], "tokens": []}
    for ctx in tqdm(
        make_contexts(read_documents(sources), tok, config.ctx_len, config.eval_fraction), desc="contexts"
    ):
        rows["split"].append(ctx.split)
        rows["corpus"].append(ctx.corpus)
        rows["source"].append(ctx.source)
        rows["tokens"].append(ctx.tokens)
        if config.max_contexts and len(rows["tokens"]) >= config.max_contexts:
            break
    if not rows["tokens"]:
        raise ValueError(f"Corpus {sources} is shorter than one context of {config.ctx_len} tokens.")
    missing = {"train", "eval"} - set(rows["split"])
    if missing:
        raise ValueError(
            f"Corpus {sources} puts no document in the {sorted(missing)} split: documents are held out whole "
            f"(eval_fraction {config.eval_fraction}), so it needs more documents (or another eval_fraction)."
        )
    texts = tok.batch_decode([t[1:] for t in rows["tokens"]])
    frame = pl.DataFrame(
        {"context_id": range(len(texts)), **rows, "text": texts},
        schema_overrides={"context_id": pl.Int32, "tokens": pl.List(pl.Int32)},
    )
    corpus_store.write_contexts(frame)
    counts = frame.group_by("split", "corpus").len().sort("split", "corpus")
    n_tokens = frame.height * config.ctx_len
    return dg.MaterializeResult(
        metadata={
            "contexts": frame.height,
            "tokens": n_tokens,
            "by_split": md_table(counts),
            "sources": ", ".join(sources),
            "tokens_per_s": round(n_tokens / (time.perf_counter() - t0)),
            "preview": md_table(frame.head(3).select("context_id", "split", "source", "text")),
        }
    )


@dg.asset(group_name="corpus", kinds={"duckdb"})
def vocab(context: dg.AssetExecutionContext, atlas_model: AtlasModel) -> dg.MaterializeResult:
    """Every token id of the model's tokenizer with its decoded string."""
    tok = atlas_model.tokenizer()
    strings = tok.batch_decode([[i] for i in range(len(tok))])
    n = corpus_store.write_vocab(atlas_model.model_name, strings)
    return dg.MaterializeResult(metadata={"model": atlas_model.model_name, "tokens": n})


ASSETS = [contexts, vocab]
CHECKS: list = []

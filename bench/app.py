"""Feature card speed: the card query and the whole card page (Streamlit AppTest, warm), on the default build when
it exists and on a synthetic atlas at scale (100k features; BENCH_APP_FEATURES to change).

    python -m bench app
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from bench import scoped_env
from storage import layout, queries
from storage.db import readers, row_writes

PAGE = str(Path(__file__).resolve().parents[1] / "app" / "pages" / "2_Feature_card.py")
TARGET_S = 0.3  # the goal: the card page renders in <= 0.3 s server side, warm (docs/benchmarks.md)


def build_synthetic(n_features: int, n_transcoders: int = 4, seed: int = 0) -> list[str]:
    """A random atlas shaped like the default build: examples, token effects, edges, neighbours per feature."""
    rng = np.random.default_rng(seed)
    d_sae, n_ctx, ctx_len, win, vocab = n_features // n_transcoders, 20_000, 64, 24, 49_152
    tids = [f"bench/L{layer}/relu-{d_sae}" for layer in range(n_transcoders)]
    tables = [
        (
            "vocab",
            pl.DataFrame(
                {"model": "bench", "token_id": range(vocab), "token_str": [f"t{i}" for i in range(vocab)]}
            ),
            {},
        ),
        (
            "contexts",
            pl.DataFrame(
                {
                    "context_id": range(n_ctx),
                    "split": "eval",
                    "tokens": rng.integers(0, vocab, (n_ctx, ctx_len), dtype=np.int32).tolist(),
                }
            ),
            {},
        ),
    ]
    for layer, tid in enumerate(tids):
        f = np.arange(d_sae)
        tables.append(
            (
                "transcoders",
                pl.DataFrame({"transcoder_id": [tid], "model": "bench", "layer": layer, "d_sae": d_sae}),
                {},
            )
        )
        tables.append(
            (
                "features",
                pl.DataFrame(
                    {
                        "transcoder_id": tid,
                        "feature": f,
                        "density": rng.uniform(0, 0.1, d_sae),
                        "mean_act": rng.uniform(0, 2, d_sae),
                        "max_act": rng.uniform(2, 5, d_sae),
                        "n_active": rng.integers(0, 10_000, d_sae),
                        "quantiles": [[0.1, 0.5, 1.0, 2.0]] * d_sae,
                        "quantile_levels": [[0.1, 0.5, 0.9, 0.99]] * d_sae,
                        "hist_edges": [np.linspace(0, 5, 33).tolist()] * d_sae,
                        "hist_counts": rng.integers(0, 100, (d_sae, 32)).tolist(),
                        "label": [f"label {i}" for i in f],
                    }
                ),
                {},
            )
        )
        n_ex, kinds = 20, ["top"] * 10 + ["q0"] * 5 + ["q1"] * 5
        tables.append(
            (
                "feature_examples",
                pl.DataFrame(
                    {
                        "transcoder_id": tid,
                        "feature": np.repeat(f, n_ex),
                        "kind": kinds * d_sae,
                        "rank": ([*range(10), *range(5), *range(5)]) * d_sae,
                        "context_id": rng.integers(0, n_ctx, d_sae * n_ex),
                        "position": 30,
                        "activation": rng.uniform(0, 5, d_sae * n_ex),
                        "window_start": 20,
                        "token_acts": pl.Series(
                            rng.uniform(0, 5, (d_sae * n_ex, win)).astype(np.float32)
                        ).cast(pl.List(pl.Float32)),
                    }
                ),
                {},
            )
        )
        n_tok = 10
        tables.append(
            (
                "feature_tokens",
                pl.DataFrame(
                    {
                        "transcoder_id": tid,
                        "feature": np.repeat(f, 3 * n_tok),
                        "kind": np.tile(np.repeat(["deembed", "logit_top", "logit_bottom"], n_tok), d_sae),
                        "rank": np.tile(np.arange(n_tok), 3 * d_sae),
                        "token_id": rng.integers(0, vocab, 3 * n_tok * d_sae),
                        "value": rng.normal(size=3 * n_tok * d_sae),
                    }
                ),
                {},
            )
        )
        tables.append(
            (
                "feature_neighbors",
                pl.DataFrame(
                    {
                        "transcoder_id": tid,
                        "feature": np.repeat(f, 5),
                        "rank": np.tile(np.arange(5), d_sae),
                        "nb_transcoder_id": tid,
                        "nb_feature": rng.integers(0, d_sae, 5 * d_sae),
                        "cosine": rng.uniform(0, 1, 5 * d_sae),
                    }
                ),
                {},
            )
        )
        if layer:
            k = 10  # top-k upstream features of every downstream feature, as the circuits stage stores them
            tables.append(
                (
                    "feature_edges",
                    pl.DataFrame(
                        {
                            "src_transcoder_id": tids[layer - 1],
                            "src_feature": (np.repeat(f, k) * 7 + np.tile(np.arange(k), d_sae)) % d_sae,
                            "dst_transcoder_id": tid,
                            "dst_feature": np.repeat(f, k),
                            "via": "resid",
                            "weight": rng.normal(size=k * d_sae),
                            "rank": np.tile(np.arange(k), d_sae),
                        }
                    ),
                    {},
                )
            )
    row_writes.write_many(tables)
    return tids


def time_cards(keys: list[tuple[str, int]]) -> list[float]:
    out = []
    for tid, f in keys:
        t0 = time.perf_counter()
        assert queries.feature_card(tid, f) is not None
        out.append(time.perf_counter() - t0)
    return out


def time_pages(keys: list[tuple[str, int]]) -> list[float]:
    """Server-side time of a full card page run (the page's own 'Card rendered in N ms', measured inside the
    script from its first line to its last) in AppTest; the first run warms up imports and caches."""
    from streamlit.testing.v1 import AppTest

    out = []
    for tid, f in keys:
        at = AppTest.from_file(PAGE, default_timeout=120)
        at.query_params["transcoder"], at.query_params["feature"] = tid, str(f)
        at.run()
        assert not at.exception, at.exception
        caption = next(c.value for c in at.caption if c.value.startswith("Card rendered in"))
        out.append(float(re.search(r"in (\d+) ms", caption).group(1)) / 1000)
    return out[1:]


def report(name: str, keys: list[tuple[str, int]]) -> None:
    q, p = time_cards(keys), time_pages(keys[:8])
    med_q, med_p = statistics.median(q), statistics.median(p)
    print(
        f"   {name}: card query median {1000 * med_q:.0f} ms, p95 {1000 * np.quantile(q, 0.95):.0f} ms ({len(q)} cards)"
    )
    print(
        f"   {name}: card page render (server side, warm) median {1000 * med_p:.0f} ms; query share {med_q / med_p:.0%}"
    )
    print(f"   {name}: page render / {TARGET_S} s target = {med_p / TARGET_S:.2f}")


def sample_keys(n: int, seed: int = 1) -> list[tuple[str, int]]:
    rows = readers.query(
        f"SELECT transcoder_id, feature FROM features USING SAMPLE reservoir({int(n)} ROWS) REPEATABLE ({int(seed)})"
    )
    return list(rows.iter_rows())


def main() -> None:
    if Path(layout.db_path()).exists() and readers.query("SELECT count(*) AS n FROM features")["n"][0]:
        report(f"default build ({layout.db_path()})", sample_keys(40))
    else:
        print(f"   default build: no features at {layout.db_path()} (run `make atlas`)")
    n = int(os.environ.get("BENCH_APP_FEATURES", "100000"))
    with tempfile.TemporaryDirectory() as tmp, scoped_env("ATLAS_HOME", tmp):
        t0 = time.perf_counter()
        build_synthetic(n)
        size = os.path.getsize(layout.db_path()) / 2**20
        print(
            f"   synthetic atlas: {n:,} features, {size:.0f} MiB, built in {time.perf_counter() - t0:.0f} s"
        )
        report("synthetic", sample_keys(40))

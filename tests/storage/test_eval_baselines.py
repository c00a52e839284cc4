"""storage.eval_baselines: the mean-ablation baselines round-trip, and their key changes with everything that
changes the losses (layer, mean, sample ids, sample tokens, precision), so a changed sample never hits the cache."""

from __future__ import annotations

import torch

from storage import eval_baselines as eb
from storage.db import readers


def _sample(n=5, ctx_len=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return list(range(10, 10 + n)), torch.randint(0, 50, (n, ctx_len), generator=g)


def test_round_trip_and_replace(atlas_home):
    ids, tokens = _sample()
    mean = torch.randn(8)
    key = eb.baseline_key("toy", 1, mean, ids, tokens, {"bf16": False})
    losses = torch.tensor([1.5, 2.0, 2.5, 3.0, 3.5], dtype=torch.float64)
    eb.write("toy", {1: (key, losses)}, n_tokens_per_context=5)
    got = eb.read({1: key, 2: "missing"})
    assert list(got) == [1] and torch.equal(got[1], losses)
    row = readers.query("SELECT * FROM ablation_baselines").row(0, named=True)
    assert (row["model"], row["layer"], row["n_contexts"], row["n_ce_tokens"]) == ("toy", 1, 5, 25)
    assert row["ce_ablated"] == sum(losses.tolist()) / 25
    eb.write("toy", {1: (key, losses * 2)}, n_tokens_per_context=5)  # same key: replaced, not duplicated
    assert readers.query("SELECT count(*) n FROM ablation_baselines")["n"][0] == 1
    assert torch.equal(eb.read({1: key})[1], losses * 2)


def test_key_changes_with_what_changes_the_losses():
    ids, tokens = _sample()
    mean = torch.randn(8)
    base = eb.baseline_key("toy", 1, mean, ids, tokens, {"bf16": False})
    assert base == eb.baseline_key("toy", 1, mean.clone(), list(ids), tokens.clone(), {"bf16": False})
    other_tokens = tokens.clone()
    other_tokens[0, 1] += 1
    changed = [
        eb.baseline_key("other", 1, mean, ids, tokens, {"bf16": False}),
        eb.baseline_key("toy", 2, mean, ids, tokens, {"bf16": False}),
        eb.baseline_key("toy", 1, mean + 1e-3, ids, tokens, {"bf16": False}),
        eb.baseline_key("toy", 1, mean, ids[::-1], tokens, {"bf16": False}),
        eb.baseline_key("toy", 1, mean, ids, other_tokens, {"bf16": False}),
        eb.baseline_key("toy", 1, mean, ids, tokens, {"bf16": True}),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_migration_7_adds_the_interval_columns_and_the_cache_to_a_version_6_database(atlas_home):
    from storage.db import working_copy

    eb.write("toy", {1: ("k", torch.ones(2))}, n_tokens_per_context=3)  # creates the database at this version
    new_columns = ("n_eval_contexts", "ce_recovered_lo", "ce_recovered_hi", "delta_ce_lo", "delta_ce_hi")
    with working_copy.writer() as con:  # back to what version 6 had
        con.execute("DROP TABLE ablation_baselines")
        for c in new_columns:
            con.execute(f"ALTER TABLE transcoder_metrics DROP COLUMN {c}")
        con.execute("ALTER TABLE graphs DROP COLUMN method")  # version 8's
        con.execute("DELETE FROM schema_version WHERE version >= 7")
    eb.write("toy", {1: ("k", torch.ones(2))}, n_tokens_per_context=3)  # the next writer migrates
    cols = readers.query("SELECT * FROM transcoder_metrics LIMIT 0").columns
    assert set(new_columns) <= set(cols)
    assert readers.query("SELECT count(*) n FROM ablation_baselines")["n"][0] == 1

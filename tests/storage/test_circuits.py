"""Circuit tables: feature_edges and attribution graphs round-trip through DuckDB, replace idempotently, and export
to circuit-tracer JSON with attention nodes folded into links without losing attribution."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from interp.attribution import PASS_THROUGH_KINDS, LogitTarget, attribute
from interp.edges import feature_edges
from interp.faithfulness import NodeIntervention
from interp.transcoder import Transcoder
from storage import circuits, graph_export, queries
from storage.db import readers, row_writes
from tests.interp.test_edges import make_transcoders

TOKENS = torch.tensor([1, 20, 31, 15, 22, 9, 40, 41])
IDS = {0: "tiny/L0/relu-48", 1: "tiny/L1/relu-48", 2: "tiny/L2/relu-48"}


def _graph(tiny_model, skip: bool):
    tcs = make_transcoders([0, 1, 2], tiny_model.cfg.d_model, d_sae=48, seed=3)
    if skip:  # skip transcoders: the same weights plus a linear skip path W_skip x
        g = torch.Generator().manual_seed(4)
        for layer, tc in tcs.items():
            twin = Transcoder(dataclasses.replace(tc.cfg, skip=True))
            twin.load_state_dict(
                {**tc.state_dict(), "W_skip": torch.randn(tc.cfg.d_out, tc.cfg.d_in, generator=g) * 0.05}
            )
            tcs[layer] = twin
    with torch.no_grad():
        for tc in tcs.values():
            tc.b_enc.fill_(-0.3)
            tc.W_dec.mul_(0.01)
    return attribute(tiny_model, TOKENS, tcs, LogitTarget(25, 30, -1), n_paths=24, n_steps=3)


@pytest.fixture(scope="module")
def graph(tiny_model):
    return _graph(tiny_model, skip=False)


@pytest.fixture(scope="module")
def skip_graph(tiny_model):
    return _graph(tiny_model, skip=True)


def test_graph_round_trip_and_idempotent_rewrite(atlas_home, graph):
    target = "logit:25-30@7"
    gid = circuits.write_graph(graph, "tiny", "some prompt", target, IDS)
    assert (
        gid == circuits.graph_id("tiny", "some prompt", target) != circuits.graph_id("tiny", "other", target)
    )
    circuits.write_graph(graph, "tiny", "some prompt", target, IDS)  # same id: replaced, not duplicated
    found = queries.graph(gid)
    meta, nodes, edges = found["graph"], found["nodes"], found["edges"]
    assert meta["tokens"] == TOKENS.tolist() and json.loads(meta["config"])["transcoder_ids"]["1"] == IDS[1]
    assert 0 < graph.target_prob < 1 and meta["target_prob"] == pytest.approx(graph.target_prob, rel=1e-6)
    assert nodes.height == len(graph.nodes) and edges.height == len(graph.edges)
    assert readers.query("SELECT count(*) AS n FROM graphs")["n"][0] == 1
    feats = nodes.filter(nodes["kind"] == "feature")
    assert feats.height and all(t == IDS[layer] for t, layer in zip(feats["transcoder_id"], feats["layer"]))
    # bookkeeping survives storage: incoming weights of the target sum to the target value
    into_target = edges.filter(edges["dst_node"] == "target")["weight"].sum()
    assert into_target == pytest.approx(meta["target_value"], rel=1e-4)
    circuits.delete_graphs_except("tiny", [])
    assert queries.graphs().height == 0 and readers.query("SELECT count(*) n FROM graph_edges")["n"][0] == 0


def test_graph_faithfulness_round_trips_with_the_declared_column_types(atlas_home, graph):
    nodes = [
        NodeIntervention(
            f"f{i}", 1, i, 7 + i, -0.5 * i, {"attention_frozen": -0.4 * i, "nothing_frozen": 0.3 * i}
        )
        for i in range(4)
    ]
    gid = circuits.write_graph(graph, "tiny", "p", "logit:25-30@7", IDS, interventions=nodes)
    stored = readers.query("SELECT * FROM graph_interventions WHERE graph_id = ?", [gid])
    assert stored.height == 8 and dict(stored.schema) == row_writes.polars_schema("graph_interventions")
    summary = queries.graph(gid)["faithfulness"]
    frozen = summary.filter(summary["setting"] == "attention_frozen").row(0, named=True)
    # predicted -0.5 i and actual -0.4 i: perfectly correlated, same signs where nonzero
    assert frozen["n_nodes"] == 4 and frozen["pearson"] == pytest.approx(1.0, abs=1e-6)
    live = summary.filter(summary["setting"] == "nothing_frozen").row(0, named=True)
    assert live["pearson"] == pytest.approx(-1.0, abs=1e-6)


@pytest.mark.parametrize("which", ["graph", "skip_graph"])
def test_graph_export_folds_attention_and_skip_exactly(atlas_home, which, request):
    graph = request.getfixturevalue(which)
    if which == "skip_graph":
        assert any(node.kind == "skip" for node in graph.nodes.values())
    gid = circuits.write_graph(graph, "tiny", "p", "logit:25-30@7", IDS)
    path = graph_export.export_graph(gid)
    data = json.loads(open(path).read())
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    ids = {n["node_id"] for n in data["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])
    assert not any("attn" in n["node_id"] or "skip" in n["node_id"] for n in data["nodes"])
    target = next(n for n in data["nodes"] if n["is_target_logit"])
    target_id = target["node_id"]
    assert target_id == f"4_25_{len(TOKENS) - 1}"  # n_layers + 1
    # circuit-tracer's viewer parses the probability out of the label: '... (p=0.123)'
    assert target["clerp"].endswith(f"(p={graph.target_prob:.3f})")
    assert target["token_prob"] == pytest.approx(graph.target_prob, rel=1e-6)
    # links into the target + the bias/pruned weight left out along folded attention and skip nodes == its value
    dropped, size = 0.0, 0.0
    stack = ["target"]
    while stack:
        dst = stack.pop()
        for src, w in graph.incoming(dst).items():
            kind = graph.nodes[src].kind
            if kind in ("bias", "pruned"):
                dropped += w
                size += abs(w)
            elif kind in PASS_THROUGH_KINDS:
                stack.append(src)
    into = [link["weight"] for link in data["links"] if link["target"] == target_id]
    # weights are stored as REAL (float32) and partly cancel: the tolerance scales with the terms' total size
    size += sum(map(abs, into))
    assert sum(into) + dropped == pytest.approx(graph.target_value, rel=1e-4, abs=1e-6 * size)
    assert len(data["metadata"]["prompt_tokens"]) == len(TOKENS)


def test_feature_edges_rows_and_replace(atlas_home):
    tcs = make_transcoders([0, 2], d_model=8, d_sae=10)
    W_V, W_O = torch.randn(3, 2, 8, 4), torch.randn(3, 2, 4, 8)
    tops = list(feature_edges(tcs, W_V, W_O, k=3))
    ids = {0: "tiny/L0/relu-10", 2: "tiny/L2/relu-10"}
    frames = [circuits.edges_frame(t, ids) for t in tops]
    n = circuits.write_feature_edges("tiny", frames, ids.values())
    assert n == 10 * 3 * (1 + 2 * 2)  # resid + 2 heads in each of layers 1, 2
    assert circuits.write_feature_edges("tiny", frames, ids.values()) == n
    assert readers.query("SELECT count(*) AS n FROM feature_edges")["n"][0] == n
    up = readers.query(
        "SELECT * FROM feature_edges WHERE dst_transcoder_id = ? AND dst_feature = 4 AND via = 'resid' ORDER BY rank",
        ["tiny/L2/relu-10"],
    )
    expected = (tcs[0].W_dec @ tcs[2].W_enc[:, 4]).detach()
    assert up["src_feature"].to_list() == expected.abs().topk(3).indices.tolist()
    assert up["weight"].to_list() == pytest.approx(expected[up["src_feature"].to_list()].tolist(), rel=1e-5)
    assert up["rank"].to_list() == [0, 1, 2] and set(up["src_transcoder_id"]) == {"tiny/L0/relu-10"}


def database_at(version: int):
    """An in-memory database with migrations 1..version applied, as a database of that version would be (each
    test then drops what later versions added to the tables it checks)."""
    import duckdb

    from storage.schema import MIGRATIONS

    con = duckdb.connect()
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMP)")
    for v in range(1, version + 1):
        for stmt in MIGRATIONS[v]:
            con.execute(stmt)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [v])
    return con


def test_migration_3_adds_graph_scores_to_a_version_2_database():
    from storage.db.migrations import migrate

    con = database_at(2)
    new = {"graphs": ["replacement_score", "completeness_score", "error_share", "n_nodes", "n_edges"]}
    new["graph_nodes"] = ["cumulative_influence", "feeds"]
    for table, columns in new.items():  # the tables as version 2 declared them
        for c in columns:
            con.execute(f"ALTER TABLE {table} DROP COLUMN {c}")
    con.execute("INSERT INTO graphs (graph_id, model, prompt, target) VALUES ('g', 'm', 'p', 'logit:1@0')")
    assert migrate(con) == 2
    for table, columns in new.items():
        have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
        assert set(columns) <= have
    assert con.execute("SELECT graph_id, replacement_score FROM graphs").fetchall() == [("g", None)]


def test_migration_8_marks_the_graphs_before_it_greedy():
    from storage.db.migrations import migrate

    con = database_at(7)
    con.execute("ALTER TABLE graphs DROP COLUMN method")  # graphs as version 7 declared it
    con.execute("INSERT INTO graphs (graph_id, model, prompt, target) VALUES ('g', 'm', 'p', 'logit:1@0')")
    assert migrate(con) == 7
    assert con.execute("SELECT graph_id, method FROM graphs").fetchall() == [("g", "greedy")]


def test_migration_5_drops_the_feature_edges_index_and_keeps_its_rows():
    from storage.db.migrations import migrate
    from storage.schema import TABLE_BY_NAME

    con = database_at(4)
    # feature_edges as versions 1-4 created it: with its primary key
    edges = TABLE_BY_NAME["feature_edges"]
    con.execute("DROP TABLE feature_edges")
    con.execute(dataclasses.replace(edges, indexed=True).create_sql())
    con.execute(
        "INSERT INTO feature_edges VALUES ('a', 1, 'b', 2, 'resid', 0.5, 0), ('a', 3, 'b', 2, 'resid', 0.25, 1)"
    )

    def primary_keys() -> list:
        return con.execute(
            "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = 'feature_edges' "
            "AND constraint_type = 'PRIMARY KEY'"
        ).fetchall()

    assert primary_keys()
    assert migrate(con) == 4
    assert not primary_keys()
    assert con.execute("SELECT src_feature, weight FROM feature_edges ORDER BY rank").fetchall() == [
        (1, 0.5),
        (3, 0.25),
    ]
    described = [(r[0], r[1]) for r in con.execute("DESCRIBE feature_edges").fetchall()]
    assert described == [(c.name, "FLOAT" if c.type == "REAL" else c.type) for c in edges.columns]


def test_migration_6_adds_the_target_probability_and_keeps_old_graphs():
    from storage.db.migrations import migrate

    con = database_at(5)
    con.execute("ALTER TABLE graphs DROP COLUMN target_prob")  # graphs as versions 1-5 declared it
    con.execute("INSERT INTO graphs (graph_id, model, prompt, target) VALUES ('g', 'm', 'p', 'logit:1@0')")
    assert migrate(con) == 5
    assert con.execute("SELECT graph_id, target_prob FROM graphs").fetchall() == [("g", None)]


def test_a_graph_without_a_stored_probability_exports_a_parseable_logit_label(atlas_home, graph):
    """Graphs stored before `target_prob` existed: the label still ends in '(p=...)' (the viewer needs it)."""
    gid = circuits.write_graph(
        dataclasses.replace(graph, target_prob=None), "tiny", "p", "logit:25-30@7", IDS
    )
    data = graph_export.graph_json(gid)
    target = next(n for n in data["nodes"] if n["is_target_logit"])
    assert target["clerp"].endswith("(p=nan)") and target["token_prob"] == 0.0

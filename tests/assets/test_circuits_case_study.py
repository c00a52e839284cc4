"""The case study script end to end on the tiny model: it stores the graph, exports JSON and writes a report whose
numbers agree with the stored graph and with
real ablations."""

from __future__ import annotations

import os

import pytest

from scripts import case_study
from storage import queries
from tests.assets.test_circuits import atlas  # noqa: F401  (fixture: tiny model + random transcoders in the DB)


def test_case_study_report(atlas, tiny_model_dir, capsys):  # noqa: F811
    case_study.main(
        ["--model", tiny_model_dir, "--layers", "all", "--device", "cpu"]  # 'all': the trained layers 0 and 2
        + ["--prompt", "hello world, hello", "--target", 'logit:" "-"w"']
    )
    printed = capsys.readouterr().out
    graphs = queries.graphs()
    assert graphs.height == 2  # the logit target's graph and the followed top-layer feature's
    logit = graphs.filter(graphs["target"].str.starts_with("logit"))
    gid = logit["graph_id"][0]
    path = printed.strip().splitlines()[-1].removeprefix("(written to ").removesuffix(")")
    assert os.path.exists(path) and gid in path
    report = open(path).read()
    assert report in printed
    for section in (
        "### Top paths",
        "### Features by influence",
        "## Direct effects on",
        "## Direct effects vs",
    ):
        assert section in report
    for row in graphs.iter_rows(named=True):
        assert f"`{row['target']}` = {row['target_value']:.3f}. Graph `{row['graph_id']}`" in report
    # the frozen-model ablation check is exact on any model
    row = next(line for line in report.splitlines() if line.startswith("| logit"))
    assert float(row.split("|")[3]) == pytest.approx(1.0, abs=1e-5)  # frozen: the graph's linear model, exact
    table = report.split("## Direct effects on the target")[1].split("##")[0]
    rows = [
        line.split("|") for line in table.splitlines() if line.startswith("| +") or line.startswith("| -")
    ]
    assert len(rows) >= 3
    for row in rows:  # each listed direct effect is what the real ablation removes
        assert float(row[1]) == pytest.approx(float(row[2]), abs=2e-3)
    assert os.path.exists(os.path.join(os.path.dirname(path), f"graph-{gid}.json"))

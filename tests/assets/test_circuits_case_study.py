"""The case study script end to end on the tiny model: it stores the graph, exports JSON and writes a report whose
numbers agree with the stored graph."""

from __future__ import annotations

import os

import pytest

from scripts import case_study
from storage import queries
from tests.assets.test_circuits import atlas  # noqa: F401  (fixture: tiny model + random transcoders in the DB)


def test_case_study_report(atlas, tiny_model_dir, capsys):  # noqa: F811
    case_study.main(
        ["--model", tiny_model_dir, "--prompt", "hello world, hello", "--target", 'logit:" "-"w"']
    )
    printed = capsys.readouterr().out
    graphs = queries.graphs()
    assert graphs.height == 1
    gid = graphs["graph_id"][0]
    path = printed.strip().splitlines()[-1].removeprefix("(written to ").removesuffix(")")
    assert os.path.exists(path) and gid in path
    report = open(path).read()
    assert report in printed
    for section in ("## Top paths", "## Features by influence on the target", "## Attribution vs ablation"):
        assert section in report
    assert f"= {graphs['target_value'][0]:.3f}" in report
    # the frozen-model ablation check is exact on any model
    row = next(line for line in report.splitlines() if line.startswith("| logit"))
    assert float(row.split("|")[3]) == pytest.approx(1.0, abs=1e-3)  # frozen: exact up to attention paths
    assert os.path.exists(os.path.join(os.path.dirname(path), f"graph-{gid}.json"))

"""Calibrating an evaluation protocol: reference cells, the validity rule, the file and a run."""

import json
import subprocess
import sys

import pytest
import yaml

from nas import calibrate
from nas.spaces import get_space
from nas.utils import NasError


@pytest.mark.parametrize("space", ["s1", "s2", "s3", "s4", "darts"])
def test_reference_cells_are_the_spaces_extremes(space):
    refs = calibrate.reference_genotypes(space)
    sp = get_space(space)
    good, bad = (sp.parse_genotype(refs[c]) for c in calibrate.CELLS)
    edge_ops = sp.edge_ops
    # every gene is an op its edge offers; each node reads two different earlier nodes
    from nas.spaces.darts import CELL_EDGES, N_CELL_EDGES

    for geno in (good, bad):
        for cell, offset in ((geno.normal, 0), (geno.reduce, N_CELL_EDGES)):
            for k in range(4):
                (op_a, a), (op_b, b) = cell[2 * k], cell[2 * k + 1]
                assert a != b and a < k + 2 and b < k + 2
                for op, src in ((op_a, a), (op_b, b)):
                    assert op in edge_ops[offset + CELL_EDGES.index((k + 2, src))]
    assert good.reduce == bad.reduce  # the pair differs only in the normal cell
    weights = {op: calibrate.op_weights(op) for ops in edge_ops for op in ops}
    assert all(weights[op] > 0 for op, _ in good.normal)  # S1-S4 offer a conv on enough edges
    expected = "noise" if space == "s4" else "skip_connect"
    assert [op for op, _ in bad.normal] == [expected] * 8
    # the good cell takes the heaviest op its edges offer: no edge it reads offers a heavier one
    for k in range(4):
        for op, src in good.normal[2 * k: 2 * k + 2]:
            assert weights[op] == max(weights[o] for o in edge_ops[CELL_EDGES.index((k + 2, src))] if o != "none")


def test_op_weights_order_convs_above_parameter_free_ops():
    w = {op: calibrate.op_weights(op, 16) for op in ("sep_conv_3x3", "dil_conv_5x5", "dil_conv_3x3", "skip_connect",
                                                    "max_pool_3x3", "noise", "none")}
    # sep 3x3 at C=16: two (depthwise 3x3, pointwise 1x1, BN) stacks = 2 * (144 + 256 + 32)
    assert w["sep_conv_3x3"] == 864 and w["dil_conv_3x3"] == 144 + 256 + 32
    assert w["sep_conv_3x3"] > w["dil_conv_5x5"] > w["dil_conv_3x3"] > w["skip_connect"] == w["max_pool_3x3"] == 0
    assert w["noise"] == w["none"] == -1


def _rows(space, good, bad):
    return ([{"space": space, "cell": "good", "test_acc": a, "retrain_minutes": 1.0} for a in good]
            + [{"space": space, "cell": "degenerate", "test_acc": a, "retrain_minutes": 1.0} for a in bad])


def test_verdict_is_the_gap_against_three_seed_spreads():
    v = calibrate.verdict(_rows("s2", [60.0, 61.0, 62.0], [50.0, 50.5, 51.0]), "s2")
    assert v["gap"] == pytest.approx(10.5) and v["spread"] == pytest.approx(1.0) and v["valid"]
    v = calibrate.verdict(_rows("s2", [60.0, 64.0, 62.0], [59.0, 58.0, 60.0]), "s2")
    assert v["gap"] == pytest.approx(3.0) and v["spread"] == pytest.approx(2.0) and not v["valid"]
    # a degenerate cell that beats the good one is never valid
    assert not calibrate.verdict(_rows("s3", [50.0, 50.1], [55.0, 55.1]), "s3")["valid"]
    with pytest.raises(NasError, match="two or more seeds"):
        calibrate.verdict(_rows("s1", [50.0], [40.0, 41.0]), "s1")


def _file(tmp_path, **cal):
    doc = {"retrain": {"dataset": "digits", "cache_dir": str(tmp_path / "prep"), "resolution": 16, "channels": 4,
                       "cells": 3, "epochs": 1, "subset": 6, "batch_size": 32, "eval_batch_size": 256,
                       "auxiliary_weight": 0.0},
           "calibration": {"spaces": ["s4"], "seeds": [1, 2], "candidates": [{"name": "tiny"},
                                                                                     {"name": "more", "epochs": 2}],
                           **cal}}
    p = tmp_path / "cal.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize(("cal", "message"), [
    ({"seeds": [1]}, "calibration.seeds' expects at least two seeds"),
    ({"spaces": ["nb201"]}, "calibration.spaces' expects a list of s1, s2, s3, s4, darts"),
    ({"candidates": [{"name": "a", "genotype": "x"}]}, r"candidates\[0\]: key 'genotype' is not a retrain setting"),
    ({"candidates": [{"name": "a", "epochs": 0}]}, "epochs"),
    ({"candidates": [{"name": "a"}, {"name": "a"}]}, "a name appears twice"),
    ({"candidates": [{"epochs": 2}]}, r"candidates\[0\] expects a mapping with a 'name'"),
    ({"budget": 3}, "unknown key 'calibration.budget'"),
])
def test_a_bad_calibration_file_is_one_line_naming_the_key(tmp_path, cal, message):
    with pytest.raises(NasError, match=message) as exc:
        calibrate.load_calibration(_file(tmp_path, **cal))
    assert "\n" not in str(exc.value) and "cal.yaml" in str(exc.value)


def test_a_calibration_runs_trains_both_cells_and_reads_its_runs_back(tmp_path):
    p = _file(tmp_path)
    out, report = tmp_path / "runs", tmp_path / "report"
    spec = calibrate.load_calibration(p, str(out), str(report))
    cmd = [sys.executable, "-m", "nas.cli", "calibrate", "--protocol", str(p), "--out", str(out), "--report",
           str(report), "--all", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    rows = calibrate.read_csv(report / "runs.csv")
    assert len(rows) == 2 * 2 * 2  # candidates x cells x seeds (one space)
    refs = {sp: calibrate.reference_genotypes(sp) for sp in spec.spaces}
    for r in rows:
        res = json.loads((out / r["candidate"] / f"{r['space']}-{r['cell']}-s{r['seed']}" / "result.json").read_text())
        assert r["genotype"] == res["genotype"] == refs[r["space"]][r["cell"]]
        assert r["test_acc"] == pytest.approx(100 * res["test_acc"], abs=1e-4)
        assert res["config"]["epochs"] == (2 if r["candidate"] == "more" else 1) and res["config"]["seed"] == r["seed"]
        archived = report / "cells" / r["candidate"] / f"{r['space']}-{r['cell']}-s{r['seed']}" / "result.json"
        assert json.loads(archived.read_text())["test_acc"] == res["test_acc"]
    text, chosen = calibrate.table(spec, rows)
    assert json.loads(proc.stdout)["chosen"] == chosen and (proc.returncode == 0) == (chosen is not None)
    assert text.count("\n") == 2 + 2 and (report / "table.md").read_text().startswith(text)
    assert json.loads((report / calibrate.REPORT_FILE).read_text()) == {"protocol": str(p)}
    # the table again from runs.csv alone, without training (another machine's rows merged in, say)
    table_md = (report / "table.md").read_text()
    (report / "table.md").unlink()
    again = subprocess.run(cmd[:-2] + ["--report-only"], capture_output=True, text=True, timeout=600)
    assert again.returncode == proc.returncode and (report / "table.md").read_text() == table_md, again.stderr
    missing = subprocess.run(cmd[:-2] + ["--report-only", "--report", str(tmp_path / "none")], capture_output=True,
                             text=True, timeout=600)
    assert missing.returncode != 0 and "none/runs.csv: no calibration runs to report" in missing.stderr
    # a second run, from another machine's folder: every result comes back from the archive
    other = calibrate.load_calibration(p, str(tmp_path / "other"), str(report))
    again = calibrate.run_candidate(other, other.candidates[0], None)
    assert not (tmp_path / "other" / "tiny" / "s4-good-s1" / "checkpoint.pt").exists()
    assert sorted((r["space"], r["cell"], r["seed"], r["test_acc"]) for r in again) == sorted(
        (r["space"], r["cell"], r["seed"], pytest.approx(r["test_acc"], abs=1e-4)) for r in rows
        if r["candidate"] == "tiny")


def test_candidates_and_spaces_run_only_the_named_share_and_refuse_an_unknown_name(tmp_path):
    p = _file(tmp_path, spaces=["s3", "s4"])
    spec = calibrate.load_calibration(p, str(tmp_path / "runs"), str(tmp_path / "report"))
    calibrate.run_calibration(spec, every=True, only=["more"], spaces=["s4"])
    rows = calibrate.read_csv(tmp_path / "report" / "runs.csv")
    assert {(r["candidate"], r["space"]) for r in rows} == {("more", "s4")} and len(rows) == 2 * 2
    assert not (tmp_path / "runs" / "tiny").exists()
    assert "| more | s4 |" in (tmp_path / "report" / "table.md").read_text()
    with pytest.raises(NasError, match=r"--candidates: .*cal.yaml has no candidate 'big' \(it has tiny, more\)") as exc:
        calibrate.run_calibration(spec, only=["tiny", "big"])
    assert "\n" not in str(exc.value) and not (tmp_path / "runs" / "tiny").exists()
    with pytest.raises(NasError, match=r"--spaces: .*cal.yaml calibrates s3, s4, not 's1'"):
        calibrate.run_calibration(spec, only=["tiny"], spaces=["s1"])


@pytest.mark.committed
def test_docs_quote_the_committed_calibration_tables():
    """The calibration tables in the S1-S4 results page are the committed ones (the 2-core runs and
    a GPU machine's share), row for row, and each committed table is what its committed runs give."""
    from conftest import REPO

    doc = (REPO / "docs" / "results" / "s-spaces.md").read_text()
    reports = sorted(p.parent for p in (REPO / "data" / "results").glob(f"*/{calibrate.REPORT_FILE}"))
    assert [r.name for r in reports] == ["s-calibration", "s-calibration-h200"]
    for report in reports:
        committed = (report / "table.md").read_text()
        rows = [line for line in committed.splitlines() if line.startswith("| ") and not line.startswith("| candidate")]
        assert len(rows) >= 5 and all(row in doc for row in rows), report.name
        spec = calibrate.load_calibration(REPO / json.loads((report / calibrate.REPORT_FILE).read_text())["protocol"])
        assert calibrate.table(spec, calibrate.read_csv(report / "runs.csv"))[0] in committed, report.name

"""The loss landscape around a finished search's α: its grid, its centre, its directions, the CLI."""

import json

import pytest
import torch

from nas.cli import main
from nas.config import build_config
from nas.landscape import directions, landscape
from nas.search import search
from nas.select import load_supernet
from nas.utils import NasError


@pytest.fixture
def two_runs(tiny_search, tmp_path):
    runs = []
    for method in ("darts", "sdarts-rs"):
        out = tmp_path / method
        search(build_config("search", overrides=tiny_search(method=method, out=str(out), eval_batch_size=64)))
        runs.append(out)
    return runs


def test_directions_have_unit_edge_rows_and_follow_the_seed():
    d1, d2 = directions((6, 5), seed=3)
    torch.testing.assert_close(d1.norm(dim=-1), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(d2.norm(dim=-1), torch.ones(6, dtype=torch.float64))
    assert not torch.allclose(d1, d2)
    assert torch.equal(directions((6, 5), seed=3)[0], d1) and not torch.equal(directions((6, 5), seed=4)[0], d1)


def test_the_grid_centre_is_the_validation_loss_at_alpha(two_runs):
    res = landscape(two_runs[0], points=3, radius=0.5, batches=2)
    assert res["axis"] == [-0.5, 0.0, 0.5] and len(res["loss"]) == 3 and all(len(r) == 3 for r in res["loss"])
    assert res["loss"][1][1] == res["center_loss"]
    search, st, _, _, val = load_supernet(two_runs[0], "cpu")
    assert res["center_loss"] == search.measurement.measure(st, val, None, 2)[0]
    assert res["max_rise"] >= 0 and len({v for r in res["loss"] for v in r}) > 1
    assert landscape(two_runs[0], points=3, radius=0.5, batches=2)["loss"] == res["loss"]  # deterministic


def test_the_command_draws_one_contour_per_run(two_runs, tmp_path, capsys):
    out = tmp_path / "landscape"
    rc = main(["landscape", *[a for r in two_runs for a in ("--run", str(r))], "--out", str(out),
               "--points", "3", "--batches", "1", "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in printed["landscapes"]] == ["darts", "sdarts-rs"]
    assert (out / "landscape.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in two_runs:
        data = json.loads((out / r.name / "landscape.json").read_text())
        assert data["points"] == 3 and (out / r.name / "landscape.csv").is_file()


def test_bad_landscape_settings_are_refused(two_runs):
    with pytest.raises(NasError, match="points must be >= 2"):
        landscape(two_runs[0], points=1)

"""Verified selection: candidates proposed from the supernet, trained briefly, the best on the α split."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import Killed

from nas import config as config_mod
from nas.grid.spec import SELECTIONS
from nas.schemas import ROW_SELECTIONS
from nas.search import search
from nas.select import select
from nas.spaces import get_space
from nas.utils import NasError
from nas.verify import edge_margins, propose


def test_every_grid_selection_is_a_valid_row():
    assert set(SELECTIONS) <= set(ROW_SELECTIONS)


def _weights(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_propose_orders_magnitude_given_history_then_least_certain_edges():
    space = get_space("nb201")  # ops: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
    w = _weights([[0.1, 0.1, 0.1, 0.6, 0.1],     # edge 0: sure of conv3x3 (margin 0.5)
                  [0.1, 0.35, 0.1, 0.35 + 1e-3, 0.099],  # edge 1: conv3x3 by a hair over skip
                  [0.0, 0.3, 0.5, 0.2, 0.0],     # edge 2: conv1x1, then skip (margin 0.2)
                  [0.2, 0.2, 0.2, 0.2, 0.2 + 2e-3],
                  [0.1, 0.1, 0.6, 0.1, 0.1],
                  [0.1, 0.1, 0.1, 0.1, 0.6]])
    mag = space.format_genotype(space.select_magnitude(w))
    pt = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    history = [{"epoch": 1, "genotype": pt}, {"epoch": 2, "genotype": mag}, {"epoch": 3, "genotype": mag}]
    cands = propose(space, w, 6, [pt, mag], history, history_count=2)
    assert [c["source"] for c in cands][:2] == ["magnitude", "given-1"]
    assert cands[0]["genotype"] == mag
    assert len({c["genotype"] for c in cands}) == len(cands) == 6  # distinct; the repeats are dropped
    # the least certain edges first: edge 3 (margin 2e-3), then edge 1 (1e-3 is smaller: first)
    margins = edge_margins(space, w)
    assert [e for _, e in margins][:2] == [1, 3]
    singles = [c for c in cands if c["source"].startswith("second-choice") and "+" not in c["source"]]
    assert singles[0]["source"] == f"second-choice-{space.edge_names[1]}"
    ops = space.parse_genotype(singles[0]["genotype"])
    assert ops[1] == "skip_connect" and list(ops[:1]) + list(ops[2:]) == list(space.parse_genotype(mag))[:1] + \
        list(space.parse_genotype(mag))[2:]


def test_propose_on_the_darts_space_never_keeps_none():
    space = get_space("darts")
    g = torch.Generator().manual_seed(0)
    w = torch.rand(space.alpha_shape, generator=g)
    for c in propose(space, w, 8):
        assert "'none'" not in c["genotype"]
        space.parse_genotype(c["genotype"])


@pytest.fixture
def finished_search(tiny_search, tmp_path):
    cfg = config_mod.build_config("search", overrides=tiny_search(epochs=3, steps_per_epoch=3))
    search(cfg)
    return cfg


def _verify_cfg(run, out, **kw):
    return config_mod.build_config("select", overrides={"method": "verify", "run": str(run), "out": str(out),
                                                        "device": "cpu", "progress": False, "verify_candidates": 3,
                                                        "verify_epochs": 1, **kw})


def test_verify_keeps_the_best_candidate_on_the_alpha_split_and_is_deterministic(finished_search, tmp_path):
    sel = select(_verify_cfg(finished_search.out, tmp_path / "v1"))
    assert sel["selection"] == "verify" and len(sel["candidates"]) == 3
    assert sel["candidates"][0]["source"] == "magnitude"
    best = max(sel["candidates"], key=lambda c: c["val_acc"])
    assert sel["genotype"] == best["genotype"] and sel["source"] == best["source"]
    assert json.loads((tmp_path / "v1" / "selection.json").read_text())["genotype"] == sel["genotype"]
    again = select(_verify_cfg(finished_search.out, tmp_path / "v2"))
    assert [c["val_acc"] for c in again["candidates"]] == [c["val_acc"] for c in sel["candidates"]]
    # a second selection into the same folder is refused; --force starts over
    with pytest.raises(NasError, match="already holds a selection run"):
        select(_verify_cfg(finished_search.out, tmp_path / "v1"))


def test_verify_resumes_after_the_last_trained_candidate(finished_search, tmp_path, monkeypatch):
    import nas.baselines as baselines

    whole = select(_verify_cfg(finished_search.out, tmp_path / "whole"))
    real, calls = baselines.train_briefly, []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real(*a, **k)

    monkeypatch.setattr(baselines, "train_briefly", dying)
    with pytest.raises(Killed):
        select(_verify_cfg(finished_search.out, tmp_path / "cut"))
    monkeypatch.setattr(baselines, "train_briefly", real)
    resumed = select(_verify_cfg(finished_search.out, tmp_path / "cut"), resume=True)
    strip = lambda s: [{k: v for k, v in c.items() if k != "seconds"} for c in s["candidates"]]  # noqa: E731
    assert strip(resumed) == strip(whole) and resumed["genotype"] == whole["genotype"]


def test_verify_refuses_a_baseline_and_a_missing_given_selection(tiny_search, tmp_path, finished_search):
    cfg = config_mod.build_config("search", overrides=tiny_search(method="naswot", out=str(tmp_path / "nw")))
    search(cfg)
    with pytest.raises(NasError, match="trains no supernet"):
        select(_verify_cfg(tmp_path / "nw", tmp_path / "x"))
    with pytest.raises(NasError, match="verify_with: .*nope.*not found"):
        select(_verify_cfg(finished_search.out, tmp_path / "y", verify_with=[str(tmp_path / "nope")]))


def test_grid_verify_row_joins_pt_and_counts_its_minutes(tmp_path):
    from nas.grid import load_grid, run_grid
    from nas.runs.files import read_json

    proto = tmp_path / "proto.yaml"
    proto.write_text(yaml.safe_dump({
        "search": {"dataset": "digits", "cache_dir": str(tmp_path / "prep"), "epochs": 2, "channels": 4, "cells": 1,
                   "batch_size": 32, "steps_per_epoch": 3, "device": "cpu"},
        "select": {"pt_tune_epochs": 0, "pt_batches": 1, "verify_candidates": 2, "verify_epochs": 1},
        "grid": {"methods": ["darts"], "seeds": [1], "selections": ["magnitude", "pt", "verify"]}}))
    spec = load_grid(proto, out=str(tmp_path / "g"), report=str(tmp_path / "r"))
    rows = {r["selection"]: r for r in run_grid(spec)}
    assert set(rows) == {"magnitude", "pt", "verify"}
    sel = read_json(tmp_path / "g" / "darts-s1" / "select-verify" / "selection.json")  # its seconds: timings.json
    assert [c["source"] for c in sel["candidates"]] == ["magnitude", "given-1"] or \
        rows["pt"]["genotype"] == rows["magnitude"]["genotype"]
    assert rows["verify"]["select_minutes"] == pytest.approx(sel["seconds"] / 60 + rows["pt"]["select_minutes"])
    assert "| darts | verify | 1 |" in (tmp_path / "r" / "table.md").read_text()

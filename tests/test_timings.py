"""Wall-clock seconds are kept beside a run's files (timings.json) and merged back on read."""

from __future__ import annotations

import copy
import json
from collections import OrderedDict

import torch

from nas.runs import files as timings


def test_split_and_merge_round_trip_any_nesting():
    doc = {"genotype": "g", "seconds": 12.5, "config": {"epochs": 2, "timeout": 3},
           "history": [{"epoch": 1, "seconds": 1.5, "hessian_seconds": 0.25}, {"epoch": 2}],
           "flag_seconds": True, "label_seconds": "n/a"}  # not numbers: not timings
    clean, tree = timings.split(doc)
    assert clean == {"genotype": "g", "config": {"epochs": 2, "timeout": 3}, "history": [{"epoch": 1}, {"epoch": 2}],
                     "flag_seconds": True, "label_seconds": "n/a"}
    assert tree == {"seconds": 12.5, "history": [{"seconds": 1.5, "hessian_seconds": 0.25}, None]}
    assert "seconds" in doc  # the input is not changed
    assert timings.merge(copy.deepcopy(clean), tree) == doc
    untouched = OrderedDict(w=torch.zeros(2))
    assert timings.split(untouched) == (untouched, None)  # no timings: the very object (a state dict keeps its type)


def test_files_are_the_same_bytes_whatever_the_seconds(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, secs in ((a, 1.0), (b, 2.0)):
        timings.write_json(folder / "result.json", {"acc": 0.5, "seconds": secs, "history": [{"seconds": secs}]})
        timings.torch_save(folder / "checkpoint.pt", {"w": torch.ones(3), "history": [{"epoch": 1, "seconds": secs}]})
    assert (a / "result.json").read_bytes() == (b / "result.json").read_bytes()
    assert (a / "checkpoint.pt").read_bytes() == (b / "checkpoint.pt").read_bytes()
    assert json.loads((b / "timings.json").read_text()) == {
        "checkpoint.pt": {"history": [{"seconds": 2.0}]}, "result.json": {"seconds": 2.0, "history": [{"seconds": 2.0}]}}
    assert timings.read_json(b / "result.json") == {"acc": 0.5, "seconds": 2.0, "history": [{"seconds": 2.0}]}
    assert timings.torch_load(b / "checkpoint.pt")["history"] == [{"epoch": 1, "seconds": 2.0}]
    (b / "timings.json").unlink()  # copied without it (a dvc checkout): the results, no seconds
    assert timings.read_json(b / "result.json") == {"acc": 0.5, "history": [{}]}
    (b / "timings.json").write_text("{not json")  # a damaged timings file costs the timings only
    assert timings.read_json(b / "result.json") == {"acc": 0.5, "history": [{}]}


def test_a_stage_runs_with_its_threads_and_gives_them_back(tiny_search, tmp_path):
    from nas.config import build_config
    from nas.search import search

    before = torch.get_num_threads()
    seen = []
    cfg = build_config("search", overrides=tiny_search(epochs=1, threads=1))
    search(cfg, callback=lambda st: seen.append(torch.get_num_threads()))
    assert seen == [1] and torch.get_num_threads() == before
    assert json.loads((tmp_path / "run" / "result.json").read_text())["config"]["threads"] == 1

"""MLflow tracking: stage runs end FINISHED or FAILED, one parent per study, names and metric labels
that tell runs apart, pictures that show the differences, the CLI's runs."""

from __future__ import annotations

import pytest

from nas import tracking_stages


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("NAS_MLFLOW", "1")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_a_failing_stage_ends_its_run_failed(store):
    from nas import tracking
    from nas.utils import NasError

    with pytest.raises(NasError, match="boom"):
        with tracking.stage_run("select-pt-s0-abcdef", {"stage": "select"}) as (tracker, run_id):
            assert tracker is not None
            raise NasError("boom")
    assert store.get_run(run_id).info.status == "FAILED"
    with tracking.stage_run("select-pt-s0-abcdef", {"stage": "select"}) as (_, ok_id):
        assert store.get_run(ok_id).info.status == "RUNNING"
    assert store.get_run(ok_id).info.status == "FINISHED"


def test_an_epoch_is_one_batched_call(store):
    """Every scalar of a search epoch goes to MLflow in one ``log_batch`` call."""
    from nas import tracking

    tr = tracking.Tracker()
    run_id = tr.start("search-x", {"stage": "search"})
    calls = []
    real = tr.client.log_batch
    tr.client.log_batch = lambda *a, **k: (calls.append(k.get("metrics")), real(*a, **k))[1]
    log = tracking_stages.epoch_logger(tr, run_id, "nb201")
    rec = {"epoch": 1, "train_loss": 1.0, "val_acc": 0.5, "w_lr": 0.02, "seconds": 1.5,
           "weights": [[0.2] * 5] * 6, "edge_entropy": [1.0] * 6, "edge_max_weight": [0.3] * 6}
    log(rec)
    log({**rec, "epoch": 2})
    assert len(calls) == 2 and len(calls[0]) == len(tracking.epoch_metrics(rec, "nb201")) == 4 + 5 + 12
    assert tr.log_seconds[run_id] > 0


def test_tracking_off_gives_no_run(monkeypatch):
    from nas import tracking

    monkeypatch.setenv("NAS_MLFLOW", "0")
    with tracking.stage_run("x", {}) as (tracker, run_id):
        assert isinstance(tracker, tracking.NullTracker) and not tracker.active and run_id is None


def test_one_parent_per_study(store):
    from nas import tracking

    tr = tracking.Tracker()
    first = tr.study_run("drnas-retrain", "sqlite:///a.db", {"stage": "sweep", "method": "drnas",
                                                             "selection": "magnitude"})
    tr.end(first)
    again = tr.study_run("drnas-retrain", "sqlite:///a.db", {"stage": "sweep", "method": "drnas"})
    assert again == first and store.get_run(first).info.status == "RUNNING"
    other = tr.study_run("drnas-retrain", "sqlite:///b.db", {"stage": "sweep", "method": "drnas"})
    assert other != first  # the same study name in another database is another study
    assert store.get_run(first).info.run_name.startswith("sweep-drnas-retrain-magnitude-")


def test_run_names_digests_and_metric_labels():
    from nas import tracking

    a = tracking.config_digest({"method": "darts", "seed": 1, "out": "runs/a"})
    assert a == tracking.config_digest({"method": "darts", "seed": 1, "out": "runs/b"})  # paths do not count
    assert a != tracking.config_digest({"method": "darts", "seed": 2, "out": "runs/a"})
    assert tracking.run_name("pipeline", "drnas", "pt", "nb201", 1, a) == f"pipeline-drnas-pt-nb201-s1-{a}"
    rec = {"epoch": 3, "train_loss": 1.0, "val_acc": 0.5, "w_lr": 0.02, "seconds": 1.5,
           "weights": [[0.1, 0.3, 0.2, 0.2, 0.2]] * 6, "edge_entropy": [1.0] * 6, "edge_max_weight": [0.3] * 6}
    m = tracking.epoch_metrics(rec, "nb201")
    assert m["val_acc"] == 50.0 and m["train_loss"] == 1.0  # accuracies in percent, like nb201_*
    assert m["alpha/skip_connect"] == pytest.approx(0.3) and m["alpha/none"] == pytest.approx(0.1)
    assert m["edge_entropy/3_from_2"] == 1.0 and m["edge_max_weight/1_from_0"] == 0.3
    assert m["schedule/w_lr"] == 0.02 and m["time/epoch_seconds"] == 1.5
    assert not any("<" in k or k.startswith("mlflow_log") for k in m)
    # the DARTS spaces: normal and reduction edges, per-edge op sets (S1-S4)
    from nas.spaces import get_space

    sp = get_space("s3")
    rec = {"epoch": 1, "weights": [[1 / len(ops)] * len(ops) for ops in sp.edge_ops],
           "edge_entropy": [0.5] * len(sp.edge_ops)}
    m = tracking.epoch_metrics(rec, "s3")
    assert "edge_entropy/normal_2_from_0" in m and "edge_entropy/reduce_5_from_4" in m
    assert m["alpha/skip_connect"] == pytest.approx(1 / 3)


def test_the_heatmap_and_the_cell_drawing_are_pictures():
    from nas import tracking

    hist = [{"epoch": e, "weights": [[0.2 + 0.001 * e, 0.2, 0.2, 0.2, 0.2 - 0.001 * e]] * 6} for e in range(1, 4)]
    png = tracking.alpha_heatmap_png({"space": "nb201", "method": "darts", "history": hist,
                                      "weights": hist[-1]["weights"]})
    assert png[:4] == b"\x89PNG"
    for h in hist:
        h["edge_entropy"] = [1.5] * 6
    lines = tracking.alpha_lines_png({"space": "nb201", "history": hist})
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(lines)).size == (1210, 396)
    cell = tracking.cell_png("nb201", "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|"
                                      "skip_connect~2|")
    assert cell[:4] == b"\x89PNG"
    # edges without an op are not drawn; every other edge keeps its op and its colour
    edges = tracking.cell_edges("nb201", "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|"
                                         "nor_conv_1x1~1|skip_connect~2|")[0][0]
    assert (1, 2, "none") not in edges and (0, 1, "nor_conv_3x3") in edges and len(edges) == 5
    assert all(op in tracking.OP_COLOURS for _, _, op in edges)


def test_cli_stages_are_runs_and_the_model_loads(store, tiny_search, tmp_path):
    import mlflow.pytorch
    import torch

    from nas.cli import main

    assert main(["search", *sum((["--set", f"{k}={v}"] for k, v in tiny_search().items() if k != "progress"), []),
                 "--no-progress"]) == 0
    run = tmp_path / "run"
    assert main(["retrain", "--selection", str(run / "result.json"), "--epochs", "1", "--set", "channels=4",
                 "--set", "cells=1", "--set", f"cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "rt"),
                 "--no-progress", "--device", "cpu"]) == 0
    # refused before any work (the folder holds a run): no tracking run at all
    assert main(["search", "--set", f"out={run}", "--set", "epochs=2"]) == 2
    exp = store.get_experiment_by_name("nas").experiment_id
    runs = {r.data.tags["stage"] + ":" + r.info.status: r for r in store.search_runs([exp])}
    assert set(runs) == {"search:FINISHED", "retrain:FINISHED"} and len(store.search_runs([exp])) == 2
    search = runs["search:FINISHED"]
    assert search.data.tags["source"] == "cli" and search.info.run_name.startswith("search-darts-nb201-s0-")
    assert "alpha/nor_conv_3x3" in search.data.metrics and "genotype" in search.data.tags
    net = mlflow.pytorch.load_model(f"runs:/{runs['retrain:FINISHED'].info.run_id}/model")
    assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_a_stage_run_with_tracking_off_is_none():
    from nas import tracking

    with tracking.stage_run("a run", {"stage": "search"}, track=False) as (tr, run_id):
        assert run_id is None and not tr.active


def test_the_comparison_page_is_one_escaped_table():
    from nas import tracking

    page = tracking.html_table("a <b>", ["method", "value", "genotype"],
                               [{"method": "darts", "value": 93.456, "genotype": "|x~0|<script>|", "lam": 0.003542},
                                {"method": "snas", "value": float("nan")}])
    assert page.count("<tr>") == 3 and "<td>93.46</td>" in page and "<script>" not in page
    assert tracking.html_table("t", ["lam"], [{"lam": 0.003542}]).count("<td>0.00354</td>") == 1
    assert "&lt;script&gt;" in page and "<h3>a &lt;b&gt;</h3>" in page and "<td></td>" in page
    # one rounding per column, the unit in the header, the best row marked and ties told apart
    rows = [{"lam": 0.21, "value": 91.96}, {"lam": 0.206, "value": 91.961}, {"lam": 0.2055, "value": None},
            {"lam": 0.0035, "value": 80.1}]
    page = tracking.html_table("s", ["lam", "value"], rows, best=("value", True), units={"value": "%"})
    assert "<th></th><th>lam</th><th>value (%)</th>" in page
    assert [c.split("</td>")[0] for c in page.split("<td>")[1:]] == [
        "tied best", "0.21000", "91.96", "tied best", "0.20600", "91.96", "", "0.20550", "", "", "0.00350", "80.10"]
    page = tracking.html_table("s", ["err"], [{"err": 5.0}, {"err": 4.0}], best=("err", False))
    assert page.count('<tr class="best"><td>best</td><td>4.00</td>') == 1 and page.count("best</td>") == 1


def test_tracking_writes_nothing_under_the_home_folder(tmp_path):
    """Telemetry is off before mlflow is imported, so a tracked search leaves no
    ~/.config/mlflow/telemetry.json in the home folder."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    home = tmp_path / "home"
    home.mkdir()
    # mlflow's own guards off (it skips telemetry under pytest or CI): only the project's setting counts
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DO_NOT_TRACK", "XDG_", "PYTEST_"))
           and k not in ("CI", "GITHUB_ACTIONS")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}",
               NAS_MLFLOW="1")
    cmd = [sys.executable, "-m", "nas.cli", "search", "--epochs", "1", "--out", str(tmp_path / "r"), "--set",
           "steps_per_epoch=2", "--set", "channels=4", "--set", "cells=1", "--set", f"cache_dir={tmp_path / 'c'}"]
    subprocess.run(cmd, check=True, env=env, cwd=tmp_path, capture_output=True, timeout=300)
    assert (tmp_path / "r" / "result.json").is_file()
    assert not [p for p in home.rglob("*") if "mlflow" in p.name], [str(p) for p in home.rglob("*")]


def test_the_null_tracker_has_the_clients_signatures_so_a_wrong_call_fails_with_tracking_off():
    import inspect

    from nas import tracking, tracking_stages

    public = [n for n, f in vars(tracking.Tracker).items() if callable(f) and not n.startswith("_")]
    assert {"start", "end", "log_metrics", "log_params", "set_tags", "log_bytes"} <= set(public)
    for name in public:
        assert name in vars(tracking.NullTracker), name  # overridden: nothing reaches a client it has not
        null, real = (inspect.signature(getattr(cls, name)).parameters for cls in (tracking.NullTracker, tracking.Tracker))
        assert null == real, name
    off = tracking.tracker(track=False)
    assert off.start("r", {"stage": "x"}) is None
    with pytest.raises(TypeError):
        off.log_metrics(None, {"a": 1.0}, 0, "one too many")
    with pytest.raises(TypeError):
        tracking_stages.log_search(off, None)  # the stage functions bind their arguments too
    tracking_stages.log_search(off, None, {"genotype": "g"})  # and then log nothing


def test_clients_that_start_one_study_together_open_one_parent(store, tmp_path):
    """Without the study's lock, four clients started together made four parents."""
    import threading

    from flows.sweep import study_parent
    from nas import tracking

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    trackers = [tracking.Tracker() for _ in range(4)]
    gate, ids = threading.Barrier(len(trackers)), []

    def client(tr):
        gate.wait()
        tags = {"stage": "sweep", "method": "drnas"}
        ids.append(study_parent(tr, "s", storage, tags))

    threads = [threading.Thread(target=client, args=(tr,)) for tr in trackers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 4 and len(set(ids)) == 1

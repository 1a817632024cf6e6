"""The Prefect flows through a real (temporary) Prefect server: the pipeline end to end, cache hits
and partial reruns, the MLflow runs it leaves, the Optuna sweep with pruning and resumption, the
Dask task runner with two worker processes, and the deployment definitions."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import time

import pytest
import yaml
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("prefect-server")]


def _task_states(flow_run_id) -> dict[str, str]:
    """task name -> final state name of one flow run, read back from the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {r.name.rsplit("-", 1)[0]: r.state for r in runs}

    # task states reach the server as events, a moment after the flow returns (a task run can even
    # be read before its first state): wait for final ones
    deadline = time.monotonic() + 60
    while True:
        states = asyncio.run(read())
        if all(s is not None and s.is_final() for s in states.values()) or time.monotonic() > deadline:
            return {name: getattr(s, "name", None) for name, s in states.items()}
        time.sleep(0.5)


def _run_pipeline(**kw):
    from flows.pipeline import pipeline

    state = pipeline(**kw, return_state=True)
    assert state.is_completed(), state
    return state.result(), _task_states(state.state_details.flow_run_id)


def test_pipeline_end_to_end_caches_and_partial_rerun(prefect_server, tiny_params, tmp_path):
    params = tiny_params()
    out = tmp_path / "p"
    res, states = _run_pipeline(params=str(params), out=str(out))
    assert states == {k: "Completed" for k in ("prepare", "search", "select", "retrain", "evaluate")}
    metrics = json.loads((out / "evaluate" / "summary.json").read_text())
    assert metrics["genotype"] == res["genotype"] and 0 <= metrics["test_acc"] <= 1
    assert metrics["nb201"]["cifar10"] > 0
    search_mtime = (out / "search" / "result.json").stat().st_mtime_ns

    # unchanged inputs: every stage is a cache hit, nothing is recomputed
    res2, states2 = _run_pipeline(params=str(params), out=str(out))
    assert set(states2.values()) == {"Cached"}, states2
    assert res2["test_acc"] == res["test_acc"]
    assert (out / "search" / "result.json").stat().st_mtime_ns == search_mtime

    # a changed retrain parameter reruns retrain and evaluate only
    _, states3 = _run_pipeline(params=str(params), out=str(out), sets=["retrain.epochs=1"])
    assert states3 == {"prepare": "Cached", "search": "Cached", "select": "Cached", "retrain": "Completed",
                       "evaluate": "Completed"}
    assert json.loads((out / "retrain" / "result.json").read_text())["epochs"] == 1
    assert (out / "search" / "result.json").stat().st_mtime_ns == search_mtime

    # a changed input file (the search result) invalidates what reads it
    doc = yaml.safe_load(params.read_text())
    doc["search"]["seed"] = 1
    params.write_text(yaml.safe_dump(doc))
    _, states4 = _run_pipeline(params=str(params), out=str(out), sets=["retrain.epochs=1"])
    assert states4["prepare"] == "Cached" and states4["search"] == "Completed"
    assert states4["select"] == "Completed" and states4["retrain"] == "Completed"

    # the cache never outlives the files: a deleted run folder is recomputed, not reported Cached
    import shutil

    shutil.rmtree(out)
    res5, states5 = _run_pipeline(params=str(params), out=str(out), sets=["retrain.epochs=1"])
    assert states5 == {"prepare": "Cached", "search": "Completed", "select": "Completed", "retrain": "Completed",
                       "evaluate": "Completed"}
    assert (out / "search" / "result.json").is_file() and (out / "evaluate" / "metrics.json").is_file()
    # ... and once they exist again, the next run is all cache hits
    _, states6 = _run_pipeline(params=str(params), out=str(out), sets=["retrain.epochs=1"])
    assert set(states6.values()) == {"Cached"}


def test_pipeline_records_mlflow_runs(prefect_server, tiny_params, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("NAS_MLFLOW", "1")
    res, _ = _run_pipeline(params=str(tiny_params()), out=str(tmp_path / "p"), method="sdarts-rs")
    client = MlflowClient()
    parent = client.get_run(res["mlflow_run"])
    assert parent.data.tags["method"] == "sdarts-rs" and parent.data.tags["space"] == "nb201"
    assert parent.data.tags["code_version"].startswith("0.")
    # accuracies are percent in MLflow (fractions in the run folders), and every run says so
    assert parent.data.metrics["test_acc"] == pytest.approx(100 * res["test_acc"])
    assert "percentage" in parent.data.tags["mlflow.note.content"]
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    stages = {r.data.tags["stage"]: r for r in children}
    assert set(stages) == {"search", "select", "retrain"}
    search = stages["search"]
    for key in ("method", "space", "dataset", "seed"):
        assert key in search.data.tags
    # per-epoch metrics with steps, and the eigenvalue and per-edge statistics
    val = client.get_metric_history(search.info.run_id, "val_acc")
    assert [m.step for m in val] == [1, 2, 3]
    assert len(client.get_metric_history(search.info.run_id, "hessian_eig")) == 3
    # edges are named by their nodes, ops by name; the schedules and timing have their own groups
    assert len(client.get_metric_history(search.info.run_id, "edge_entropy/3_from_2")) == 3
    assert len(client.get_metric_history(search.info.run_id, "edge_max_weight/1_from_0")) == 3
    assert len(client.get_metric_history(search.info.run_id, "skip_weight_mean")) == 3
    assert len(client.get_metric_history(search.info.run_id, "schedule/w_lr")) == 3
    ops = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    first = {op: client.get_metric_history(search.info.run_id, f"alpha/{op}")[0].value for op in ops}
    assert abs(sum(first.values()) - 1) < 1e-4  # the mean weights of the five ops sum to one
    assert search.data.params["search.method"] == "sdarts-rs"
    # the time spent logging is a tag (bookkeeping), not a chart
    assert 0 < float(search.data.tags["mlflow_log_fraction"]) and float(search.data.tags["mlflow_log_seconds"]) > 0
    assert not any(k.startswith("mlflow_log") for k in search.data.metrics)
    # names tell runs apart: stage, method, selection, space, seed, config digest
    assert parent.info.run_name.startswith("pipeline-sdarts-rs-magnitude-nb201-s0-")
    assert search.info.run_name.startswith("search-sdarts-rs-nb201-s0-")
    # the parent holds the key results
    for key in ("test_acc", "params", "nb201_cifar10", "nb201_cifar100", "skip_edges", "final_eigenvalue"):
        assert key in parent.data.metrics, key
    assert parent.data.tags["genotype"] == res["genotype"]
    assert {r.info.status for r in children} == {"FINISHED"} and parent.info.status == "FINISHED"

    def files(run, folder=None):
        return {f.path for f in client.list_artifacts(run.info.run_id, folder)}

    assert files(search, "alpha") == {"alpha/alpha_history.npz", "alpha/alpha_heatmap.png", "alpha/alpha_per_op.png"}
    assert files(search, "hessian") == {"hessian/hessian_spectra.json"}
    assert files(search, "genotype") == {"genotype/genotype.json", "genotype/cell.png", "genotype/nb201_lookup.json"}
    import mlflow.pytorch
    import torch

    net = mlflow.pytorch.load_model(f"runs:/{stages['retrain'].info.run_id}/model")
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    local = client.download_artifacts(search.info.run_id, "alpha/alpha_history.npz", str(tmp_path))
    import numpy as np

    arr = np.load(local)
    assert arr["alpha"].shape == (3, 6, 5) and np.allclose(arr["weights"].sum(-1), 1, atol=1e-4)


def test_sweep_grows_every_run_prunes_and_keeps_one_parent(prefect_server, tiny_params, tmp_path, monkeypatch):
    import optuna
    from mlflow.tracking import MlflowClient

    from flows.sweep import Study, sweep_flow
    from nas import sweep

    monkeypatch.setenv("NAS_MLFLOW", "1")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    params = tiny_params(search={"epochs": 3})
    study = Study(name="t", storage=storage, out=str(tmp_path / "s"))
    kw = dict(method="drnas", mode="retrain", params=str(params), study=study)
    res = sweep_flow(n_trials=3, **kw)
    states = [t["state"] for t in res["trials"]]
    assert len(states) == 3 and states[0] == "COMPLETE" and set(states) <= {"COMPLETE", "PRUNED"}
    values = {t["number"]: t["value"] for t in res["trials"]}
    assert len({t["drnas_lambda"] for t in res["trials"]}) == 3  # three different strengths sampled
    # a pruned trial's supernet accuracy is in its own column, never in the objective's
    for t in res["trials"]:
        assert t["supernet_val_acc"] is not None
        assert (t["value"] is None) == (t["state"] == "PRUNED")
    # the next run (the next night) adds its trials again and keeps the finished ones
    res2 = sweep_flow(n_trials=2, **kw)
    assert len(res2["new"]) == 2 and len(res2["trials"]) == 5
    assert {t["number"]: t["value"] for t in res2["trials"][:3]} == values
    # max_trials caps the study's total
    res3 = sweep_flow(n_trials=4, **{**kw, "study": study.model_copy(update={"max_trials": 6})})
    assert len(res3["new"]) == 1 and len(res3["trials"]) == 6
    study = optuna.load_study(study_name="t", storage=storage)
    assert sweep.finished(study) == 6
    assert study.metric_names == ["holdout_val_acc_after_retrain"]
    assert (tmp_path / "s" / "trials.csv").is_file()
    # one MLflow parent for the study, holding every trial of the three runs
    client = MlflowClient()
    parents = client.search_runs([client.get_experiment_by_name("nas").experiment_id],
                                 f"tags.stage = 'sweep' and tags.study = 't' and tags.study_storage = '{storage}'")
    assert len(parents) == 1 and parents[0].info.run_id == res["mlflow_run"] == res3["mlflow_run"]
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["trials_complete"] >= 1
    trials = client.search_runs([parents[0].info.experiment_id],
                                f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert len(trials) == 6
    # a trial's search carries what every search run carries: α history and charts, cell, eigenvalue
    done = [r for r in trials if r.data.tags.get("state") == "COMPLETE"]
    assert done
    for r in done:
        assert {a.path for a in client.list_artifacts(r.info.run_id, "alpha")} == {
            "alpha/alpha_history.npz", "alpha/alpha_heatmap.png", "alpha/alpha_per_op.png"}
        assert "genotype/cell.png" in {a.path for a in client.list_artifacts(r.info.run_id, "genotype")}
        assert "final_eigenvalue" in r.data.metrics and "val_acc" in r.data.metrics
    # the parent's comparison page: every trial in one table, best first
    (tmp_path / "dl").mkdir()
    page = pathlib.Path(client.download_artifacts(parents[0].info.run_id, "comparison.html", str(tmp_path / "dl"))).read_text()
    assert page.count("<tr") == 1 + 6 and "<th>drnas_lambda</th>" in page and "percentage" in page
    assert "<th>value (%)</th>" in page and page.count("best</td>") >= 1  # the winner (or the tied) marked
    # the benchmark objective is refused for a study made for the retrain objective
    with pytest.raises(Exception, match="was made for method 'drnas' mode 'retrain'"):
        sweep.open_study("t", storage, "drnas", "benchmark")


def test_sweep_pruner_stops_a_bad_trial(tmp_path, tiny_params):
    """Pruning, deterministically: a trial whose supernet accuracy trails the first one's is stopped."""
    import optuna

    from nas import sweep

    storage = f"sqlite:///{tmp_path / 'p.db'}"
    study = sweep.open_study("p", storage, "drnas", "benchmark")
    # two finished trials with a high supernet accuracy at every epoch
    for _ in range(2):
        t = study.ask()
        t.suggest_float("drnas_lambda", 1e-4, 1e-1, log=True)
        for step in range(1, 6):
            t.report(100.0, step)
        study.tell(t, 94.0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    row = sweep.run_trial(sweep.TrialJob("p", storage, "drnas", "benchmark", str(tiny_params(search={"epochs": 5})),
                                         out=str(tmp_path / "o"), track=True, tracking_uri=uri))
    assert row["state"] == "PRUNED" and row["value"] is None and row["supernet_val_acc"] is not None
    trial = optuna.load_study(study_name="p", storage=storage).trials[2]
    assert trial.state == optuna.trial.TrialState.PRUNED and max(trial.intermediate_values) == 2
    # the pruned trial's run ends FINISHED, tagged PRUNED, with its search so far as artifacts
    from mlflow.tracking import MlflowClient

    mc = MlflowClient(tracking_uri=uri)
    (run,) = mc.search_runs([mc.get_experiment_by_name("nas").experiment_id], "tags.stage = 'trial'")
    assert run.info.status == "FINISHED" and run.data.tags["state"] == "PRUNED"
    files = {f.path for f in mc.list_artifacts(run.info.run_id, "run/search")}
    assert "run/search/checkpoint.pt" in files, files  # α history, weights and config: the search can go on


def test_benchmark_flow_on_two_dask_processes(prefect_server, tmp_path):
    from flows.benchmark import benchmark
    from flows.common import Where

    proto = tmp_path / "proto.yaml"
    proto.write_text(yaml.safe_dump({
        "search": {"dataset": "digits", "cache_dir": str(tmp_path / "prep"), "epochs": 2, "channels": 4, "cells": 1,
                   "batch_size": 32, "steps_per_epoch": 3, "hessian_every": 1},
        "select": {"pt_tune_epochs": 0, "pt_batches": 1},
        "grid": {"methods": ["darts"], "seeds": [1, 2], "selections": ["magnitude", "pt"]}}))
    res = benchmark(protocol=str(proto), out=str(tmp_path / "g"), report=str(tmp_path / "r"),
                    where=Where(runner="dask", workers=2, threads=1))
    assert len(res["pids"]) == 2 and os.getpid() not in res["pids"]
    assert len(res["rows"]) == 4  # darts x 2 seeds x 2 selections, one cell per Dask process
    table = (tmp_path / "r" / "table.md").read_text()
    assert "| darts | pt | 2 |" in table and "oracle" in table
    # the same grid on threads reads every cell back from the run directories: same rows
    res2 = benchmark(protocol=str(proto), out=str(tmp_path / "g"), report=str(tmp_path / "r"))
    key = lambda r: (r["method"], r["selection"], r["seed"])  # noqa: E731
    assert sorted(res2["rows"], key=key) == sorted(res["rows"], key=key)
    # a fresh clone has the report (with its archived cells) but no run folders: the flow reads
    # every cell back from the report instead of computing it again (no supernet is ever saved)
    import shutil

    shutil.rmtree(tmp_path / "g")
    assert {p.name for p in (tmp_path / "r" / "cells").iterdir()} == {"darts-s1", "darts-s2"}
    res3 = benchmark(protocol=str(proto), out=str(tmp_path / "g"), report=str(tmp_path / "r"))
    assert sorted(res3["rows"], key=key) == sorted(res["rows"], key=key)
    assert not list((tmp_path / "g").rglob("*.pt"))


def test_deployment_definitions_load():
    from flows.serve import load_deployments

    deps = {d.name: d for d in load_deployments(REPO / "prefect.yaml")}
    assert set(deps) == {"default", "nightly", "cpu-proxy", "cpu-proxy-c16", "cpu-proxy-s"}
    assert deps["default"].flow_name == "nas-pipeline"
    assert deps["nightly"].flow_name == "nas-sweep"
    assert deps["cpu-proxy"].flow_name == "nas-benchmark"
    assert deps["cpu-proxy-c16"].flow_name == "nas-benchmark"
    assert deps["cpu-proxy-c16"].parameters["protocol"] == "params/cpu-proxy-c16.yaml"
    assert deps["cpu-proxy-s"].flow_name == "nas-benchmark"
    assert deps["cpu-proxy-s"].parameters["protocol"] == "params/cpu-proxy-s.yaml"
    cron = deps["nightly"].schedules[0].schedule
    assert cron.cron == "0 2 * * *" and cron.timezone == "UTC"
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for d in doc["deployments"]:
        file = d["entrypoint"].split(":")[0]
        assert (REPO / file).is_file()
        assert d["work_pool"]["name"] == "nas-local"


def test_bad_pipeline_params_are_named(tmp_path, tiny_params):
    from nas import config as config_mod
    from nas.utils import NasError

    p = tiny_params(prepare={"dataset": "cifar10"})
    with pytest.raises(NasError, match="prepare.dataset is 'cifar10' but search.dataset is 'digits'"):
        config_mod.pipeline_configs(p, tmp_path / "o")
    with pytest.raises(NasError, match="expected section.key=value"):
        config_mod.pipeline_configs(tiny_params(), tmp_path / "o", ["epochs=3"])
    with pytest.raises(NasError, match="unknown key 'epoch'"):
        config_mod.pipeline_configs(tiny_params(), tmp_path / "o", ["search.epoch=3"])
    # a protocol file without a prepare section prepares what its search reads
    cfgs = config_mod.pipeline_configs(REPO / "params" / "cpu-proxy.yaml", tmp_path / "o",
                                       ["search.data=/data/c10.tar.gz"], method="drnas")
    assert (cfgs["prepare"].dataset, cfgs["prepare"].data) == ("cifar10", "/data/c10.tar.gz")
    assert cfgs["search"].method == "drnas" and cfgs["search"].out == str(tmp_path / "o" / "search")


@pytest.mark.parametrize("module, args, named", [
    ("flows.pipeline", ["--params", "{tmp}/nope.yaml"], "nope.yaml"),
    ("flows.pipeline", ["--params", "{params}", "--set", "search.epochz=2"], "epochz"),
    ("flows.benchmark", ["--protocol", "{tmp}/nope.yaml"], "nope.yaml"),
    ("flows.sweep", ["--params", "{tmp}/nope.yaml"], "nope.yaml"),
    # the whole trial config, as a worker would resolve it, is checked on the client before dispatch
    ("flows.sweep", ["--params", "{params}", "--set", "search.cache_dir={tmp}/elsewhere"], "search.cache_dir"),
    ("flows.sweep", ["--params", "{params}", "--set", "search.epochz=2"], "epochz"),
])
def test_a_flow_command_refuses_bad_settings_in_one_line_before_prefect_starts(module, args, named, tmp_path,
                                                                                tiny_params, monkeypatch, capsys):
    import importlib

    def no_server():
        raise AssertionError("a Prefect server was readied for settings that cannot work")

    monkeypatch.setattr("flows.common.ready_local_prefect", no_server)
    argv = [a.format(tmp=tmp_path, params=tiny_params()) for a in args]
    assert importlib.import_module(module).main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"python -m {module}: error: ") and named in err, err


def test_a_flow_that_fails_under_its_command_ends_in_one_line(tiny_params, monkeypatch, capsys):
    import flows.pipeline

    def lost(*args, **kwargs):
        raise ConnectionError("the server went away\nand a second line")

    monkeypatch.setattr("flows.common.ready_local_prefect", lambda: None)
    monkeypatch.setattr(flows.pipeline, "pipeline", lost)
    assert flows.pipeline.main(["--params", str(tiny_params())]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "python -m flows.pipeline: error: ConnectionError: the server went away"


def test_prepare_task_retries_io_errors_not_config_errors(prefect_server, tmp_path):
    from flows.pipeline import prepare_task

    bad = prepare_task.with_options(retry_delay_seconds=0)
    state = bad({"dataset": "cifar10", "data": str(tmp_path / "missing.tar.gz"),
                 "cache_dir": str(tmp_path / "c")}, inputs=[], return_state=True)
    assert state.is_failed()
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async def count():
        # a task run outside a flow reaches the server through its event stream: wait until it has
        async with get_client() as client:
            for _ in range(120):
                try:
                    return (await client.read_task_run(state.state_details.task_run_id)).run_count
                except ObjectNotFound:
                    await asyncio.sleep(0.25)
            raise AssertionError("the task run never reached the server")

    assert asyncio.run(count()) == 1  # a NasError (bad input) is not retried


def test_prepare_task_retries_a_transient_error(prefect_server, tmp_path, monkeypatch):
    from flows import pipeline as pl

    calls = []
    real = pl.stages.prepare_stage

    def flaky(cfg):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk hiccup")
        return real(cfg)

    monkeypatch.setattr(pl.stages, "prepare_stage", flaky)
    res = pl.prepare_task.with_options(retry_delay_seconds=0, cache_key_fn=None, persist_result=False)(
        {"dataset": "digits", "cache_dir": str(tmp_path / "c")}, inputs=[])
    assert len(calls) == 2 and res["dataset"] == "digits"


@pytest.mark.xdist_group("quickstart")  # its own temporary Prefect server: free to run beside the others
def test_quickstart_script_as_the_readme_runs_it(tmp_path):
    """`bash scripts/quickstart.sh`: the flow on the embedded digits, then the cell's size and its
    NAS-Bench-201 lookup, read from the run's summary.  The script passes its arguments to the flow;
    here they shorten the search and the retrain and keep each to one thread beside the other test
    worker (the full-length run is `dvc repro`'s, whose lock tests/test_dvc.py holds to the code)."""
    import subprocess

    env = {**os.environ, "OUT": str(tmp_path / "qs")}
    short = ["--set", "search.epochs=3", "--set", "search.steps_per_epoch=4", "--set", "search.threads=1",
             "--set", "retrain.epochs=1", "--set", "retrain.threads=1"]
    p = subprocess.run(["bash", "scripts/quickstart.sh", *short], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1200, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    summary = json.loads((tmp_path / "qs" / "evaluate" / "summary.json").read_text())
    assert f"genotype: {summary['genotype']}" in p.stdout
    assert "params:" in p.stdout and "cifar10 test accuracy:" in p.stdout and "oracle 94.37" in p.stdout
    assert summary["retrain_epochs"] == 1  # the arguments reached the flow


def test_summary_links_point_at_the_tracking_server(monkeypatch):
    from flows.pipeline import mlflow_ui

    class Client:
        uri = "http://tracking:5000/"

    monkeypatch.delenv("NAS_MLFLOW_UI", raising=False)
    assert mlflow_ui(Client()) == "http://tracking:5000"
    Client.uri = "sqlite:///runs/mlflow.db"  # a local store: the docs' `mlflow ui --port 5000`
    assert mlflow_ui(Client()) == "http://127.0.0.1:5000"
    monkeypatch.setenv("NAS_MLFLOW_UI", "https://mlflow.example.org")
    assert mlflow_ui(Client()) == "https://mlflow.example.org"

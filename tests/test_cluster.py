"""Several machines for real, on this one: `nas cluster up` starts PostgreSQL, an MLflow server with
proxied artifacts, a Prefect server and a Dask scheduler with two workers, each worker in a folder
of its own with no tracking or study settings in its environment.  Sweeps are run as a user runs
them (`python -m flows.sweep`), from client folders that are not the repository."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY_PIPELINE, shared_servers

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]

CLIENT_SCRUB = ("MLFLOW_TRACKING_URI", "NAS_OPTUNA_STORAGE", "PREFECT_API_URL", "PREFECT_HOME")


@contextlib.contextmanager
def _cluster_up(root: Path):
    from nas.cluster import Cluster

    c = Cluster(root / "c")
    c.up(workers=2, prefect=True, timeout=300)
    try:
        yield c
    finally:
        c.down(quiet=True)


@pytest.fixture
def cluster(tmp_path_factory):
    """One cluster for this file's tests (conftest.shared_servers: up for the first, down after the last)."""
    return shared_servers("cluster", lambda: _cluster_up(tmp_path_factory.mktemp("cluster")))


def _params(folder: Path, **search) -> Path:
    doc = {k: dict(v) for k, v in TINY_PIPELINE.items()}
    doc["search"].update({"method": "drnas", "hessian_every": 0, **search})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _sweep(cluster, cwd: Path, *args: str, wait: bool = True, env: dict | None = None):
    base = {k: v for k, v in os.environ.items() if k not in CLIENT_SCRUB}
    base.update({"PYTHONPATH": str(REPO), "NAS_MLFLOW": "1", "PREFECT_HOME": str(cwd / "prefect-home"),
                 "NAS_OPTUNA_HEARTBEAT": "5", **cluster.env(), **(env or {})})
    cmd = [sys.executable, "-m", "flows.sweep", "--method", "drnas", "--mode", "benchmark", "--pruner", "none",
           "--params", "tiny.yaml", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=base, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=900)
    return proc.returncode, out, err


def _study(cluster, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=cluster.env()["NAS_OPTUNA_STORAGE"])


def _client(cluster):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=cluster.env()["MLFLOW_TRACKING_URI"])


def test_cluster_env_names_every_service_and_workers_have_none_of_the_settings(cluster, request):
    if getattr(request.config.option, "loadgroup", False):  # xdist worker under --dist loadgroup: it must group
        assert request.node.nodeid.endswith("@cluster"), f"xdist did not group {request.node.nodeid}"
    env = cluster.env()
    assert env["NAS_OPTUNA_STORAGE"].startswith("postgresql+psycopg://nas@127.0.0.1:")
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    assert env["NAS_DASK_ADDRESS"].startswith("tcp://127.0.0.1:")
    assert env["PREFECT_API_URL"].endswith("/api")
    for name in ("worker-1", "worker-2"):
        environ = Path(f"/proc/{cluster.state[name]['pid']}/environ").read_bytes().split(b"\0")
        keys = {e.split(b"=", 1)[0].decode() for e in environ if e}
        assert not keys & {"MLFLOW_TRACKING_URI", "NAS_OPTUNA_STORAGE"}
    # the workers run without Dask's dashboard diagnostics (its sampling profiler above all)
    from distributed import Client

    with Client(env["NAS_DASK_ADDRESS"], timeout=60) as client:
        profiling = client.run(lambda: __import__("dask").config.get("distributed.worker.profile.enabled"))
    assert len(profiling) == 2 and set(profiling.values()) == {False}
    # the CLI prints the same settings
    out = subprocess.run([sys.executable, "-m", "nas.cli", "cluster", "env", "--root", str(cluster.root), "--json"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert json.loads(out.stdout) == env


def test_two_sweeps_from_two_folders_share_only_the_database_and_stop_at_max_trials(cluster, tmp_path):
    procs = []
    for host in ("host-a", "host-b"):
        _params(tmp_path / host)
        procs.append(_sweep(cluster, tmp_path / host, "--study", "capped", "--n-trials", "3", "--max-trials", "3",
                            wait=False))
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    states = [t.state.name for t in _study(cluster, "capped").trials]
    assert states.count("COMPLETE") == 3 and len(states) == 3, states


def test_postgres_restarted_during_a_sweep_loses_no_finished_trial(cluster, tmp_path):
    _params(tmp_path / "c", epochs=12)
    proc = _sweep(cluster, tmp_path / "c", "--study", "restart", "--n-trials", "3", wait=False)
    deadline = time.monotonic() + 600

    def first_complete() -> bool:
        try:
            return any(t.state.name == "COMPLETE" for t in _study(cluster, "restart").trials)
        except Exception:
            return False

    while not first_complete() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
    cluster.stop_postgres("fast")
    time.sleep(3)
    cluster.start_postgres()
    out, err = proc.communicate(timeout=900)
    study = _study(cluster, "restart")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert complete, err[-2000:]  # the trial finished before the restart is still there
    if proc.returncode == 0:
        assert len(complete) == 3
    else:  # or the sweep stops with one line that says what happened
        last = err.strip().splitlines()[-1]
        assert last.startswith("python -m flows.sweep: error:"), err[-2000:]


def test_mlflow_server_down_for_20_seconds_loses_no_metric(cluster, tmp_path):
    _params(tmp_path / "c", epochs=20)
    proc = _sweep(cluster, tmp_path / "c", "--study", "mlflow-down", "--n-trials", "1", wait=False)
    mc = _client(cluster)
    exp_id = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # down as soon as the trial's run exists
        exp = mc.get_experiment_by_name("nas")
        if exp and mc.search_runs([exp.experiment_id], "tags.stage = 'trial' and tags.study = 'mlflow-down'"):
            exp_id = exp.experiment_id
            break
        time.sleep(0.5)
    assert exp_id is not None, proc.communicate()[1][-2000:]
    cluster.stop_service("mlflow")
    time.sleep(20)
    cluster.start_service("mlflow", 120)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    runs = mc.search_runs([exp_id], "tags.stage = 'trial' and tags.study = 'mlflow-down'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = mc.get_metric_history(runs[0].info.run_id, "supernet_val_acc")
    assert sorted(m.step for m in history) == list(range(1, 21))


def _grid_protocol(folder: Path, epochs: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tinygrid.yaml"
    path.write_text(yaml.safe_dump({
        "search": {"dataset": "digits", "epochs": epochs, "channels": 4, "cells": 1, "batch_size": 32,
                   "steps_per_epoch": 3, "hessian_every": 1},
        "grid": {"methods": ["darts", "gdas"], "seeds": [1], "selections": ["magnitude"]}}))
    return path


def _flow(cluster, cwd: Path, module: str, *args: str, wait: bool = True, env: dict | None = None):
    base = {k: v for k, v in os.environ.items() if k not in CLIENT_SCRUB}
    env = {**base, "PYTHONPATH": str(REPO), "NAS_MLFLOW": "1", "PREFECT_HOME": str(cwd / "prefect-home"),
           **cluster.env(), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=900)
    return proc.returncode, out, err


def _rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if not k.endswith("_minutes")} for r in csv.DictReader(f)]


def _grid_came_home(cluster, tmp_path: Path, report: Path, ran_in: Path) -> None:
    """The grid of ``report`` ran on the cluster's workers, in run folders of their own under
    ``ran_in``: its results came back with the rows, no report was written in the workers' folders,
    no run folder in the client's, and the runs table holds one nested run per row with the cell's
    results; the same grid in one process gives the same rows, and a folder with nothing but the
    protocol rebuilds the same report from the tracking server."""
    assert {p.name for p in (report / "cells").iterdir()} == {"darts-s1", "gdas-s1"}
    assert not (ran_in / "data" / "results").exists()
    assert {c.name for c in (ran_in / "runs" / "grid" / "tinygrid").iterdir() if c.is_dir()} == {"darts-s1", "gdas-s1"}
    assert not (report.parents[2] / "runs" / "grid").exists()  # no grid run folder in the client's
    mc = _client(cluster)
    exp = mc.get_experiment_by_name("nas")
    rows = mc.search_runs([exp.experiment_id], "tags.stage = 'grid' and tags.protocol = 'tinygrid'")
    assert len(rows) == 2 and all(mc.list_artifacts(r.info.run_id, "cell") for r in rows)
    for r in rows:  # each row carries its search's charts and its cell, as a pipeline search does
        charts = {f.path for folder in ("alpha", "genotype") for f in mc.list_artifacts(r.info.run_id, folder)}
        assert {"alpha/alpha_per_op.png", "alpha/alpha_heatmap.png", "genotype/cell.png"} <= charts, charts
        assert [m.step for m in mc.get_metric_history(r.info.run_id, "val_acc")] == [1, 2, 3]  # 3 epochs
    one = tmp_path / "one"
    _grid_protocol(one)
    p = subprocess.run([sys.executable, "-m", "nas.cli", "grid", "--protocol", "tinygrid.yaml", "--workers", "1",
                        "--threads", "1"],
                       cwd=one, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _rows(one / "data" / "results" / "tinygrid" / "runs.csv") == _rows(report / "runs.csv")
    third = tmp_path / "third"
    _grid_protocol(third)
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_SCRUB}
    env.update(PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=cluster.env()["MLFLOW_TRACKING_URI"])
    p = subprocess.run([sys.executable, "-m", "nas.cli", "grid", "--protocol", "tinygrid.yaml", "--report-only",
                        "--from-tracking"], cwd=third, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rebuilt = third / "data" / "results" / "tinygrid"
    for rel in sorted(q.relative_to(report) for q in report.rglob("*") if q.is_file() and not q.name.endswith(".lock")):
        assert (rebuilt / rel).read_bytes() == (report / rel).read_bytes(), rel


def _read_only_worker(cluster, client_dir: Path, folder: Path) -> subprocess.Popen:
    """A Dask worker in a mount namespace of its own, where ``client_dir`` is bound read-only: a
    host that sees the client's folders (or an NFS export of them) read-only."""
    from nas.cluster import DASK_QUIET_ENV

    folder.mkdir(parents=True)
    c = str(client_dir)
    script = f'mount --bind "{c}" "{c}" && mount -o remount,bind,ro "{c}" "{c}" && exec "$@"'
    env = {**DASK_QUIET_ENV, **{k: v for k, v in os.environ.items() if k not in CLIENT_SCRUB},
           "PREFECT_API_URL": cluster.env()["PREFECT_API_URL"]}
    cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
           str(Path(sys.executable).parent / "dask"), "worker", cluster.env()["NAS_DASK_ADDRESS"], "--nworkers", "1",
           "--nthreads", "1", "--no-dashboard", "--name", "read-only"]
    with open(folder / "worker.log", "wb") as log:
        return subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_workers_that_see_the_client_folder_read_only_finish_a_sweep_and_a_grid(cluster, tmp_path):
    """A worker host that sees the client's folder read-only: a sweep and a grid (which then matches
    the same grid in one process, and comes home without a shared folder) finish there."""
    import signal

    from distributed import Client

    client_dir, folder = tmp_path / "client", tmp_path / "worker-ro"
    _params(client_dir)
    _grid_protocol(client_dir)
    for name in ("worker-1", "worker-2"):  # the read-only worker alone takes the jobs
        cluster.stop_service(name)
    worker = _read_only_worker(cluster, client_dir, folder)
    try:
        with Client(cluster.env()["NAS_DASK_ADDRESS"], timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            [writable] = client.run(os.access, str(client_dir), os.W_OK).values()
        assert writable is False  # the worker cannot write the client's folder
        code, out, err = _sweep(cluster, client_dir, "--study", "read-only", "--n-trials", "2", "--parallel", "1",
                                "--runner", "dask", "--address", cluster.env()["NAS_DASK_ADDRESS"])
        assert code == 0, err[-3000:]
        assert [t.state.name for t in _study(cluster, "read-only").trials] == ["COMPLETE"] * 2
        assert len(list((folder / "runs" / "sweep" / "read-only").glob("trial-*/search/result.json"))) == 2
        code, out, err = _flow(cluster, client_dir, "flows.benchmark", "--protocol", "tinygrid.yaml", "--runner", "dask")
        assert code == 0, err[-3000:]
        _grid_came_home(cluster, tmp_path, client_dir / "data" / "results" / "tinygrid", folder)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
        for name in ("worker-1", "worker-2"):
            cluster.start_service(name, 120)


def test_a_worker_killed_during_a_cell_leaves_it_to_the_other_worker_from_the_stored_checkpoint(cluster, tmp_path):
    """No shared folder: the cell's progress (its checkpoint above all) goes to the tracking server
    every second here (NAS_PROGRESS_EVERY), and the other worker continues from it, not from epoch 0."""
    import signal

    client_dir = tmp_path / "client"
    proto = _grid_protocol(client_dir, epochs=40)
    doc = yaml.safe_load(proto.read_text())
    doc["grid"].update(methods=["darts"], seeds=[7])
    proto.write_text(yaml.safe_dump(doc))
    proc = _flow(cluster, client_dir, "flows.benchmark", "--protocol", "tinygrid.yaml", "--runner", "dask",
                 wait=False, env={"NAS_PROGRESS_EVERY": "1"})
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        for name in ("worker-1", "worker-2"):  # the worker whose folder the cell's data went to
            if any((cluster.root / name / "data").glob("prepared/*.pt")):
                victim = name
        time.sleep(0.5)
    assert victim is not None, proc.communicate()[1][-2000:]
    mc = _client(cluster)

    def stored() -> list:  # the cell's progress run, once its checkpoint is stored there
        exp = mc.get_experiment_by_name("nas-progress")
        runs = mc.search_runs([exp.experiment_id], "tags.job = 'tinygrid/darts-s7'") if exp else []
        return [r for r in runs if any(a.path == "search/checkpoint.pt" for a in mc.list_artifacts(r.info.run_id,
                                                                                                   "search"))]

    while not stored() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    cluster.stop_service(victim, signal.SIGKILL, wait=5)
    out, err = proc.communicate(timeout=900)
    try:
        assert proc.returncode == 0, err[-3000:]
        rows = _rows(client_dir / "data" / "results" / "tinygrid" / "runs.csv")
        assert len(rows) == 1 and rows[0]["method"] == "darts" and rows[0]["seed"] == "7"
        # the other worker took the stored files (the checkpoint among them) into its empty folder,
        # and the search resumed from that checkpoint (a checkpoint that did not match would fail the cell)
        [run] = stored()
        assert run.info.status == "FINISHED" and run.data.tags["restored"] == "1", run.data.tags
    finally:
        cluster.start_service(victim, 120)


def _sweep_landed(cluster, client_dir: Path, study: str, n: int) -> None:
    """A finished sweep of ``n`` trials on the cluster: in PostgreSQL, in the workers' folders and in
    the tracking server, under one parent, each trial with its run folder."""
    trials = _study(cluster, study).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * n
    assert len({t.params["drnas_lambda"] for t in trials}) == n  # n different strengths
    # the trials ran in the workers' own folders (the client's may be read-only there: see
    # test_workers_that_see_the_client_folder_read_only_...); the client wrote only the trials table
    ran = [t.name for name in ("worker-1", "worker-2") for t in (cluster.root / name / "runs" / "sweep" / study).glob("trial-*")]
    assert len(ran) == n and not list((client_dir / "runs" / "sweep" / study).glob("trial-*"))
    assert (client_dir / "runs" / "sweep" / study / "trials.csv").is_file()
    mc = _client(cluster)
    exp = mc.get_experiment_by_name("nas")
    parents = mc.search_runs([exp.experiment_id], f"tags.stage = 'sweep' and tags.study = '{study}'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["trials_complete"] == n
    runs = mc.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert len(runs) == n and {r.info.status for r in runs} == {"FINISHED"}
    uri = cluster.env()["MLFLOW_TRACKING_URI"]
    for r in runs:
        names = {a.path for a in mc.list_artifacts(r.info.run_id, "run")}
        assert "run/params.yaml" in names and "run/search" in names
        # downloadable over HTTP from the server's artifact proxy
        url = (f"{uri}/get-artifact?path=run/search/result.json&run_uuid={r.info.run_id}")
        with urllib.request.urlopen(url, timeout=30) as resp:
            result = json.loads(resp.read())
        assert result["genotype"] == r.data.tags["genotype"]


def test_a_sweep_across_two_dask_workers_lands_in_postgres_and_the_tracking_server_and_again_after_down_and_up(
        cluster, tmp_path):
    """A sweep on the two workers, then `nas cluster down`, `up` (a fresh database) and the same
    sweep: each study gets a token of its own, so its trials never land in the folders of the earlier
    study's."""
    client_dir = tmp_path / "client"
    _params(client_dir)
    args = ("--study", "again", "--n-trials", "2", "--parallel", "2", "--pruner", "median", "--runner", "dask",
            "--address")
    for attempt in range(2):
        code, out, err = _sweep(cluster, client_dir, *args, cluster.env()["NAS_DASK_ADDRESS"])
        assert code == 0, (attempt, err[-3000:])
        assert [t.state.name for t in _study(cluster, "again").trials] == ["COMPLETE"] * 2  # the fresh study's
        if attempt == 0:
            _sweep_landed(cluster, client_dir, "again", 2)
            cluster.down(quiet=True)
            cluster.up(workers=2, prefect=True, timeout=300)
    folders = [t.name for name in ("worker-1", "worker-2") for t in (cluster.root / name / "runs" / "sweep" / "again").glob("trial-*")]
    assert len(folders) == 4 and len({f.rsplit("-", 1)[1] for f in folders}) == 2, folders  # two studies' tokens

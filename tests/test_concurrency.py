"""A second worker, process or flow loses no work: concurrent merges, grids and sweeps on one
folder or study, killed grids, databases that come and go."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import nb201_table

from nas.utils import NasError

REPO = Path(__file__).resolve().parent.parent
NB201_BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"






# ------------------------------------------------------------------------------------------ 10-11. concurrency
def test_concurrent_csv_merges_lose_no_row(tmp_path):
    code = """
import sys
from pathlib import Path
from nas.grid import write_runs_csv
who = sys.argv[1]
for i in range(40):
    write_runs_csv(Path(sys.argv[2]), [{"protocol": "p", "method": who, "selection": "magnitude", "seed": i,
        "genotype": "|none~0|", "cifar10": 90.0, "cifar100": 70.0, "imagenet16-120": 40.0, "search_minutes": 1.0,
        "select_minutes": 0.0, "final_eigenvalue": 0.1, "skip_edges": 0}])
"""
    path = tmp_path / "runs.csv"
    procs = [subprocess.Popen([sys.executable, "-c", code, who, str(path)], env={**os.environ, "PYTHONPATH": str(REPO)})
             for who in ("darts", "snas", "gdas")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    from nas.grid import read_runs_csv

    assert len(read_runs_csv(path)) == 120


@pytest.mark.slow
def test_two_grids_on_one_folder_compute_each_cell_once(tmp_path):
    import yaml

    proto = tmp_path / "proto.yaml"
    proto.write_text(yaml.safe_dump({
        "search": {"dataset": "digits", "space": "nb201", "epochs": 2, "channels": 4, "cells": 1, "batch_size": 32,
                   "steps_per_epoch": 3, "cache_dir": str(tmp_path / "cache")},
        "select": {"pt_tune_epochs": 0, "pt_batches": 1},
        "grid": {"methods": ["darts", "snas", "gdas"], "seeds": [1, 2], "selections": ["magnitude"]}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "NAS_NB201_TABLE": str(nb201_table(tmp_path))}
    cmd = [sys.executable, "-m", "nas.cli", "grid", "--protocol", str(proto), "--out", str(tmp_path / "g"),
           "--report", str(tmp_path / "rep")]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
             for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    done = sum(e.count("search done") for e in errs)
    cached = sum(e.count("search cached") for e in errs)
    assert done == 6 and cached == 6, errs
    from nas.grid import read_runs_csv

    assert len(read_runs_csv(tmp_path / "rep" / "runs.csv")) == 6


SWEEP_WORKER = """
import sys
from nas import sweep
n = int(sys.argv[2])
rows = []
while True:
    row = sweep.run_trial(sweep.TrialJob(name="s", storage=sys.argv[1], method="drnas", mode="benchmark",
                                         params=sys.argv[3], out=sys.argv[4], pruner="none", max_trials=n))
    if row is None:
        break
    rows.append(row)
print("RAN", len(rows))
"""


@pytest.mark.slow
def test_concurrent_sweep_workers_finish_exactly_the_requested_trials(tmp_path, tiny_params):
    import optuna

    params = tiny_params(search={"epochs": 2, "hessian_every": 0})
    slow = tiny_params("slow.yaml", search={"epochs": 60, "hessian_every": 0})
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NAS_NB201_TABLE": str(nb201_table(tmp_path)),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh-mlflow.db'}", "NAS_OPTUNA_HEARTBEAT": "3",
           "NAS_MLFLOW": "1"}

    def worker(i: int, n: int, params: Path = params, heartbeat: int = 3) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", SWEEP_WORKER, storage, str(n), str(params),
                                 str(tmp_path / "trials"), str(i)],
                                env={**env, "NAS_OPTUNA_HEARTBEAT": str(heartbeat)}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    # two workers on a fresh study and a fresh MLflow store: no crash, exactly 3 finished trials
    # (a long heartbeat here: searches beside the other tests on 2 cores can starve a heartbeat
    # thread for seconds, and a live trial must not be taken for a dead one; the kill below uses 3 s)
    procs = [worker(i, 3, heartbeat=30) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    study = optuna.load_study(study_name="s", storage=storage)
    states = [t.state.name for t in study.trials]
    if [p.returncode for p in procs] != [0, 0] or states != ["COMPLETE"] * 3:
        pytest.fail(f"return codes {[p.returncode for p in procs]}, trials {states}\n"  # not cut short as asserts are
                    + "\n".join(f"worker {i} stderr:\n{o[1][-3000:]}" for i, o in enumerate(outs)))
    # a worker killed mid-trial: its trial goes stale, is marked FAIL and retried by the next worker
    import signal
    import time

    victim = worker(9, 4, slow)
    deadline = time.time() + 300
    while time.time() < deadline:
        running = [t for t in optuna.load_study(study_name="s", storage=storage).trials
                   if t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values]  # mid-search
        if running:
            break
        time.sleep(0.2)
    assert running, "the victim never started a trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    time.sleep(7)  # past the grace period of two heartbeats
    again = worker(10, 4)  # the retry takes the victim's strength, and this worker's short search
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-1500:]
    trials = optuna.load_study(study_name="s", storage=storage).trials
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.RUNNING not in states, (states, err[-3000:])
    assert states.count(optuna.trial.TrialState.FAIL) == 1, (states, err[-3000:])
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL][0]
    assert failed.number == running[0].number
    from nas.sweep import retried_from

    retried = [t for t in trials if retried_from(t) is not None]
    assert len(retried) == 1 and retried_from(retried[0]) == failed.number
    assert retried[0].params == failed.params and retried[0].state == optuna.trial.TrialState.COMPLETE
    # the victim could not end its MLflow run: the retry ended it KILLED; every other trial's run FINISHED
    from mlflow.tracking import MlflowClient

    mc = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = mc.search_runs([mc.get_experiment_by_name("nas").experiment_id], "tags.stage = 'trial'")
    status = {int(r.data.tags["trial"]): r.info.status for r in runs}
    assert status == {t.number: "KILLED" if t.number == failed.number else "FINISHED" for t in trials}, status
    # a finished trial's name opens with its objective, then its strength: what the runs table shows first
    for r in runs:
        if r.info.status == "FINISHED":
            t = trials[int(r.data.tags["trial"])]
            assert r.info.run_name == f"{t.value:.2f}%-drnas_lambda={t.params['drnas_lambda']:.3g}-trial-{t.number}-drnas"


def test_a_late_result_for_a_reaped_trial_is_dropped_not_written_over_its_fail(tmp_path, capsys):
    """A trial taken for a dead worker's (FAIL, its retry enqueued) whose worker then reports: the
    FAIL and the retry stand, the late result is refused with a line that says why."""
    import optuna

    from nas import sweep

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = sweep.open_study("s", storage, "drnas", "benchmark")
    trial = sweep.claim_trial(study, storage, max_trials=None)
    store = sweep.make_storage(storage)
    trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name("s"), trial.number)
    store.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)  # as fail_stale_trials does
    assert sweep.tell(study, trial, storage, 91.0) is False
    assert "taken for a dead worker's" in capsys.readouterr().err
    assert [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials] == ["FAIL"]
    fresh = sweep.claim_trial(study, storage, max_trials=None)
    assert sweep.tell(study, fresh, storage, 90.0) is True
    assert optuna.load_study(study_name="s", storage=storage).trials[-1].value == 90.0


def test_a_study_started_afresh_never_meets_the_folders_of_an_earlier_one(tmp_path):
    """The same study name and folder on a fresh database (a cluster brought down and up): its
    trial 0 gets a folder of its own; reopening a study keeps its token."""
    from nas import sweep

    dbs = [f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db")]
    first, fresh = (sweep.open_study("s", db, "drnas", "benchmark") for db in dbs)
    again = sweep.open_study("s", dbs[0], "drnas", "benchmark")
    a, b = (sweep.claim_trial(st, db, max_trials=None) for st, db in zip((first, fresh), dbs))
    assert a.number == b.number == 0
    assert sweep.study_token(a) == again.user_attrs["token"] != sweep.study_token(b)
    assert sweep.trial_folder("out", sweep.study_token(a), 0) != sweep.trial_folder("out", sweep.study_token(b), 0)
    assert sweep.trial_folder("out", "ab12cd34", 3) == Path("out") / "trial-0003-ab12cd34"


@pytest.mark.slow
def test_flows_started_together_on_an_empty_prefect_home_migrate_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    code = "from flows.common import ready_local_prefect; ready_local_prefect(); print('ready')"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-2000:] for o in outs]
    assert all(o[0].strip() == "ready" for o in outs)
    assert not any("duplicate column" in o[1] for o in outs)
    assert list((tmp_path / "home").glob(".nas-db-ready-*")) and (tmp_path / "home" / "prefect.db").is_file()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has ended (only its exit status is left)


def test_grid_workers_end_when_the_grid_is_killed(tmp_path):
    """A grid killed with SIGKILL (or SIGTERM) leaves no worker computing on: each worker watches
    its parent and leaves once it is gone."""
    import signal
    import textwrap
    import time

    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "grid_parent.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing as mp, os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from nas.runs.runner import exit_with_parent

        def job(path):
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)
            time.sleep(300)

        if __name__ == "__main__":
            pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=exit_with_parent,
                                       initargs=(os.getpid(), 0.1))
            pool.submit(job, sys.argv[1])
            time.sleep(300)
    """))
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    try:
        deadline = time.monotonic() + 120
        while not pid_file.is_file():
            assert time.monotonic() < deadline and parent.poll() is None, "the worker never started"
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), f"worker {worker} outlived its grid"
    finally:
        parent.kill()


def test_a_trial_waits_for_its_database_and_gives_up_after_nas_db_retry(monkeypatch, capsys):
    import sqlalchemy.exc as sa_exc

    from nas import sweep

    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = []

    def flaky(x, times=2):
        calls.append(x)
        if len(calls) <= times:
            raise sa_exc.OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))
        return 2 * x

    assert sweep.with_db_retry("trial 7", flaky, 21) == 42
    assert len(calls) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["trial 7: database unreachable (OperationalError); retrying in 1 s",
                     "trial 7: database unreachable (OperationalError); retrying in 2 s"]

    calls.clear()
    monkeypatch.setenv("NAS_DB_RETRY", "0")  # no waiting: the database error itself
    with pytest.raises(sa_exc.OperationalError):
        sweep.with_db_retry("trial 7", flaky, 1)
    assert len(calls) == 1

    calls.clear()
    monkeypatch.delenv("NAS_DB_RETRY")
    with pytest.raises(ValueError, match="not a database error"):  # other errors are never retried
        sweep.with_db_retry("trial 7", lambda: calls.append(0) or (_ for _ in ()).throw(ValueError("not a database error")))
    assert calls == [0]

    monkeypatch.setenv("NAS_DB_RETRY", "soon")
    with pytest.raises(NasError, match=r"^NAS_DB_RETRY: expected seconds, got 'soon'$"):
        sweep.with_db_retry("trial 7", flaky, 1)
    monkeypatch.setenv("NAS_DB_RETRY", "-1")
    with pytest.raises(NasError, match=r"^NAS_DB_RETRY: expected >= 0 seconds, got -1$"):
        sweep.db_retry_seconds()


@pytest.mark.parametrize("raw,msg", [("1.5", "expected whole seconds, got '1.5'"), ("0", "expected >= 1 second, got 0")])
def test_bad_heartbeat_is_named(monkeypatch, raw, msg):
    from nas import sweep

    monkeypatch.setenv("NAS_OPTUNA_HEARTBEAT", raw)
    with pytest.raises(NasError, match=rf"^NAS_OPTUNA_HEARTBEAT: {msg}$"):
        sweep.heartbeat_interval()
    monkeypatch.setenv("NAS_OPTUNA_HEARTBEAT", "7")
    assert sweep.heartbeat_interval() == 7

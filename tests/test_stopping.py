"""SIGTERM and SIGINT end a command or a flow within 10 s: workers and threads stopped, checkpoints
intact, tracking runs KILLED, one line saying how to go on."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, nb201_table

from nas import stopping

pytestmark = pytest.mark.slow


def test_a_stop_reaches_other_threads_at_their_next_batch():
    """The flag a signal sets stops a thread that no signal can interrupt, and names the signal."""
    stopping.reset()
    seen: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10_000):
                stopping.check()
                time.sleep(0.001)
        except stopping.Stopped as exc:
            seen.append(exc)

    t = threading.Thread(target=work)
    t.start()
    stopping.ask("SIGTERM")
    t.join(5)
    stopping.reset()
    assert not t.is_alive() and len(seen) == 1 and str(seen[0]) == "SIGTERM"
    assert stopping.status(None) == "FINISHED" and stopping.status(seen[0]) == "KILLED"
    assert stopping.status(KeyboardInterrupt()) == "KILLED" and stopping.status(ValueError()) == "FAILED"


def test_a_signal_inside_a_shielded_call_stops_when_the_call_returns():
    """A SIGTERM during a write to a local tracking database is raised after the write, never inside
    it; the clean-up that follows (ending the run KILLED, shielded too) is not interrupted again."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stopping.reset()
    stopping.install()
    try:
        done = []
        with pytest.raises(stopping.Stopped, match="SIGTERM"):
            with stopping.shielded():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(100):  # the handler runs between two bytecodes of this loop
                    time.sleep(0.001)
                done.append("the call ran to its end")
        assert done == ["the call ran to its end"]
        with stopping.shielded():
            done.append("clean-up")
        assert done[-1] == "clean-up"
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        stopping.reset()


def _start(cmd: list[str], tmp_path: Path, **env: str) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(REPO), "NAS_NB201_TABLE": str(nb201_table(tmp_path)),
            "OMP_NUM_THREADS": "1", **env}
    # output to files: a pipe nobody reads while the test waits would fill and block the command
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=full, stdout=open(tmp_path / "stdout.txt", "w"),  # noqa: SIM115
                            stderr=open(tmp_path / "stderr.txt", "w"), text=True, start_new_session=True)  # noqa: SIM115
    proc.err_path = tmp_path / "stderr.txt"
    return proc


def _wait_for(proc: subprocess.Popen, found, what: str, limit: float = 240.0) -> None:
    t0 = time.monotonic()
    while not found():
        assert proc.poll() is None, f"ended before {what}: {proc.err_path.read_text()[-3000:]}"
        assert time.monotonic() - t0 < limit, f"no {what} after {limit:.0f} s"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen, sig: int) -> tuple[float, str, float]:
    """Send ``sig`` to the process alone (not its group): the seconds until it ended, its stderr,
    and the seconds until its last line (``stopped by ...``) appeared."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    said = None
    while proc.poll() is None and time.monotonic() - t0 < 30:
        if said is None and "stopped by" in proc.err_path.read_text():
            said = time.monotonic() - t0
        time.sleep(0.1)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"still running 30 s after the signal: {proc.err_path.read_text()[-3000:]}")
    ended = time.monotonic() - t0
    return ended, proc.err_path.read_text(), ended if said is None else said


def _runs(db: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=db)
    return client.search_runs([client.get_experiment_by_name("nas").experiment_id])


def _alive(pids: list[int], within: float = 10.0) -> list[str]:
    """The processes of ``pids`` still running ``within`` seconds from now (zombies excepted), as
    their command lines."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and _running(pids):
        time.sleep(0.2)
    return _running(pids)


def _running(pids: list[int]) -> list[str]:
    import psutil

    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):  # gone meanwhile
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(" ".join(proc.cmdline()))
    return alive


def test_nas_search_stops_on_sigterm_keeps_its_checkpoint_and_ends_its_run_killed(tmp_path):
    from nas.runs.files import torch_load

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nas.cli", "search", "--dataset", "digits", "--epochs", "200", "--out", str(out),
           "--set", "channels=4", "--set", "cells=1", "--set", f"cache_dir={tmp_path / 'cache'}"]
    proc = _start(cmd, tmp_path, NAS_MLFLOW="1", MLFLOW_TRACKING_URI=db)
    _wait_for(proc, (out / "checkpoint.pt").is_file, "checkpoint")
    seconds, err, _ = _stop(proc, signal.SIGTERM)
    assert proc.returncode == 130 and seconds < 10, (proc.returncode, seconds, err)
    assert err.strip().splitlines()[-1] == (
        "nas search: stopped by SIGTERM; rerun it with --resume to go on from the last checkpoint")
    assert "Traceback" not in err
    ck = torch_load(out / "checkpoint.pt")
    assert 1 <= ck["epoch"] < 200
    [run] = _runs(db)
    assert run.info.status == "KILLED"


def test_nas_grid_stops_on_sigint_with_its_worker_processes(tmp_path):
    import psutil

    proto = tmp_path / "proto.yaml"
    proto.write_text(yaml.safe_dump({
        "search": {"dataset": "digits", "space": "nb201", "epochs": 200, "channels": 4, "cells": 1, "batch_size": 32,
                   "cache_dir": str(tmp_path / "cache")},
        "select": {"pt_tune_epochs": 0, "pt_batches": 1},
        "grid": {"methods": ["darts", "snas"], "seeds": [1], "selections": ["magnitude"]}}))
    cmd = [sys.executable, "-m", "nas.cli", "grid", "--protocol", str(proto), "--out", str(tmp_path / "g"),
           "--report", str(tmp_path / "rep"), "--workers", "2"]
    proc = _start(cmd, tmp_path, NAS_MLFLOW="0")
    _wait_for(proc, lambda: len(list((tmp_path / "g").glob("*/search/checkpoint.pt"))) == 2, "two checkpoints")
    workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(workers) >= 2
    seconds, err, _ = _stop(proc, signal.SIGINT)
    assert proc.returncode == 130 and seconds < 10, (proc.returncode, seconds, err)
    assert err.strip().splitlines()[-1].startswith("nas grid: stopped by SIGINT; rerun the same command")
    assert _alive(workers) == []


@pytest.mark.parametrize("runner,sig", [("thread", signal.SIGINT), ("dask", signal.SIGTERM)])
def test_a_sweep_stops_within_seconds_with_its_trials_killed_in_mlflow(runner, sig, tmp_path):
    import psutil

    doc = {"prepare": {"dataset": "digits"},
           "search": {"dataset": "digits", "space": "nb201", "method": "drnas", "epochs": 500, "channels": 4,
                      "cells": 1, "batch_size": 32, "steps_per_epoch": 4, "hessian_every": 0},
           "select": {"method": "magnitude"}, "retrain": {"dataset": "digits", "space": "nb201"}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(doc))
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "flows.sweep", "--method", "drnas", "--mode", "benchmark", "--pruner", "none",
           "--params", "tiny.yaml", "--n-trials", "2", "--parallel", "2", "--runner", runner,
           "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--out", str(tmp_path / "out")]
    proc = _start(cmd, tmp_path, NAS_MLFLOW="1", MLFLOW_TRACKING_URI=db, PREFECT_HOME=str(tmp_path / "ph"))
    _wait_for(proc, lambda: len(list((tmp_path / "out").rglob("checkpoint.pt"))) == 2, "two trials' checkpoints")
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    seconds, err, said = _stop(proc, sig)
    # trial threads stop at their next batch (the line after about 2 s here); a Dask worker is given
    # 4 s by its nanny before it is killed (the line after about 5 s).  The process then waits for
    # the graceful shutdown of the temporary Prefect server it started (up to 5 s; none with a
    # Prefect server of one's own, PREFECT_API_URL)
    assert proc.returncode == 130 and said < 10 and seconds < 20, (said, seconds, err[-3000:])
    assert f"python -m flows.sweep: stopped by {signal.Signals(sig).name}; finished trials stay in the study" in err
    assert "Traceback" not in err and "terminate called" not in err
    assert _alive(children) == []
    runs = {r.data.tags["stage"] + r.data.tags.get("trial", ""): r.info.status for r in _runs(db)}
    assert runs == {"sweep": "KILLED", "trial0": "KILLED", "trial1": "KILLED"}

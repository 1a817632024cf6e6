"""``cluster.json`` names services, ports and processes, never something to execute; stopping a
service signals only the process the cluster started."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, TINY_PIPELINE

from nas.cluster import Cluster, _started
from nas.utils import NasError


def _write(root, doc):
    root.mkdir(parents=True, exist_ok=True)
    (root / "cluster.json").write_text(json.dumps(doc) if not isinstance(doc, bytes) else "")
    if isinstance(doc, bytes):
        (root / "cluster.json").write_bytes(doc)


@pytest.mark.parametrize("doc,message", [
    ({"services": ["postgres"], "postgres": {"port": 5432, "data": "X", "run_as": ["sh", "-c", "touch pwned"]}},
     "key 'postgres' has an unknown field 'run_as'"),
    ({"services": ["mlflow"], "mlflow": {"port": 5000, "cmd": ["sh", "-c", "touch pwned"]}},
     "key 'mlflow' has an unknown field 'cmd'"),
    ({"services": ["mlflow"], "mlflow": {"port": 99999}}, "mlflow.port expects an integer in [1, 65535]"),
    ({"services": ["mlflow"], "mlflow": {"port": 5000, "pid": "1"}}, "mlflow.pid expects an integer"),
    ({"services": ["evil"], "evil": {}}, "unknown key 'evil'"),
    ({"services": ["mlflow"]}, "service 'mlflow' is listed but has no entry"),
    ({"services": "mlflow"}, "key 'services' expects a list"),
    ([1, 2], "not a cluster state (expected a JSON object)"),
    ({"services": ["postgres"], "postgres": {"port": 5432, "data": "/etc"}}, "postgres.data '/etc' is outside"),
    (b"\xff\xfe{", "not valid JSON (not UTF-8 text)"),
])
def test_a_damaged_or_hostile_state_file_is_refused_in_one_line(tmp_path, doc, message):
    _write(tmp_path / "c", doc)
    with pytest.raises(NasError) as info:
        Cluster(tmp_path / "c")
    text = str(info.value)
    assert message in text and "cluster.json" in text and "\n" not in text
    assert not (tmp_path / "c" / "pwned").exists()


def test_down_never_signals_a_process_it_did_not_start(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        # the recorded pid is another process's (its start time differs), or no start time at all
        _write(tmp_path / "c", {"services": ["mlflow", "prefect"], "mlflow": {"port": 5000, "pid": other.pid,
                                                                               "started": 1.0},
                                "prefect": {"port": 5001, "pid": other.pid}})
        Cluster(tmp_path / "c").down(quiet=True)
        assert other.poll() is None  # still running
        # the process the cluster did start is stopped
        _write(tmp_path / "c", {"services": ["mlflow"], "mlflow": {"port": 5000, "pid": other.pid,
                                                                   "started": _started(other.pid)}})
        Cluster(tmp_path / "c").down(quiet=True)
        assert other.wait(timeout=20) is not None
    finally:
        if other.poll() is None:
            other.kill()


@pytest.mark.parametrize("flags,message", [
    (["--timeout", "-1"], "--timeout: expected 1 to 3600 seconds, got -1.0"),
    (["--timeout", "nan"], "--timeout: expected 1 to 3600 seconds, got nan"),
    (["--workers", "0"], "--workers: expected 1 to 64, got 0"),
    (["--root", " "], "--root: expected a folder, got an empty string"),
])
def test_cluster_up_checks_its_flags_before_starting_anything(tmp_path, capsys, flags, message):
    from nas.cli import main

    root = tmp_path / "c"
    args = ["cluster", "up", "--root", str(root), *flags] if "--root" not in flags else ["cluster", "up", *flags]
    assert main(args) != 0
    assert message in capsys.readouterr().err
    assert not root.exists()


@pytest.mark.slow
def test_a_remote_cluster_refuses_stores_that_are_files_on_the_client(tmp_path):
    """Checked on the client before anything starts (no cluster needed: the address is never reached)."""
    doc = {k: dict(v) for k, v in TINY_PIPELINE.items()}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(doc))
    scrub = ("MLFLOW_TRACKING_URI", "NAS_OPTUNA_STORAGE", "PREFECT_API_URL", "PREFECT_HOME")
    env = {k: v for k, v in os.environ.items() if k not in scrub}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "ph"))
    cmd = [sys.executable, "-m", "flows.sweep", "--method", "drnas", "--params", "tiny.yaml", "--runner", "dask",
           "--address", "tcp://127.0.0.1:9", "--storage", f"sqlite:///{tmp_path / 'o.db'}"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == (
        f"python -m flows.sweep: error: storage: sqlite:///{tmp_path / 'o.db'} is a file on this machine; the workers "
        f"of a Dask cluster need a database server they all reach (--storage postgresql://USER@HOST:PORT/DB)")


def test_a_relative_data_path_is_resolved_on_the_client_before_any_trial(tmp_path, monkeypatch):
    """``--set search.data=mydata`` names a file under the client's folder: every trial gets its
    absolute path (a worker in another folder reads the same file); one not there is refused."""
    from flows.sweep import check_trial_configs

    doc = {k: dict(v) for k, v in TINY_PIPELINE.items()}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "my data").mkdir()
    monkeypatch.chdir(tmp_path)
    sets = ["search.data=my data", "prepare.data=my data"]
    resolved = check_trial_configs("drnas", "benchmark", "tiny.yaml", sets)
    want = json.dumps(str(tmp_path / "my data"))
    assert resolved == [*sets, f"prepare.data={want}", f"search.data={want}"]
    from nas import config as config_mod

    configs = config_mod.pipeline_configs("tiny.yaml", "o", resolved, method="drnas")
    assert configs["search"].data == configs["prepare"].data == str(tmp_path / "my data")
    assert check_trial_configs("drnas", "benchmark", "tiny.yaml", None) == []  # no data path: nothing added
    with pytest.raises(NasError) as exc:
        check_trial_configs("drnas", "benchmark", "tiny.yaml", ["search.data=gone", "prepare.data=gone"])
    assert str(exc.value) == (f"prepare.data: 'gone' is not under the client's folder {tmp_path}; give a path that "
                              f"exists there, or an absolute path that every worker reads")


def test_local_dask_clusters_start_without_the_dashboard_diagnostics_unless_the_user_sets_them(monkeypatch):
    import dask

    from nas.cluster import quiet_dask

    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    monkeypatch.setattr(os, "environ", {**env, "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "40ms"})
    try:
        quiet_dask()
        assert dask.config.get("distributed.worker.profile.enabled") is False
        assert dask.config.get("distributed.admin.system-monitor.interval") == "2s"
        assert dask.config.get("distributed.admin.tick.interval") == "40ms"  # the user's own setting wins
    finally:
        monkeypatch.undo()
        dask.config.refresh()
    assert dask.config.get("distributed.worker.profile.enabled") is True

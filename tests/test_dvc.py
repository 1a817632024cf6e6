"""`dvc repro` of the project's dvc.yaml in a temporary git repository with tiny params."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY_PIPELINE

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, **extra: str) -> str:
    p = _proc(cmd, cwd, **extra)
    return p.stdout + p.stderr


def _proc(cmd: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **extra, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout}\n{p.stderr}"
    return p


def test_dvc_repro_metrics_params_plots(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for item in ("dvc.yaml", "nas", ".dvcignore"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / item)
    shutil.copytree(REPO / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    (repo / "data" / "raw").mkdir(parents=True)
    shutil.copy(REPO / "data" / "raw" / "README.md", repo / "data" / "raw" / "README.md")
    doc = {k: dict(v) for k, v in TINY_PIPELINE.items()}
    for sec in ("prepare", "search", "retrain"):
        doc[sec]["cache_dir"] = "data/prepared/pipeline"
    (repo / "params").mkdir()
    (repo / "params" / "pipeline.yaml").write_text(yaml.safe_dump(doc))
    _run(["git", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "init"], repo)

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = _run(["dvc", "repro"], repo, NAS_MLFLOW="1", MLFLOW_TRACKING_URI=db)
    for stage in ("prepare", "search", "select", "retrain", "evaluate"):
        assert f"Running stage '{stage}'" in out
    # `prepare` writes the same bytes on any machine (no archive name, timestamp or ordering that
    # differs): this fresh repository records the very prepared data that the committed lock (made on
    # another machine, with the same prepare section) holds, so every clone can share DVC's run cache
    fresh = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["prepare"]
    committed = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]["prepare"]
    assert committed["outs"] == fresh["outs"]
    # `dvc repro` is tracked in MLflow: one finished run per stage command, tagged source=dvc, and
    # the evaluate run carries the pipeline's key results
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=db)
    runs = client.search_runs([client.get_experiment_by_name("nas").experiment_id])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert set(by_stage) == {"search", "select", "retrain", "evaluate"}
    assert {r.data.tags["source"] for r in runs} == {"dvc"} and {r.info.status for r in runs} == {"FINISHED"}
    assert by_stage["evaluate"].info.run_name.startswith("evaluate-darts-magnitude-nb201-s0-")
    assert by_stage["evaluate"].data.metrics["nb201_cifar10"] > 0
    metrics = json.loads((repo / "reports" / "pipeline" / "metrics.json").read_text())
    assert 0 <= metrics["test_acc"] <= 1 and metrics["nb201"]["cifar10"] > 0
    assert all(isinstance(v, (int, float, dict)) for v in metrics.values())  # numbers only: no strings
    summary = json.loads((repo / "reports" / "pipeline" / "summary.json").read_text())
    assert summary["method"] == "darts" and summary["test_acc"] == metrics["test_acc"]
    for name in ("alpha", "eigenvalue", "search_accuracy", "retrain_accuracy", "retrain_loss"):  # render offline
        assert (repo / "reports" / "pipeline" / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    alpha = (repo / "reports" / "pipeline" / "plots" / "alpha.csv").read_text().splitlines()
    assert alpha[0].startswith("epoch,none,skip_connect") and len(alpha) == 1 + 3
    assert len((repo / "reports" / "pipeline" / "plots" / "eigenvalue.csv").read_text().splitlines()) == 1 + 3
    # accuracies in percent, as MLflow and the command lines show them (10 digit classes: above 1 %)
    acc = (repo / "reports" / "pipeline" / "plots" / "search_accuracy.csv").read_text().splitlines()
    assert acc[0] == "epoch,train_acc,val_acc" and len(acc) == 1 + 3
    values = [float(v) for row in acc[1:] for v in row.split(",")[1:]]
    assert all(1 < v <= 100 for v in values) and abs(100 * summary["search_val_acc"] - values[-1]) < 1e-3

    assert "Data and pipelines are up to date" in _run(["dvc", "repro"], repo)
    # the seconds live beside the outputs (timings.json, out of their hashes), not in them
    timings = json.loads((repo / "reports" / "pipeline" / "timings.json").read_text())
    assert timings["metrics.json"]["search_seconds"] > 0 and "search_seconds" not in metrics
    assert json.loads((repo / "runs" / "dvc" / "search" / "timings.json").read_text())["result.json"]["seconds"] > 0
    # a fresh clone of the same commit, run from scratch, records the same dvc.lock, byte for byte
    _run(["git", "clone", "-q", str(repo), str(tmp_path / "clone")], tmp_path)
    _run(["dvc", "repro"], tmp_path / "clone", NAS_MLFLOW="0")
    assert (tmp_path / "clone" / "dvc.lock").read_text() == (repo / "dvc.lock").read_text()
    ms = _run(["dvc", "metrics", "show"], repo)
    assert "reports/pipeline/metrics.json" in ms and "test_acc" in ms
    # `dvc plots show` writes a page that needs no network: vega, vega-lite and vega-embed inlined
    _run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "<script src=" not in page and "cdn.jsdelivr" not in page
    assert page.count("vegaEmbed(") >= 4 and "vega-lite 5.2.0, from the npm registry" in page

    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "baseline"], repo)
    # an experiment with one changed parameter reruns only what depends on it
    exp = _run(["dvc", "exp", "run", "-S", "params/pipeline.yaml:retrain.epochs=1"], repo)
    assert "Running stage 'retrain'" in exp and "Running stage 'search'" not in exp
    diff = _run(["dvc", "params", "diff"], repo)
    assert "retrain.epochs" in diff and "2" in diff and "1" in diff
    plots = json.loads(_proc(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    assert "reports/pipeline/plots/alpha.png" in plots
    # one colour per op in the α plot, and every axis says what it shows
    alpha_spec = plots["reports/pipeline/plots/alpha.csv"][0]["content"]
    assert alpha_spec["encoding"]["color"]["field"] == "field"
    assert alpha_spec["encoding"]["y"]["title"] == "mean mixing weight (softmax of alpha)"
    assert {r["field"] for r in alpha_spec["data"]["values"]} == {"none", "skip_connect", "nor_conv_1x1",
                                                                  "nor_conv_3x3", "avg_pool_3x3"}
    eig_spec = json.dumps(plots["reports/pipeline/plots/eigenvalue.csv"][0]["content"])
    assert '"title": "top eigenvalue of the Hessian of L_val in alpha"' in eig_spec


@pytest.mark.committed
def test_frozen_benchmark_stages_are_up_to_date_in_the_repository():
    """`dvc status` of the frozen grid stages: the committed reports are the ones their locks record."""
    dvc = Path(sys.executable).parent / "dvc"
    p = subprocess.run([str(dvc), "status", "--json", "benchmark/dvc.yaml"], cwd=REPO,
                       env={**os.environ, "DVC_NO_ANALYTICS": "1"}, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout or "{}") == {}


@pytest.mark.committed
def test_committed_lock_matches_the_code_and_the_readme():
    """The committed dvc.lock was written by `dvc repro` of the code and params as they are now,
    and the docs state what that run found (reports/pipeline/summary.json, committed)."""
    dvc = Path(sys.executable).parent / "dvc"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    p = subprocess.run([str(dvc), "status", "--json", "dvc.yaml"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    status = json.loads(p.stdout or "{}")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    drift = []
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):
                continue
            for path, state in change.get("changed deps", {}).items():
                in_git = any(t == path or t.startswith(path.rstrip("/") + "/") for t in tracked)
                if in_git and state != "deleted":
                    drift.append(f"{stage}: {path} {state}")
    assert not drift, ("dvc.lock is stale; run `dvc repro`, commit dvc.lock and reports/pipeline, and update "
                       f"the pipeline numbers in docs/pipeline/dvc.md: {drift}")
    summary = json.loads((REPO / "reports" / "pipeline" / "summary.json").read_text())
    section = (REPO / "docs" / "pipeline" / "dvc.md").read_text()
    assert f"`{summary['genotype']}`" in section
    assert f"{100 * summary['test_acc']:.2f}% digits test accuracy" in section
    assert f"{summary['nb201']['cifar10']:.2f}% NAS-Bench-201 CIFAR-10 accuracy" in section

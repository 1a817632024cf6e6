"""The picture of a study's comparison page in the MLflow UI (docs/mlflow-comparison.png).

Runs a real four-trial DrNAS study on the embedded digits (NAS-Bench-201 objective, a few seconds
per trial) into a throwaway tracking store, logs it as `python -m flows.sweep` does (the study's
report, its parent run and the comparison page), starts `mlflow server` on loopback and
photographs the parent run's `comparison.html` artifact with chromium through playwright.

    apt-get install -y chromium && .venv/bin/pip install playwright
    .venv/bin/python scripts/screenshot_comparison.py [--out docs/mlflow-comparison.png]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from nas import tracking_stages

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def study(root: Path, uri: str) -> str:
    """Three trials of a DrNAS study, logged as the sweep flow logs them; the parent run's id."""
    from nas import sweep, tracking

    params = root / "params.yaml"
    cache = str(root / "prepared")
    params.write_text(yaml.safe_dump({
        "prepare": {"dataset": "digits", "cache_dir": cache},
        "search": {"dataset": "digits", "space": "nb201", "method": "drnas", "epochs": 6, "channels": 4, "cells": 1,
                   "batch_size": 32, "steps_per_epoch": 8, "seed": 0, "cache_dir": cache},
        "select": {"method": "magnitude"},
        "retrain": {"dataset": "digits", "space": "nb201", "epochs": 2, "channels": 4, "cells": 1, "cache_dir": cache}}))
    storage = f"sqlite:///{root / 'optuna.db'}"
    tracker = tracking.tracker(True, uri=uri)
    parent = tracker.study_run("drnas-benchmark", storage, {"stage": "sweep", "method": "drnas",
                                                           "objective": "benchmark", "selection": "magnitude"})
    for _ in range(4):
        sweep.run_trial(sweep.TrialJob("drnas-benchmark", storage, "drnas", "benchmark", str(params),
                                       out=str(root / "trials"), parent_run=parent, tracking_uri=uri))
    st = sweep.open_study("drnas-benchmark", storage, "drnas", "benchmark")
    rep = sweep.study_report(st, "drnas-benchmark", "drnas", "benchmark", root / "trials")
    tracking_stages.log_study(tracker, parent, rep, {"study": "drnas-benchmark", "storage": storage,
                                                     "objective": "benchmark", "pruner": "median"})
    tracker.end(parent)
    return parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "docs" / "mlflow-comparison.png"))
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    root = Path(tempfile.mkdtemp(prefix="nas-shot-"))
    db = root / "mlflow.db"
    uri = f"sqlite:///{db}"
    os.environ["NAS_MLFLOW"] = "1"
    run_id = study(root, uri)
    from nas.cluster import MLFLOW_SERVER_ENV

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                               "--default-artifact-root", str(root / "mlartifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, **MLFLOW_SERVER_ENV})
    try:
        from mlflow.tracking import MlflowClient
        from playwright.sync_api import sync_playwright

        from nas import tracking

        exp = MlflowClient(uri).get_run(run_id).info.experiment_id
        url = (f"http://127.0.0.1:{port}/#/experiments/{exp}/runs/{run_id}/artifacts/comparison.html"
               f"?{tracking.UI_QUERY}")
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.goto(url, wait_until="load", timeout=120_000)
            page.wait_for_timeout(8000)
            close = page.locator('[aria-label="Close"]')  # the assistant panel, when it opens
            if close.count():
                close.first.click()
                page.wait_for_timeout(1000)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

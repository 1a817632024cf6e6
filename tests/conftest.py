"""Fixtures: tiny datasets in every supported format, generated on the fly."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # each pytest worker computes on one thread
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import contextlib
import io
import pickle
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

# Every server and store the tests touch lives in one temporary folder: Prefect's home and results,
# MLflow's SQLite database, Optuna's; no telemetry.
_STATE = Path(tempfile.mkdtemp(prefix="nas-tests-"))
for _k, _v in {"PREFECT_HOME": _STATE / "prefect", "PREFECT_RESULTS_LOCAL_STORAGE_PATH": _STATE / "prefect-results",
               "MLFLOW_TRACKING_URI": f"sqlite:///{_STATE / 'mlflow.db'}",
               "NAS_OPTUNA_STORAGE": f"sqlite:///{_STATE / 'optuna.db'}", "DO_NOT_TRACK": "1",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
               "DVC_NO_ANALYTICS": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
               # the CLI tracks every stage in MLflow; the tests that check tracking switch it on
               "NAS_MLFLOW": "0",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}.items():
    os.environ[_k] = str(_v)
REPO = Path(__file__).resolve().parent.parent


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_cifar_archive(path: Path, kind: str = "cifar10", per_batch: int = 20, seed: int = 0) -> dict:
    """A CIFAR python archive in the official layout with ``per_batch`` images per batch."""
    rng = np.random.default_rng(seed)
    n_cls = 10 if kind == "cifar10" else 100
    blobs: dict[str, bytes] = {}
    labels_all = {}
    if kind == "cifar10":
        folder = "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for n in names:
            labels = rng.integers(0, n_cls, per_batch).tolist()
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels_all[n] = labels
            blobs[n] = pickle.dumps({b"batch_label": n.encode(), b"labels": labels, b"data": data,
                                     b"filenames": [b"x.png"] * per_batch}, protocol=2)
        blobs["batches.meta"] = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(n_cls)],
                                              b"num_vis": 3072}, protocol=2)
    else:
        folder = "cifar-100-python"
        for n, count in (("train", per_batch * 5), ("test", per_batch)):
            labels = rng.integers(0, n_cls, count).tolist()
            labels_all[n] = labels
            data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
            blobs[n] = pickle.dumps({b"fine_labels": labels, b"coarse_labels": [0] * count, b"data": data},
                                    protocol=2)
        blobs["meta"] = pickle.dumps({b"fine_label_names": [f"f{i}".encode() for i in range(n_cls)],
                                      b"coarse_label_names": [b"c"] * 20}, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        for n, b in blobs.items():
            _add_bytes(tar, f"{folder}/{n}", b)
    return labels_all


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_image_folder(root: Path, classes=("cat", "dog", "eel"), per_class=(6, 3), size=12, seed=0) -> Path:
    """``root/{train,test}/<class>/*.png`` with class-dependent mean colour."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for ci, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                arr = np.clip(rng.normal(60 + 60 * ci, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                (d / f"{k:03d}.png").write_bytes(_png(arr))
    return root


def tar_folder(src: Path, dst: Path, arcname: str = "imgs") -> Path:
    with tarfile.open(dst, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return dst


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def tiny_search(tmp_path: Path):
    """Overrides for a search that takes about a second on digits."""
    def make(**kw):
        base = dict(dataset="digits", cache_dir=str(tmp_path / "cache"), epochs=2, channels=4, cells=1,
                    batch_size=32, steps_per_epoch=4, out=str(tmp_path / "run"), device="cpu", progress=False)
        base.update(kw)
        return base
    return make


# Servers that a file's tests share start with the first of those tests and stop after the last: not
# at the end of the session, where they would have idled (taking CPU from the other workers) since.
# A session fixture would keep them to the end; a module one would restart them whenever xdist ran
# another file's test on this worker in between.
_SHARED: dict[str, tuple[contextlib.ExitStack, object]] = {}


def shared_servers(name: str, start) -> object:
    """The value of the context manager ``start()``, entered by the first test that asks for ``name``
    and exited after the last test in a row of this file that does (see pytest_runtest_teardown)."""
    if name not in _SHARED:
        stack = contextlib.ExitStack()
        _SHARED[name] = (stack, stack.enter_context(start()))
    return _SHARED[name][1]


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    for name in list(_SHARED):
        if nextitem is None or (name not in nextitem.fixturenames and nextitem.module is not item.module):
            _SHARED.pop(name)[0].close()


@pytest.fixture
def prefect_server():
    """Prefect's test harness: a temporary local server (SQLite) for the tests that use it; the first
    start on an empty home can take a minute on 2 cores."""
    from prefect.testing.utilities import prefect_test_harness

    return shared_servers("prefect_server", lambda: prefect_test_harness(server_startup_timeout=300))


TINY_PIPELINE = {
    "prepare": {"dataset": "digits"},
    "search": {"dataset": "digits", "space": "nb201", "method": "darts", "epochs": 3, "channels": 4, "cells": 1,
               "batch_size": 32, "steps_per_epoch": 4, "hessian_every": 1, "seed": 0},
    "select": {"method": "magnitude"},
    "retrain": {"dataset": "digits", "space": "nb201", "epochs": 2, "channels": 4, "cells": 1, "batch_size": 64,
                "lr": 0.05, "seed": 0},
}


@pytest.fixture
def tiny_params(tmp_path: Path):
    """A params file for the pipeline that runs in seconds, with its own prepared-data folder."""
    def make(name: str = "pipeline.yaml", **sections) -> Path:
        doc = {k: dict(v) for k, v in TINY_PIPELINE.items()}
        for sec, vals in sections.items():
            doc[sec].update(vals)
        cache = str(tmp_path / "prepared")
        for sec in ("prepare", "search", "retrain"):
            doc[sec].setdefault("cache_dir", cache)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc))
        return path
    return make


class Killed(Exception):
    """Raised from a callback: the run stops as if killed."""


def killed_then_resumed(run, cfg, at: int, **kw):
    """Run ``run(cfg, callback=...)`` until its state reaches epoch ``at``, stop it there as if
    killed, then ``run(cfg, resume=True)`` and return that result."""
    def kill(state):
        if state.epoch == at:
            raise Killed

    try:
        run(cfg, callback=kill, **kw)
    except Killed:
        return run(cfg, resume=True, **kw)
    raise AssertionError(f"the run finished without reaching epoch {at}")


def one_line(exc: BaseException) -> str:
    """The message of a refusal, asserted to be one short line."""
    msg = str(exc)
    assert "\n" not in msg and len(msg) <= 300, f"not one short line ({len(msg)} chars): {msg[:400]}"
    return msg


def scfg(tiny_search, **kw):
    """A search config of the tiny test settings (``tiny_search`` fixture) with ``kw``."""
    from nas.config import build_config

    return build_config("search", overrides=tiny_search(**kw))


def nb201_table(tmp_path: Path) -> Path:
    """A NAS-Bench-201 table with every architecture (the shared one when present, else made up)."""
    src = REPO.parent / "shared" / "benchmarks" / "nb201_test_acc.csv"
    if src.is_file():
        return src
    import itertools

    from nas.spaces import nb201

    path = tmp_path / "nb201.csv"
    lines = ["arch,cifar10_test,cifar100_test,imagenet16_120_test"]
    for k, ops in enumerate(itertools.product(nb201.OPS, repeat=6)):
        lines.append(f"{nb201.format_genotype(ops)},{50 + k % 40},{30 + k % 40},{10 + k % 30}")
    path.write_text("\n".join(lines) + "\n")
    return path


def pytest_runtest_logreport(report):
    """With NAS_TEST_TIMELINE=FILE, one JSON line per test phase (worker, test, phase, start, stop,
    and the worker's CPU seconds so far, its own and its ended subprocesses'): where each worker's
    time and the machine's CPU go, for balancing the suite across the cores."""
    path = os.environ.get("NAS_TEST_TIMELINE")
    if path and not hasattr(report, "node"):  # written where the test ran, not again by xdist's controller
        import json

        t = os.times()
        line = {"worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "test": report.nodeid,
                "phase": report.when, "start": report.start, "stop": report.stop,
                "cpu": t.user + t.system, "child_cpu": t.children_user + t.children_system}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


# The fast tier (`bash scripts/test.sh --fast`, `pytest -m fast`): the files whose tests train
# nothing beyond a few tensors, start no subprocess and no server; their `slow` tests aside.
FAST_FILES = {"test_config.py", "test_structure.py", "test_schemas.py", "test_runs.py", "test_timings.py",
              "test_methods.py", "test_supernet.py", "test_benchmarks.py", "test_nb201.py", "test_docs.py",
              "test_second_order.py", "test_naswot.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in FAST_FILES and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)

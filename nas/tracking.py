"""MLflow tracking of the pipeline: one parent run per pipeline run, a nested run per stage.

The tracking store is a local SQLite database by default (``runs/mlflow.db``, artifacts beside it
in ``runs/mlartifacts``); ``MLFLOW_TRACKING_URI`` points it elsewhere (a shared server database for
several machines).  ``NAS_MLFLOW=0`` switches tracking off.  Everything goes through explicit run
ids (``MlflowClient``), so stages may log from worker threads or processes.

What a search run holds: its config as params; per-epoch metrics with steps (losses, accuracies,
the dominant eigenvalue, per-edge entropy and max weight, the skip-connection weight), each epoch
sent as one batch; the α history (``alpha_history.npz``: α and the mixing weights per epoch) and
its heatmap; the Hessian spectra; the genotype (JSON and a picture of the cell); the NB201 lookup.
A retrain run holds its metrics per epoch and the trained model.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas.utils import code_version

DEFAULT_DB = Path("runs") / "mlflow.db"
EXPERIMENT = "nas"


def disable_telemetry() -> None:
    """No usage reporting from MLflow, Prefect or DVC started by this process."""
    for key, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1"),
                       ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DVC_NO_ANALYTICS", "1"),
                       ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")):
        os.environ.setdefault(key, value)


def enabled() -> bool:
    if os.environ.get("NAS_MLFLOW", "1").lower() in ("0", "false", "off", "no"):
        return False
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{DEFAULT_DB.resolve()}"


def _store_lock(uri: str) -> Any:
    """A file lock beside a SQLite database (``<db>.lock``); no lock for other stores."""
    from contextlib import nullcontext

    if not uri.startswith("sqlite:///"):
        return nullcontext()
    from filelock import FileLock

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db) + ".lock")


class Tracker:
    """A thin wrapper of ``MlflowClient`` with the project's run layout and tags."""

    def __init__(self, uri: str | None = None, experiment: str | None = None):
        disable_telemetry()
        from mlflow.tracking import MlflowClient

        self.uri = uri or tracking_uri()
        with _store_lock(self.uri):
            # the first use of a SQLite store creates and migrates its schema: one process at a time,
            # or concurrent first users crash in the migration ("duplicate column name")
            self._open(MlflowClient, experiment)

    def _open(self, client_cls: Any, experiment: str | None) -> None:
        self.client = client_cls(tracking_uri=self.uri)
        name = experiment or os.environ.get("NAS_MLFLOW_EXPERIMENT", EXPERIMENT)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:///"):
                location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
            try:  # tagged as model development, so that the UI opens on the runs table
                self.experiment_id = self.client.create_experiment(
                    name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"})
            except Exception:  # created meanwhile by another process
                self.experiment_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            self.experiment_id = exp.experiment_id

    # ------------------------------------------------------------------ runs
    def start(self, name: str, tags: dict[str, Any] | None = None, parent: str | None = None) -> str:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        all_tags = {MLFLOW_RUN_NAME: name, "code_version": code_version()}
        all_tags.update({k: str(v) for k, v in (tags or {}).items() if v is not None})
        if parent:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        return run.info.run_id

    def end(self, run_id: str, ok: bool = True) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def url(self, run_id: str) -> str:
        return f"#/experiments/{self.experiment_id}/runs/{run_id}"

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            if v is not None:
                self.client.set_tag(run_id, k, str(v))

    def log_json(self, run_id: str, obj: Any, name: str, folder: str | None = None) -> None:
        self.log_bytes(run_id, (json.dumps(obj, indent=2) + "\n").encode(), name, folder)

    def log_bytes(self, run_id: str, data: bytes, name: str, folder: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.client.log_artifact(run_id, str(path), folder)

    def log_file(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    # ---------------------------------------------------------- stage content
    def epoch_logger(self, run_id: str) -> Callable[[dict[str, Any]], None]:
        """A callback for one search epoch's record: all of its scalars in one batch."""
        def log(record: dict[str, Any]) -> None:
            self.log_metrics(run_id, epoch_metrics(record), step=int(record["epoch"]))

        return log

    def log_search(self, run_id: str, result: dict[str, Any], live: bool = False) -> None:
        """Params, tags, (per-epoch metrics unless they were logged live), α history with heatmap,
        Hessian spectra, genotype with a picture of its cell, NB201 lookup."""
        cfg = result.get("config", {})
        self.log_params(run_id, {f"search.{k}": v for k, v in cfg.items()})
        self.set_tags(run_id, {"method": result.get("method"), "space": result.get("space"),
                               "dataset": cfg.get("dataset"), "seed": cfg.get("seed"),
                               "selection": result.get("selection")})
        if not live:
            for rec in result.get("history", []):
                self.log_metrics(run_id, epoch_metrics(rec), step=int(rec["epoch"]))
        self.log_metrics(run_id, {"search_seconds": result.get("seconds", 0.0)})
        hist = result.get("history", [])
        if hist and "weights" in hist[0]:
            self.log_bytes(run_id, alpha_history_npz(hist), "alpha_history.npz", "alpha")
            self.log_bytes(run_id, alpha_heatmap_png(result), "alpha_heatmap.png", "alpha")
        if "hessian" in result:
            self.log_json(run_id, result["hessian"], "hessian_spectra.json", "hessian")
        self.log_genotype(run_id, result["space"], result["genotype"], folder="genotype")
        look = nb201_lookup(result["space"], result["genotype"])
        if look:
            self.log_json(run_id, look, "nb201_lookup.json", "genotype")
            self.log_metrics(run_id, {f"nb201_{d}": v for d, v in look["all_datasets"].items()})

    def log_genotype(self, run_id: str, space: str, genotype: str, folder: str = "genotype") -> None:
        from nas.spaces import get_space

        sp = get_space(space)
        geno = sp.parse_genotype(genotype)
        self.log_json(run_id, {"space": space, "genotype": genotype,
                               **({"genotype_json": sp.genotype_json(geno)} if sp.genotype_json else {})},
                      "genotype.json", folder)
        self.log_bytes(run_id, cell_png(space, genotype), "cell.png", folder)

    def log_retrain(self, run_id: str, result: dict[str, Any], model_path: str | Path | None = None) -> None:
        cfg = result.get("config", {})
        self.log_params(run_id, {f"retrain.{k}": v for k, v in cfg.items()})
        self.set_tags(run_id, {"space": result.get("space"), "dataset": cfg.get("dataset"), "seed": cfg.get("seed")})
        for rec in result.get("history", []):
            self.log_metrics(run_id, {k: v for k, v in rec.items() if k != "epoch"}, step=int(rec["epoch"]))
        self.log_metrics(run_id, {"test_acc": result["test_acc"], "test_loss": result["test_loss"],
                                  "params": result["params"], **({"val_acc": result["val_acc"]}
                                                                 if "val_acc" in result else {})})
        if model_path is not None and Path(model_path).is_file():
            self.log_file(run_id, model_path, "model")


# ------------------------------------------------------------------------------------- helpers
SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "w_lr", "hessian_eig", "skip_weight_mean",
           "perturb_epsilon", "seconds", "tau")


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    out = {k: float(record[k]) for k in SCALARS if isinstance(record.get(k), (int, float))}
    for i, v in enumerate(record.get("edge_entropy", []) or []):
        out[f"edge_entropy/{i}"] = float(v)
    for i, v in enumerate(record.get("edge_max_weight", []) or []):
        out[f"edge_max_weight/{i}"] = float(v)
    return out


def alpha_history_npz(history: list[dict[str, Any]]) -> bytes:
    """α and the mixing weights of every epoch as arrays ``[epochs, edges, ops]``."""
    import numpy as np

    buf = io.BytesIO()
    arrays = {"epoch": np.array([h["epoch"] for h in history])}
    for key in ("alpha", "weights"):
        if all(key in h for h in history) and len({np.shape(h[key]) for h in history}) == 1:
            arrays[key] = np.array([h[key] for h in history], dtype=np.float32)
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_bytes(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _plt().close(fig)
    return buf.getvalue()


def alpha_heatmap_png(result: dict[str, Any]) -> bytes:
    """Mixing weight of each op (rows) over the epochs (columns), mean over edges, beside the
    final per-edge weights."""
    import numpy as np

    plt = _plt()
    hist = [h for h in result["history"] if "weights" in h]
    ops = result.get("ops") or [str(i) for i in range(len(hist[0]["weights"][0]))]
    width = max(len(h["weights"][0]) for h in hist)
    mean = np.array([np.mean(np.array(h["weights"]), axis=0) if len(h["weights"][0]) == width
                     else np.full(width, np.nan) for h in hist]).T
    final = np.array(result["weights"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    im = axes[0].imshow(mean, aspect="auto", cmap="viridis", vmin=0, vmax=max(1e-6, float(np.nanmax(mean))))
    axes[0].set_yticks(range(len(ops)), ops if len(ops) == width else range(width), fontsize=7)
    axes[0].set_xlabel("epoch")
    axes[0].set_title("mean mixing weight over edges", fontsize=9)
    fig.colorbar(im, ax=axes[0])
    im2 = axes[1].imshow(final.T, aspect="auto", cmap="magma", vmin=0, vmax=1)
    axes[1].set_yticks(range(len(ops)), ops if len(ops) == final.shape[1] else range(final.shape[1]), fontsize=7)
    axes[1].set_xlabel("edge")
    axes[1].set_title("final weights per edge", fontsize=9)
    fig.colorbar(im2, ax=axes[1])
    fig.suptitle(f"{result.get('method')} on {result.get('space')}", fontsize=10)
    return _png_bytes(fig)


def cell_edges(space: str, genotype: str) -> list[tuple[list[tuple[int, int, str]], str]]:
    """The cell(s) of a genotype as (edges (src, dst, op), title)."""
    from nas.spaces import get_space

    sp = get_space(space)
    geno = sp.parse_genotype(genotype)
    if space == "nb201":
        pairs = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
        return [([(s, d, op) for (s, d), op in zip(pairs, geno) if op != "none"], "cell")]
    js = sp.genotype_json(geno)
    cells = []
    for kind in ("normal", "reduce"):
        edges = [(src, 2 + i // 2, op) for i, (op, src) in enumerate(js[kind])]
        cells.append((edges, kind))
    return cells


def cell_png(space: str, genotype: str) -> bytes:
    import math as _m

    plt = _plt()
    cells = cell_edges(space, genotype)
    fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 3.6), dpi=110, squeeze=False)
    for ax, (edges, title) in zip(axes.flat, cells):
        nodes = sorted({n for s, d, _ in edges for n in (s, d)} | ({0, 1, 2, 3} if space == "nb201" else {0, 1}))
        pos = {n: (i, 0.35 * _m.sin(i * 1.3)) for i, n in enumerate(nodes)}
        for n, (x, y) in pos.items():
            ax.add_patch(plt.Circle((x, y), 0.16, color="#4c72b0", zorder=3))
            label = str(n) if space == "nb201" else ({0: "c_k-2", 1: "c_k-1"}.get(n, str(n - 2)))
            ax.text(x, y, label, ha="center", va="center", color="white", fontsize=7, zorder=4)
        for k, (s, d, op) in enumerate(edges):
            (x0, y0), (x1, y1) = pos[s], pos[d]
            rad = 0.25 + 0.12 * (k % 3)
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops=dict(arrowstyle="->", connectionstyle=f"arc3,rad={rad}", lw=1.2,
                                        color="#dd8452" if op == "skip_connect" else "#333333"))
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2 + rad * abs(x1 - x0) / 2
            ax.text(mx, my, op, fontsize=6, ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
        ax.set_xlim(-0.5, len(nodes) - 0.5)
        ax.set_ylim(-1.4, 1.4)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(f"{space} {title}", fontsize=9)
    return _png_bytes(fig)


def nb201_lookup(space: str, genotype: str) -> dict[str, Any] | None:
    from nas.stages import nb201_lookup as lookup

    return lookup(space, genotype)

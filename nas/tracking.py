"""MLflow tracking of the pipeline: one parent run per pipeline run, a nested run per stage.

The tracking store is a local SQLite database by default (``runs/mlflow.db``, artifacts beside it
in ``runs/mlartifacts``); ``MLFLOW_TRACKING_URI`` points it elsewhere (an ``mlflow server`` with proxied
artifacts for several machines).  ``NAS_MLFLOW=0`` switches tracking off.  Everything goes through explicit run
ids (``MlflowClient``), so stages may log from worker threads or processes.

What a search run holds: its config as params; per-epoch metrics with steps (losses, accuracies,
the dominant eigenvalue, per-edge entropy and max weight, the skip-connection weight), each epoch
sent as one batch; the α history (``alpha_history.npz``: α and the mixing weights per epoch) and
its heatmap; the Hessian spectra; the genotype (JSON and a picture of the cell); the NB201 lookup.
A retrain run holds its metrics per epoch and the trained model.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nas import stopping
from nas.drawings import (  # noqa: F401  (part of this module's API)
    OP_COLOURS,
    alpha_heatmap_png,
    alpha_history_npz,
    alpha_lines_png,
    cell_edges,
    cell_png,
    op_means,
)
from nas.utils import code_version, config_digest  # noqa: F401  (config_digest: part of this module's API)

DEFAULT_DB = Path("runs") / "mlflow.db"
# MLflow 3's UI opens on its GenAI pages unless a link asks for the model-training ones
UI_QUERY = "workflowType=machine_learning"
EXPERIMENT = "nas"


def disable_telemetry() -> None:
    """No usage reporting from MLflow, Prefect or DVC started by this process."""
    for key, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1"),
                       ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DVC_NO_ANALYTICS", "1"),
                       ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")):
        os.environ.setdefault(key, value)


# Retries of a request to a tracking server that does not answer: MLflow's own back-off doubles
# from 2 s up to 120 s between tries, so a run whose server came back could sit out another minute.
# Here the pause doubles from 2 s to at most MAX_BACKOFF seconds over RETRIES tries (MLflow allows
# at most 10): about 100 s of outage are ridden out, and at most about 15 s are lost once the
# server is back.
RETRIES, MAX_BACKOFF = 10, 15.0


def bound_retries() -> None:
    """Set the retry policy above for MLflow's HTTP requests in this process (the environment
    variables ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` still
    win when set)."""
    from urllib3.util.retry import Retry

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    # MLflow's retry class caps each pause at urllib3's class-wide default
    Retry.DEFAULT_BACKOFF_MAX = MAX_BACKOFF


def enabled() -> bool:
    if os.environ.get("NAS_MLFLOW", "1").lower() in ("0", "false", "off", "no"):
        return False
    disable_telemetry()  # before mlflow's import, which starts its telemetry client when allowed
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


def tracker(track: bool = True, uri: str | None = None) -> Tracker | NullTracker:
    """An MLflow tracker, or a ``NullTracker`` when tracking is off (``NAS_MLFLOW=0``, no MLflow,
    or ``track=False``).  ``uri`` names the store explicitly (a task on a worker of a cluster gets
    the client's): it is then used whatever this process's environment says."""
    if uri is not None and track:
        return Tracker(uri)
    return Tracker() if track and enabled() else NullTracker()


def client_tracking_uri(track: bool = True) -> str | None:
    """The store a flow's tasks must log to, resolved on the client (None: tracking is off), so
    that a worker elsewhere logs where the flow does, not to a default of its own."""
    return tracking_uri() if track and enabled() else None


def local_store(uri: str) -> bool:
    """Whether a tracking URI names a file on this machine (a SQLite database or a folder)."""
    return uri.startswith(("sqlite", "file:")) or "://" not in uri


@contextmanager
def stage_run(name: str, tags: dict[str, Any], parent: str | None = None, track: bool = True):
    """``(tracker, run_id)`` of a run for one stage (``(NullTracker, None)`` when tracking is off).
    Whatever happens inside, the run ends FINISHED, FAILED or KILLED (stopped), never RUNNING."""
    t = tracker(track)
    run_id = t.start(name, tags, parent=parent)
    try:
        yield t, run_id
    except BaseException as exc:
        t.end(run_id, stopping.status(exc))
        raise
    t.end(run_id)


class _ShieldedClient:
    """An ``MlflowClient`` whose calls a SIGTERM or SIGINT does not cut in the middle
    (``stopping.shielded``): a ``Stopped`` raised inside a SQLite write would leave its transaction
    holding the database's lock, and the run could then not be ended KILLED."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with stopping.shielded():
                return attr(*args, **kwargs)
        return call


class Tracker:
    """A thin wrapper of ``MlflowClient`` with the project's run layout and tags."""

    active = True

    def __init__(self, uri: str | None = None, experiment: str | None = None):
        disable_telemetry()
        bound_retries()
        from mlflow.tracking import MlflowClient

        self.uri = uri or tracking_uri()
        self.log_seconds: dict[str, float] = {}
        with _store_lock(self.uri):
            # the first use of a SQLite store creates and migrates its schema: one process at a time,
            # or concurrent first users crash in the migration ("duplicate column name")
            self._open(MlflowClient, experiment)

    def _open(self, client_cls: Any, experiment: str | None) -> None:
        self.client = client_cls(tracking_uri=self.uri)
        if local_store(self.uri):  # a stop never cuts a write to a local database in the middle
            self.client = _ShieldedClient(self.client)
        name = experiment or os.environ.get("NAS_MLFLOW_EXPERIMENT", EXPERIMENT)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:///"):
                location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
            try:  # tagged as model development, so that the UI opens on the runs table
                self.experiment_id = self.client.create_experiment(
                    name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development", "mlflow.note.content": UNITS})
            except Exception:  # created meanwhile by another process
                self.experiment_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            self.experiment_id = exp.experiment_id

    # ------------------------------------------------------------------ runs
    def start(self, name: str, tags: dict[str, Any] | None = None, parent: str | None = None) -> str:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        all_tags = {MLFLOW_RUN_NAME: name, "code_version": code_version(), "mlflow.note.content": UNITS}
        all_tags.update({k: str(v) for k, v in (tags or {}).items() if v is not None})
        if parent:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        return run.info.run_id

    def study_run(self, study: str, storage: str, tags: dict[str, Any]) -> str:
        """The one parent run of an Optuna study (found by its ``study`` and ``study_storage`` tags),
        reopened; created on the study's first sweep.  Every sweep of the study nests its trials
        under it, so the runs table shows one row per study however many nights it ran."""
        found = self.client.search_runs([self.experiment_id], f"tags.stage = 'sweep' and tags.study = '{quoted(study)}' "
                                        f"and tags.study_storage = '{quoted(storage)}'", max_results=1,
                                        order_by=["attributes.start_time ASC"])
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        return self.start(run_name("sweep", study, tags.get("selection"), digest=config_digest({"storage": storage})),
                          {**tags, "study": study, "study_storage": storage})

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run FINISHED, FAILED or KILLED (``stopping.status`` of how it ended)."""
        self.client.set_terminated(run_id, status)

    def url(self, run_id: str) -> str:
        return f"#/experiments/{self.experiment_id}/runs/{run_id}?{UI_QUERY}"

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

    def rename(self, run_id: str, name: str) -> None:
        """The run's name, once its result is known: the runs table's first column shows it."""
        self.client.update_run(run_id, name=name)

    def log_json(self, run_id: str, obj: Any, name: str, folder: str | None = None) -> None:
        self.log_bytes(run_id, (json.dumps(obj, indent=2) + "\n").encode(), name, folder)

    def log_bytes(self, run_id: str, data: bytes, name: str, folder: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.client.log_artifact(run_id, str(path), folder)

    def log_run_folder(self, run_id: str, folder: str | Path, artifact_path: str = "run") -> None:
        """A finished run folder's results as artifacts (JSON, CSV, YAML, pictures and the last
        checkpoints), so that a run made on another machine can be read back from the tracking server."""
        folder = Path(folder)
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix in (".json", ".csv", ".yaml", ".png", ".pt", ".npz", ".md") \
                    and not p.name.startswith("."):
                rel = p.relative_to(folder).parent.as_posix()
                self.client.log_artifact(run_id, str(p), f"{artifact_path}/{rel}" if rel != "." else artifact_path)

    def log_file(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)


# ------------------------------------------------------------------------------------- helpers
def quoted(value: str) -> str:
    """``value`` as a string literal inside an MLflow search filter (``tags.study = '<here>'``)."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def run_name(stage: str, method: str | None = None, selection: str | None = None, space: str | None = None,
             seed: Any = None, digest: str | None = None) -> str:
    """``pipeline-darts-pt-nb201-s1-3fa2c0``: what tells runs apart in the runs table."""
    parts = [stage, method, selection, space, None if seed is None else f"s{seed}", digest]
    return "-".join(str(p) for p in parts if p not in (None, ""))


def stage_run_name(stage: str, cfg: dict[str, Any], method: str | None = None, selection: str | None = None) -> str:
    """The run name of one stage from its config: ``search-darts-nb201-s0-<digest of cfg>``."""
    return run_name(stage, method, selection, cfg.get("space"), cfg.get("seed"), config_digest(cfg))


def html_table(title: str, columns: list[str], rows: list[dict[str, Any]], best: tuple[str, bool] | None = None,
               units: dict[str, str] | None = None) -> str:
    """A self-contained HTML page with one table, text escaped.  Each column's numbers have one
    rounding (two decimals, more when its smallest number needs them for three significant
    digits); a header carries its unit (``units``).  With ``best`` (a column, and whether higher
    is better) a first column marks the best row, or every row tied with it as displayed."""
    import html

    fmt = {c: _column_format([r.get(c) for r in rows]) for c in columns}

    def cell(c: str, v: Any) -> str:
        return html.escape("" if v is None else fmt[c](v) if isinstance(v, float) else str(v))

    marks = _best_marks(rows, best, fmt[best[0]]) if best else [None] * len(rows)
    names = ([""] if best else []) + [c + (f" ({units[c]})" if units and c in units else "") for c in columns]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(("<tr class=\"best\">" if m else "<tr>") + ("" if m is None else f"<td>{m}</td>")
                   + "".join(f"<td>{cell(c, r.get(c))}</td>" for c in columns) + "</tr>"
                   for r, m in zip(rows, marks))
    style = ("body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
             "td{font-family:monospace}tr.best td{font-weight:bold;background:#eef7ee}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h3>{html.escape(title)}</h3><p>{html.escape(UNITS)}</p>"
            f"<table><tr>{head}</tr>{body}</table></body></html>")


def _column_format(values: list[Any]) -> Any:
    """One rounding for a column's floats: two decimals, or as many (up to 6) as its smallest
    nonzero number needs for three significant digits; NaN shows empty."""
    small = [abs(v) for v in values if isinstance(v, float) and math.isfinite(v) and v != 0]
    digits = max(2, min(6, 2 - math.floor(math.log10(min(small))))) if small else 2
    return lambda v: "" if math.isnan(v) else f"{v:.{digits}f}"


def _best_marks(rows: list[dict[str, Any]], best: tuple[str, bool], fmt: Any) -> list[str]:
    """``best`` / ``tied best`` for the rows whose value (as displayed) is the column's best."""
    col, higher = best
    shown = [fmt(r[col]) if isinstance(r.get(col), float) and math.isfinite(r[col]) else None for r in rows]
    numbers = [float(s) for s in shown if s]
    if not numbers:
        return [""] * len(rows)
    top = f"{(max if higher else min)(numbers):.12g}"
    winners = [s is not None and f"{float(s):.12g}" == top for s in shown]
    mark = "tied best" if sum(winners) > 1 else "best"
    return [mark if w else "" for w in winners]


def metric_label(edge_name: str) -> str:
    """An edge name as MLflow allows it in a metric name: ``3<-1`` -> ``3_from_1``,
    ``normal 2<-0`` -> ``normal_2_from_0``."""
    return edge_name.replace("<-", "_from_").replace(" ", "_")


# Per-epoch scalars: the headline ones unprefixed (they open the run's chart page), the optimiser
# schedules and timing in their own groups.
HEADLINE = ("train_loss", "train_acc", "val_loss", "val_acc", "hessian_eig", "skip_weight_mean")
# Accuracies are fractions in the run folders and percent in MLflow, like the NAS-Bench-201 columns
# and the sweep objective beside them: one unit on every row of the runs table.
PERCENT = ("train_acc", "val_acc", "test_acc")
UNITS = ("Units: every accuracy (train_acc, val_acc, test_acc, nb201_*, objective, supernet_val_acc) is a "
         "percentage, 0-100; test_error is 100 - test_acc; losses are cross-entropy; `*_seconds` and `*_minutes` are "
         "wall-clock; `alpha/*` are mean mixing weights (0-1; the figure alpha/alpha_per_op.png draws them on one axis).")


def percent(metrics: dict[str, float]) -> dict[str, float]:
    """The accuracies of a record (fractions in the run folders) as percentages, for MLflow."""
    return {k: 100.0 * v if k in PERCENT else v for k, v in metrics.items()}
SCHEDULES = ("w_lr", "tau", "perturb_epsilon")


def epoch_metrics(record: dict[str, Any], space: str | None = None) -> dict[str, float]:
    """One search epoch as MLflow metrics: losses, accuracies, eigenvalue, skip weight; the mean
    mixing weight of every op over the edges that offer it (``alpha/<op>``); per-edge entropy and
    max weight labelled by edge (``edge_entropy/3_from_1``); ``schedule/*`` and ``time/*``."""
    out = percent({k: float(record[k]) for k in HEADLINE if isinstance(record.get(k), (int, float))})
    out.update({f"schedule/{k}": float(record[k]) for k in SCHEDULES if isinstance(record.get(k), (int, float))})
    if isinstance(record.get("seconds"), (int, float)):
        out["time/epoch_seconds"] = float(record["seconds"])
    sp = None
    if space:
        from nas.spaces import get_space

        sp = get_space(space)
    names = list(sp.edge_names) if sp else []
    weights = record.get("weights")
    if sp and weights and len(weights) == len(sp.edge_ops):
        for op, value in op_means(weights, sp.edge_ops).items():
            out[f"alpha/{op}"] = value
    for key in ("edge_entropy", "edge_max_weight"):
        for i, v in enumerate(record.get(key, []) or []):
            label = metric_label(names[i]) if i < len(names) else str(i)
            out[f"{key}/{label}"] = float(v)
    return out


def nb201_lookup(space: str, genotype: str) -> dict[str, Any] | None:
    from nas.benchmarks import benchmark_lookup

    return benchmark_lookup(space, genotype)


class NullTracker(Tracker):
    """The tracker when tracking is off: every call of the client, with the client's very
    signature (a call with wrong arguments fails with tracking off too), doing nothing; ``start``
    and ``study_run`` return None, and the stage functions (``nas.tracking_stages``) log nothing."""

    active = False

    def __init__(self, uri: str | None = None, experiment: str | None = None):
        self.uri, self.experiment_id, self.log_seconds = "", "", {}

    def start(self, name: str, tags: dict[str, Any] | None = None, parent: str | None = None) -> str | None:
        return None

    def study_run(self, study: str, storage: str, tags: dict[str, Any]) -> str | None:
        return None

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        return None

    def url(self, run_id: str) -> str:
        return ""

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        return None

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        return None

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        return None

    def rename(self, run_id: str, name: str) -> None:
        return None

    def log_json(self, run_id: str, obj: Any, name: str, folder: str | None = None) -> None:
        return None

    def log_bytes(self, run_id: str, data: bytes, name: str, folder: str | None = None) -> None:
        return None

    def log_run_folder(self, run_id: str, folder: str | Path, artifact_path: str = "run") -> None:
        return None

    def log_file(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        return None

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

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


class NullTracker:
    """The tracker when tracking is off: every call does nothing and returns None (``epoch_logger``
    a callback that does nothing), so that callers never test whether they track."""

    active = False

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_") or not hasattr(Tracker, name):
            raise AttributeError(name)
        if name == "epoch_logger":
            return lambda *a, **k: (lambda record: None)
        return lambda *a, **k: None


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
    Whatever happens inside, the run ends FINISHED or FAILED, never RUNNING."""
    t = tracker(track)
    run_id = t.start(name, tags, parent=parent)
    try:
        yield t, run_id
    except BaseException:
        t.end(run_id, ok=False)
        raise
    t.end(run_id)


class Tracker:
    """A thin wrapper of ``MlflowClient`` with the project's run layout and tags."""

    active = True

    def __init__(self, uri: str | None = None, experiment: str | None = None):
        disable_telemetry()
        from mlflow.tracking import MlflowClient

        self.uri = uri or tracking_uri()
        self.log_seconds: dict[str, float] = {}
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
        def quote(v: str) -> str:
            return v.replace("\\", "\\\\").replace("'", "\\'")

        found = self.client.search_runs([self.experiment_id], f"tags.stage = 'sweep' and tags.study = '{quote(study)}' "
                                        f"and tags.study_storage = '{quote(storage)}'", max_results=1,
                                        order_by=["attributes.start_time ASC"])
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        return self.start(run_name("sweep", study, tags.get("selection"), digest=config_digest({"storage": storage})),
                          {**tags, "study": study, "study_storage": storage})

    def end(self, run_id: str, ok: bool = True) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

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

    # ---------------------------------------------------------- stage content
    def epoch_logger(self, run_id: str, space: str | None = None) -> Callable[[dict[str, Any]], None]:
        """A callback for one search epoch's record: all of its scalars in one batch.  The time it
        spends is kept and recorded by ``log_search`` as the tags ``mlflow_log_seconds`` and
        ``mlflow_log_fraction`` (bookkeeping, kept out of the charts)."""
        def log(record: dict[str, Any]) -> None:
            t0 = time.perf_counter()
            self.log_metrics(run_id, epoch_metrics(record, space), step=int(record["epoch"]))
            self.log_seconds[run_id] = self.log_seconds.get(run_id, 0.0) + time.perf_counter() - t0

        return log

    def log_search(self, run_id: str, result: dict[str, Any], live: bool = False) -> None:
        """Params, tags, (per-epoch metrics unless they were logged live), α history with heatmap,
        Hessian spectra, genotype with a picture of its cell, NB201 lookup."""
        cfg = result.get("config", {})
        self.log_params(run_id, {f"search.{k}": v for k, v in cfg.items()})
        self.set_tags(run_id, {"method": result.get("method"), "space": result.get("space"),
                               "dataset": cfg.get("dataset"), "seed": cfg.get("seed"),
                               "selection": result.get("selection"), "genotype": result.get("genotype")})
        if not live:
            for rec in result.get("history", []):
                self.log_metrics(run_id, epoch_metrics(rec, result.get("space")), step=int(rec["epoch"]))
        eig = (result.get("hessian") or {}).get("top_eigenvalue") or []
        self.log_metrics(run_id, {"search_seconds": result.get("seconds", 0.0),
                                  "skip_edges": str(result["genotype"]).count("skip_connect"),
                                  **({"final_eigenvalue": eig[-1]} if eig else {})})
        if run_id in self.log_seconds:
            spent = self.log_seconds.pop(run_id)
            self.set_tags(run_id, {"mlflow_log_seconds": f"{spent:.3f}",
                                   "mlflow_log_fraction": f"{spent / max(result.get('seconds', 0.0), 1e-9):.4f}"})
        hist = result.get("history", [])
        if hist and "weights" in hist[0]:
            self.log_bytes(run_id, alpha_history_npz(hist), "alpha_history.npz", "alpha")
            self.log_bytes(run_id, alpha_heatmap_png(result), "alpha_heatmap.png", "alpha")
            self.log_bytes(run_id, alpha_lines_png(result), "alpha_per_op.png", "alpha")
        if "hessian" in result:
            self.log_json(run_id, result["hessian"], "hessian_spectra.json", "hessian")
        self.log_genotype(run_id, result["space"], result["genotype"], folder="genotype")
        look = nb201_lookup(result["space"], result["genotype"])
        if look:
            self.log_json(run_id, look, "nb201_lookup.json", "genotype")
            self.log_metrics(run_id, {f"nb201_{d}": v for d, v in look["all_datasets"].items()})

    def log_summary(self, run_id: str, metrics: dict[str, Any]) -> None:
        """A pipeline's key results on one run (the parent, or the DVC ``evaluate`` run): test
        accuracy, NB201 accuracies (``nb201_cifar10`` ...), params, FLOPs, final eigenvalue, skip
        edges as metrics; the genotype as a tag and an artifact."""
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        flat.update({f"nb201_{k}": v for k, v in (metrics.get("nb201") or {}).items()})
        self.log_metrics(run_id, percent(flat))
        self.set_tags(run_id, {"genotype": metrics.get("genotype")})
        self.log_json(run_id, metrics, "metrics.json")
        self.log_genotype(run_id, metrics["space"], metrics["genotype"])

    def log_selection(self, run_id: str, cfg: dict[str, Any], sel: dict[str, Any]) -> None:
        self.log_params(run_id, {f"select.{k}": v for k, v in cfg.items()})
        self.log_json(run_id, sel, "selection.json", "genotype")
        self.log_genotype(run_id, sel["space"], sel["genotype"])
        self.set_tags(run_id, {"genotype": sel["genotype"], "method": sel.get("search_method"),
                               "space": sel.get("space")})
        metrics: dict[str, float] = {"skip_edges": str(sel["genotype"]).count("skip_connect")}
        if isinstance(sel.get("seconds"), (int, float)):
            metrics["select_seconds"] = sel["seconds"]
        look = nb201_lookup(sel["space"], sel["genotype"])
        if look:
            metrics.update({f"nb201_{d}": v for d, v in look["all_datasets"].items()})
        self.log_metrics(run_id, metrics)

    def log_study(self, run_id: str, rep: dict[str, Any], params: dict[str, Any]) -> None:
        """A study's parent run: its settings, the trials CSV, the comparison page, the trial counts
        and the best trial's value, strength, cell and NB201 accuracies."""
        self.log_params(run_id, params)
        self.log_file(run_id, rep["csv"], "sweep")
        table, best, key = rep["table"], rep["best"], rep["key"]
        cols = ["number", "state", key, "value", "genotype"]
        self.log_comparison(run_id, f"Study {params.get('study')}, objective in percent: {rep['objective']}", cols,
                            sorted(table, key=lambda r: -(r["value"] if r["value"] is not None else -1e9)))
        counts = {s_: sum(r["state"] == s_ for r in table) for s_ in ("COMPLETE", "PRUNED", "FAIL")}
        self.log_metrics(run_id, {"trials_complete": counts["COMPLETE"], "trials_pruned": counts["PRUNED"],
                                  "trials_failed": counts["FAIL"]})
        if not best:
            return
        self.log_metrics(run_id, {"best_value": best["value"], f"best_{key}": best[key]})
        if best.get("genotype"):
            self.set_tags(run_id, {"genotype": best["genotype"], "space": best.get("space")})
            look = nb201_lookup(best.get("space") or "", best["genotype"])
            if look:  # the best trial's cell in the NAS-Bench-201 table, as the pipeline reports it
                self.log_metrics(run_id, {f"nb201_{d}": v for d, v in look["all_datasets"].items()})

    def log_benchmark(self, spec: Any, protocol: str, rep: dict[str, Any], rows: list[dict[str, Any]],
                      results: list[dict[str, Any]]) -> str:
        """A benchmark grid as a parent run (its summary as metrics, the table, CSVs, figures and
        comparison page) with one nested run per row; returns the parent's id."""
        from nas.grid.spec import DATASETS

        spaces = ",".join(spec.spaces) if spec.spaces else ("nb201" if not spec.retrain else "")
        run_id = self.start(f"benchmark-{spec.name}", {"stage": "benchmark", "protocol": spec.name, "space": spaces})
        self.log_params(run_id, {"protocol": protocol, "methods": ",".join(spec.methods),
                                 "seeds": ",".join(map(str, spec.seeds)), "selections": ",".join(spec.selections)})
        for r in rep["summary"]:
            if spec.retrain:
                self.log_metrics(run_id, {f"{r['space']}.{r['method']}.{r['selection']}.test_error_mean":
                                          r["test_error_mean"]})
            else:
                self.log_metrics(run_id, {f"{r['method']}.{r['selection']}.{d}_mean": r[f"{d}_mean"] for d in DATASETS})
        for path in (rep["table_md"], rep["table_csv"], rep["runs_csv"]):
            self.log_file(run_id, path, "table")
        key = "test_error_mean" if spec.retrain else "cifar10_mean"
        cols = ([c for c in ("space",) if spec.retrain] + ["method", "selection", "runs", "seeds", key,
                 "test_error_std" if spec.retrain else "cifar10_std", "search_minutes", "select_minutes"])
        self.log_comparison(run_id, f"Protocol {spec.name}: " + ("test error (%), lowest first" if spec.retrain else
                                                                 "NAS-Bench-201 CIFAR-10 test accuracy (%), best first"),
                            cols, sorted(rep["summary"], key=lambda r: r[key] * (1 if spec.retrain else -1)))
        for path in rep["figures"]:
            self.log_file(run_id, path, "figures")
        by_cell = {(res["rows"][0].get("space"), res["rows"][0]["method"], int(res["rows"][0]["seed"])): res
                   for res in results if res["rows"]}
        for r in rows:  # one nested run per (space, method, selection, seed), comparable with pipeline runs
            self._log_grid_row(run_id, spec, r, by_cell.get((r.get("space"), r["method"], int(r["seed"]))))
        self.end(run_id)
        return run_id

    def _log_grid_row(self, parent: str, spec: Any, r: dict[str, Any], cell: dict[str, Any] | None) -> None:
        space = r.get("space", "nb201")
        child = self.start(run_name("grid", r["method"], r["selection"], space, r["seed"], spec.name), {
            "stage": "grid", "protocol": spec.name, "method": r["method"], "selection": r["selection"],
            "seed": r["seed"], "space": space, "genotype": r["genotype"]}, parent=parent)
        if spec.retrain:
            numbers = {k: r[k] for k in ("test_acc", "test_error", "params_m", "normal_skip", "normal_noise",
                                         "normal_none", "retrain_minutes")}
        else:
            numbers = {"nb201_cifar10": r["cifar10"], "nb201_cifar100": r["cifar100"],
                       "nb201_imagenet16-120": r["imagenet16-120"], "skip_edges": r["skip_edges"]}
        eig = r.get("final_eigenvalue")
        self.log_metrics(child, {**numbers, "search_minutes": r["search_minutes"], "select_minutes": r["select_minutes"],
                                 **({"final_eigenvalue": eig} if eig is not None and not math.isnan(eig) else {})})
        if cell is not None:  # the row and the cell's results: a report can be rebuilt from the server
            self.log_json(child, {"row": r, "cell": cell["cell"], "files": cell["files"]}, "cell.json", "cell")
        self.end(child)

    def log_comparison(self, run_id: str, title: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        """``comparison.html`` on a parent run: its children side by side in one table, best first,
        with every column a user compares (MLflow's artifact view renders it as a page)."""
        self.log_bytes(run_id, html_table(title, columns, rows).encode(), "comparison.html")

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
            self.log_metrics(run_id, percent({k: v for k, v in rec.items() if k != "epoch"}), step=int(rec["epoch"]))
        self.log_metrics(run_id, percent({"test_acc": result["test_acc"], "test_loss": result["test_loss"],
                                          "params": result["params"], **({"val_acc": result["val_acc"]}
                                                                         if "val_acc" in result else {})}))
        if model_path is not None and Path(model_path).is_file():
            self.log_model(run_id, Path(model_path).parent)

    def log_model(self, run_id: str, folder: str | Path) -> None:
        """The trained network of a retrain folder as an MLflow PyTorch model (``model``), so that
        ``mlflow.pytorch.load_model("runs:/<run>/model")`` returns it."""
        import logging
        import warnings

        import mlflow
        import mlflow.pytorch
        import numpy as np

        from nas.train import load_model

        net = load_model(folder)
        data = json.loads((Path(folder) / "result.json").read_text()).get("dataset", {})
        side = data.get("resolution") or 32
        example = np.zeros((1, data.get("channels", 3), side, side), dtype=np.float32)
        mlflow.set_tracking_uri(self.uri)

        quiet = logging.getLogger("mlflow.pytorch")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its note on pickled models: this model is the project's own code
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pip-requirement inference notes
            try:
                # pickled module (loads where the `nas` package is installed), with an input example
                # so that the model's signature (normalised NCHW images -> logits) is recorded
                with mlflow.start_run(run_id=run_id, nested=True):
                    mlflow.pytorch.log_model(net, name="model", serialization_format="pickle", input_example=example,
                                             pip_requirements=[f"torch=={_torch_version()}", "nas-darts"])
            finally:
                quiet.setLevel(level)


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


# ------------------------------------------------------------------------------------- helpers
def run_name(stage: str, method: str | None = None, selection: str | None = None, space: str | None = None,
             seed: Any = None, digest: str | None = None) -> str:
    """``pipeline-darts-pt-nb201-s1-3fa2c0``: what tells runs apart in the runs table."""
    parts = [stage, method, selection, space, None if seed is None else f"s{seed}", digest]
    return "-".join(str(p) for p in parts if p not in (None, ""))


def stage_run_name(stage: str, cfg: dict[str, Any], method: str | None = None, selection: str | None = None) -> str:
    """The run name of one stage from its config: ``search-darts-nb201-s0-<digest of cfg>``."""
    return run_name(stage, method, selection, cfg.get("space"), cfg.get("seed"), config_digest(cfg))


def html_table(title: str, columns: list[str], rows: list[dict[str, Any]]) -> str:
    """A self-contained HTML page with one table (numbers to two decimals, text escaped)."""
    import html

    def cell(v: Any) -> str:
        if isinstance(v, float):  # two decimals, or four significant digits for small strengths
            return "" if math.isnan(v) else f"{v:.2f}" if v == 0 or abs(v) >= 0.1 else f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    style = ("body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
             "td{font-family:monospace}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h3>{html.escape(title)}</h3><p>{html.escape(UNITS)}</p>"
            f"<table><tr>{head}</tr>{body}</table></body></html>")


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
         "percentage, 0-100; test_error is 100 - test_acc; losses are cross-entropy; *_seconds and *_minutes are "
         "wall-clock; alpha/* are mean mixing weights (0-1; the figure alpha/alpha_per_op.png draws them on one axis).")


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

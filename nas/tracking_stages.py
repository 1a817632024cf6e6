"""What each stage logs to MLflow, on top of the thin client ``nas.tracking.Tracker``.

Each function takes the tracker first: a search's params, metrics, α history, Hessian spectra and
cell (``log_search``; ``epoch_logger`` live, epoch by epoch), a selection, a retrain and its model,
a pipeline's summary, a sweep's study and a benchmark grid with a nested run per row.  With
tracking off the tracker is a ``NullTracker``: the same calls, checked the same way, log nothing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas.drawings import alpha_heatmap_png, alpha_history_npz, alpha_lines_png, cell_png
from nas.rundir import SEARCH_RESULT
from nas.tracking import Tracker, epoch_metrics, html_table, nb201_lookup, percent, quoted, run_name


def epoch_logger(tracker: Tracker, run_id: str, space: str | None = None) -> Callable[[dict[str, Any]], None]:
    """A callback for one search epoch's record: all of its scalars in one batch.  The time it
    spends is kept and recorded by ``log_search`` as the tags ``mlflow_log_seconds`` and
    ``mlflow_log_fraction`` (bookkeeping, kept out of the charts)."""
    def log(record: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        tracker.log_metrics(run_id, epoch_metrics(record, space), step=int(record["epoch"]))
        tracker.log_seconds[run_id] = tracker.log_seconds.get(run_id, 0.0) + time.perf_counter() - t0

    return log


def log_search(tracker: Tracker, run_id: str, result: dict[str, Any], live: bool = False) -> None:
    """Params, tags, (per-epoch metrics unless they were logged live), α history with heatmap,
    Hessian spectra, genotype with a picture of its cell, NB201 lookup."""
    if not tracker.active:
        return
    cfg = result.get("config", {})
    tracker.log_params(run_id, {f"search.{k}": v for k, v in cfg.items()})
    tracker.set_tags(run_id, {"method": result.get("method"), "space": result.get("space"),
                           "dataset": cfg.get("dataset"), "seed": cfg.get("seed"),
                           "selection": result.get("selection"), "genotype": result.get("genotype")})
    if not live:
        for rec in result.get("history", []):
            tracker.log_metrics(run_id, epoch_metrics(rec, result.get("space")), step=int(rec["epoch"]))
    eig = (result.get("hessian") or {}).get("top_eigenvalue") or []
    tracker.log_metrics(run_id, {"search_seconds": result.get("seconds", 0.0),
                              "skip_edges": str(result["genotype"]).count("skip_connect"),
                              **({"final_eigenvalue": eig[-1]} if eig else {})})
    if run_id in tracker.log_seconds:
        spent = tracker.log_seconds.pop(run_id)
        tracker.set_tags(run_id, {"mlflow_log_seconds": f"{spent:.3f}",
                               "mlflow_log_fraction": f"{spent / max(result.get('seconds', 0.0), 1e-9):.4f}"})
    log_search_charts(tracker, run_id, result, result["genotype"])
    look = nb201_lookup(result["space"], result["genotype"])
    if look:
        tracker.log_json(run_id, look, "nb201_lookup.json", "genotype")
        tracker.log_metrics(run_id, {f"nb201_{d}": v for d, v in look["all_datasets"].items()})


def log_search_charts(tracker: Tracker, run_id: str, result: dict[str, Any], genotype: str) -> None:
    """The pictures every search carries wherever it ran (a pipeline, a sweep trial, a grid row):
    α history (``alpha_history.npz``, heatmap, ``alpha_per_op.png``), the Hessian spectra when
    computed, and ``genotype``'s cell (the selected one, which PT may have changed)."""
    if not tracker.active:
        return
    hist = result.get("history", [])
    if hist and "weights" in hist[0]:
        tracker.log_bytes(run_id, alpha_history_npz(hist), "alpha_history.npz", "alpha")
        tracker.log_bytes(run_id, alpha_heatmap_png(result), "alpha_heatmap.png", "alpha")
        tracker.log_bytes(run_id, alpha_lines_png(result), "alpha_per_op.png", "alpha")
    if "hessian" in result:
        tracker.log_json(run_id, result["hessian"], "hessian_spectra.json", "hessian")
    log_genotype(tracker, run_id, result["space"], genotype, folder="genotype")


def log_summary(tracker: Tracker, run_id: str, metrics: dict[str, Any]) -> None:
    """A pipeline's key results on one run (the parent, or the DVC ``evaluate`` run): test
    accuracy, NB201 accuracies (``nb201_cifar10`` ...), params, FLOPs, final eigenvalue, skip
    edges as metrics; the genotype as a tag and an artifact."""
    if not tracker.active:
        return
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    flat.update({f"nb201_{k}": v for k, v in (metrics.get("nb201") or {}).items()})
    tracker.log_metrics(run_id, percent(flat))
    tracker.set_tags(run_id, {"genotype": metrics.get("genotype")})
    tracker.log_json(run_id, metrics, "metrics.json")
    log_genotype(tracker, run_id, metrics["space"], metrics["genotype"])


def log_selection(tracker: Tracker, run_id: str, cfg: dict[str, Any], sel: dict[str, Any]) -> None:
    if not tracker.active:
        return
    tracker.log_params(run_id, {f"select.{k}": v for k, v in cfg.items()})
    tracker.log_json(run_id, sel, "selection.json", "genotype")
    log_genotype(tracker, run_id, sel["space"], sel["genotype"])
    tracker.set_tags(run_id, {"genotype": sel["genotype"], "method": sel.get("search_method"),
                           "space": sel.get("space")})
    metrics: dict[str, float] = {"skip_edges": str(sel["genotype"]).count("skip_connect")}
    if isinstance(sel.get("seconds"), (int, float)):
        metrics["select_seconds"] = sel["seconds"]
    look = nb201_lookup(sel["space"], sel["genotype"])
    if look:
        metrics.update({f"nb201_{d}": v for d, v in look["all_datasets"].items()})
    tracker.log_metrics(run_id, metrics)


def log_study(tracker: Tracker, run_id: str, rep: dict[str, Any], params: dict[str, Any]) -> None:
    """A study's parent run: its settings, the trials CSV, the comparison page, the trial counts
    and the best trial's value, strength, cell and NB201 accuracies."""
    if not tracker.active:
        return
    tracker.log_params(run_id, params)
    tracker.log_file(run_id, rep["csv"], "sweep")
    table, best, key = rep["table"], rep["best"], rep["key"]
    cols = ["number", "state", key, "value", "genotype"]
    log_comparison(tracker, run_id, f"Study {params.get('study')}, objective in percent: {rep['objective']}", cols,
                   sorted(table, key=lambda r: -(r["value"] if r["value"] is not None else -1e9)), ("value", True))
    counts = {s_: sum(r["state"] == s_ for r in table) for s_ in ("COMPLETE", "PRUNED", "FAIL")}
    tracker.log_metrics(run_id, {"trials_complete": counts["COMPLETE"], "trials_pruned": counts["PRUNED"],
                              "trials_failed": counts["FAIL"]})
    if not best:
        return
    tracker.log_metrics(run_id, {"best_value": best["value"], f"best_{key}": best[key]})
    if best.get("genotype"):
        tracker.set_tags(run_id, {"genotype": best["genotype"], "space": best.get("space")})
        look = nb201_lookup(best.get("space") or "", best["genotype"])
        if look:  # the best trial's cell in the NAS-Bench-201 table, as the pipeline reports it
            tracker.log_metrics(run_id, {f"nb201_{d}": v for d, v in look["all_datasets"].items()})


def log_benchmark(tracker: Tracker, spec: Any, protocol: str, rep: dict[str, Any], rows: list[dict[str, Any]],
                  results: list[dict[str, Any]]) -> str | None:
    """A benchmark grid as a parent run (its summary as metrics, the table, CSVs, figures and
    comparison page) with one nested run per row; returns the parent's id."""
    if not tracker.active:
        return None
    from nas.grid.spec import DATASETS

    spaces = ",".join(spec.spaces) if spec.spaces else ("nb201" if not spec.retrain else "")
    run_id = tracker.start(f"benchmark-{spec.name}", {"stage": "benchmark", "protocol": spec.name, "space": spaces})
    tracker.log_params(run_id, {"protocol": protocol, "methods": ",".join(spec.methods),
                             "seeds": ",".join(map(str, spec.seeds)), "selections": ",".join(spec.selections)})
    for r in rep["summary"]:
        if spec.retrain:
            tracker.log_metrics(run_id, {f"{r['space']}.{r['method']}.{r['selection']}.test_error_mean":
                                      r["test_error_mean"]})
        else:
            tracker.log_metrics(run_id, {f"{r['method']}.{r['selection']}.{d}_mean": r[f"{d}_mean"] for d in DATASETS})
    for path in (rep["table_md"], rep["table_csv"], rep["runs_csv"]):
        tracker.log_file(run_id, path, "table")
    key = "test_error_mean" if spec.retrain else "cifar10_mean"
    cols = ([c for c in ("space",) if spec.retrain] + ["method", "selection", "runs", "seeds", key,
             "test_error_std" if spec.retrain else "cifar10_std", "search_minutes", "select_minutes"])
    log_comparison(tracker, run_id, f"Protocol {spec.name}: " + ("test error (%), lowest first" if spec.retrain else
                                                             "NAS-Bench-201 CIFAR-10 test accuracy (%), best first"),
                   cols, sorted(rep["summary"], key=lambda r: r[key] * (1 if spec.retrain else -1)),
                   (key, not spec.retrain))
    for path in rep["figures"]:
        tracker.log_file(run_id, path, "figures")
    by_cell = {(res["rows"][0].get("space"), res["rows"][0]["method"], int(res["rows"][0]["seed"])): res
               for res in results if res["rows"]}
    for r in rows:  # one nested run per (space, method, selection, seed), comparable with pipeline runs
        _log_grid_row(tracker, run_id, spec, r, by_cell.get((r.get("space"), r["method"], int(r["seed"]))))
    tracker.end(run_id)
    return run_id


def _log_grid_row(tracker: Tracker, parent: str, spec: Any, r: dict[str, Any], cell: dict[str, Any] | None) -> None:
    if not tracker.active:
        return
    space = r.get("space", "nb201")
    child = tracker.start(run_name("grid", r["method"], r["selection"], space, r["seed"], spec.name), {
        "stage": "grid", "protocol": spec.name, "method": r["method"], "selection": r["selection"],
        "seed": r["seed"], "space": space, "genotype": r["genotype"]}, parent=parent)
    if spec.retrain:
        numbers = {k: r[k] for k in ("test_acc", "test_error", "params_m", "normal_skip", "normal_noise",
                                     "normal_none", "retrain_minutes")}
    else:
        numbers = {"nb201_cifar10": r["cifar10"], "nb201_cifar100": r["cifar100"],
                   "nb201_imagenet16-120": r["imagenet16-120"], "skip_edges": r["skip_edges"]}
    eig = r.get("final_eigenvalue")
    tracker.log_metrics(child, {**numbers, "search_minutes": r["search_minutes"], "select_minutes": r["select_minutes"],
                             **({"final_eigenvalue": eig} if eig is not None and not math.isnan(eig) else {})})
    if cell is not None:  # the row and the cell's results: a report can be rebuilt from the server
        tracker.log_json(child, {"row": r, "cell": cell["cell"], "files": cell["files"]}, "cell.json", "cell")
        _log_grid_search(tracker, child, cell["files"].get(f"search/{SEARCH_RESULT}"), r["genotype"])
    tracker.end(child)


def _log_grid_search(tracker: Tracker, run_id: str, search: Any, genotype: str) -> None:
    """A grid row's search as a pipeline search shows it: per-epoch metrics (α, accuracy,
    eigenvalue) and the search's charts, with the row's selected cell."""
    if not isinstance(search, dict) or not isinstance(search.get("history"), list) or "space" not in search:
        return
    for rec in search["history"]:
        tracker.log_metrics(run_id, epoch_metrics(rec, search["space"]), step=int(rec["epoch"]))
    log_search_charts(tracker, run_id, search, genotype)


# the unit of each column a comparison page may show
UNITS_OF = {"value": "%", "test_error_mean": "%", "test_error_std": "%", "cifar10_mean": "%", "cifar10_std": "%",
            "search_minutes": "min", "select_minutes": "min"}


def log_comparison(tracker: Tracker, run_id: str, title: str, columns: list[str], rows: list[dict[str, Any]],
                   best: tuple[str, bool]) -> None:
    """``comparison.html`` on a parent run: its children side by side in one table, best first,
    with every column a user compares and its unit, the best row (or the rows tied with it)
    marked; ``best`` is the deciding column and whether higher is better.  MLflow's artifact view
    renders it as a page."""
    if not tracker.active:
        return
    page = html_table(title, columns, rows, best=best, units={c: UNITS_OF[c] for c in columns if c in UNITS_OF})
    tracker.log_bytes(run_id, page.encode(), "comparison.html")


def log_genotype(tracker: Tracker, run_id: str, space: str, genotype: str, folder: str = "genotype") -> None:
    if not tracker.active:
        return
    from nas.spaces import get_space

    sp = get_space(space)
    geno = sp.parse_genotype(genotype)
    tracker.log_json(run_id, {"space": space, "genotype": genotype,
                           **({"genotype_json": sp.genotype_json(geno)} if sp.genotype_json else {})},
                  "genotype.json", folder)
    tracker.log_bytes(run_id, cell_png(space, genotype), "cell.png", folder)


def log_retrain(tracker: Tracker, run_id: str, result: dict[str, Any], model_path: str | Path | None = None) -> None:
    if not tracker.active:
        return
    cfg = result.get("config", {})
    tracker.log_params(run_id, {f"retrain.{k}": v for k, v in cfg.items()})
    tracker.set_tags(run_id, {"space": result.get("space"), "dataset": cfg.get("dataset"), "seed": cfg.get("seed")})
    for rec in result.get("history", []):
        tracker.log_metrics(run_id, percent({k: v for k, v in rec.items() if k != "epoch"}), step=int(rec["epoch"]))
    tracker.log_metrics(run_id, percent({"test_acc": result["test_acc"], "test_loss": result["test_loss"],
                                      "params": result["params"], **({"val_acc": result["val_acc"]}
                                                                     if "val_acc" in result else {})}))
    if model_path is not None and Path(model_path).is_file():
        log_model(tracker, run_id, Path(model_path).parent)


def log_model(tracker: Tracker, run_id: str, folder: str | Path) -> None:
    """The trained network of a retrain folder as an MLflow PyTorch model (``model``), so that
    ``mlflow.pytorch.load_model("runs:/<run>/model")`` returns it."""
    if not tracker.active:
        return
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
    mlflow.set_tracking_uri(tracker.uri)

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


def end_running(tracker: Tracker, client: str, status: str) -> int:
    """End with ``status`` every run still RUNNING that the sweep call ``client`` started (its
    trials on workers that were stopped or killed before they could end their own runs);
    the number ended.  Runs of other clients of the same study are left alone."""
    if not tracker.active or not client:
        return 0
    found = tracker.client.search_runs([tracker.experiment_id], f"attributes.status = 'RUNNING' and "
                                       f"tags.sweep_client = '{client}'")
    for run in found:
        tracker.client.set_terminated(run.info.run_id, status)
    return len(found)


def end_reaped(tracker: Tracker, study: str, token: str, trial: int, status: str = "KILLED") -> int:
    """End with ``status`` the run of trial number ``trial`` of the study (``study``, ``token``)
    that is still RUNNING: the trial was reaped as stale (its worker died) and its retry started;
    the number ended (0 or 1)."""
    if not tracker.active:
        return 0
    found = tracker.client.search_runs([tracker.experiment_id], f"attributes.status = 'RUNNING' and "
                                       f"tags.stage = 'trial' and tags.study = '{quoted(study)}' and "
                                       f"tags.study_token = '{quoted(token)}' and tags.trial = '{int(trial)}'")
    for run in found:
        tracker.client.set_terminated(run.info.run_id, status)
    return len(found)

"""The pipeline's stages as plain functions: config in, files out.

The CLI, DVC stages and Prefect flows all call these; none of them re-implements a stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nas import config as config_mod
from nas.benchmarks import benchmark_lookup, load_table
from nas.data import load_prepared, prepare
from nas.landscape import draw as draw_landscapes
from nas.landscape import landscape
from nas.loops import count_macs, count_params
from nas.rundir import SEARCH_RESULT, read_search_result
from nas.runs.files import read_json, write_json
from nas.search import search
from nas.select import op_strength, select
from nas.spaces import get_space
from nas.train import retrain
from nas.utils import NasError, config_digest, cut, resolve_device, write_csv


def prepare_stage(cfg: config_mod.PrepareConfig) -> dict[str, Any]:
    """Decode a dataset into the cache; returns its manifest (with ``path``)."""
    path = prepare(cfg.dataset, cfg.data, cfg.cache_dir)
    manifest = load_prepared(path).manifest
    return {"path": str(path), **manifest}


def search_stage(cfg: config_mod.SearchConfig, resume: bool = False, callback: Any = None,
                 force: bool = False) -> dict[str, Any]:
    """Search a supernet; ``callback(state)`` runs after each epoch (progress, tracking).  An ``out``
    folder holding a run is continued with ``resume``, started over with ``force``, else refused.
    With ``nproc`` > 1 (and not already a rank) the search runs data-parallel in that many processes
    of this host (``nas.parallel``), without the per-epoch callback, and its result is read back."""
    from nas import parallel

    if parallel.starts_ranks(cfg.nproc):
        return read_search_result(parallel.launch("search", cfg, resume, force))
    return search(cfg, resume=resume, callback=callback, force=force)


def preflight(kind: str, cfg: Any, resume: bool = False, force: bool = False) -> None:
    """What a stage would refuse, checked before any work and before a tracking run starts: its
    output folder (a run of its own or of another stage already there), its data source, its
    device, the search it selects from and the genotype it retrains.  A command refused here
    leaves nothing behind, not even a FAILED run in MLflow."""
    from nas.data import check_source
    from nas.rundir import SEARCH_RUN_FILES, check_claim
    from nas.select import PT_CHECKPOINT
    from nas.spaces import get_space
    from nas.train import RUN_FILES
    from nas.verify import VERIFY_CHECKPOINT

    owned = {"search": SEARCH_RUN_FILES, "retrain": RUN_FILES, "selection": (PT_CHECKPOINT, VERIFY_CHECKPOINT)}
    if getattr(cfg, "out", None) and kind in owned:
        check_claim(cfg.out, resume, force, owned[kind], kind)
    if hasattr(cfg, "dataset"):
        check_source(cfg.dataset, cfg.data)
    if isinstance(getattr(cfg, "device", None), str):
        resolve_device(cfg.device)
    if kind == "selection" and getattr(cfg, "run", None):
        read_search_result(cfg.run)
    if kind == "selection" and getattr(cfg, "out", None) and not force:
        _check_other_selection(Path(cfg.out), cfg.method)
    if kind == "retrain" and getattr(cfg, "space", None) and getattr(cfg, "genotype", None):
        get_space(cfg.space).parse_genotype(cfg.genotype)


def _check_other_selection(out: Path, method: str) -> None:
    """A selection of another method, or a search or retrain run (``rundir.check_selection_folder``),
    already in ``out`` is not replaced without ``--force``."""
    from nas.rundir import check_selection_folder

    check_selection_folder(out, method)
    path = out / "selection.json"
    if not path.is_file():
        return
    held = read_json(path)
    other = held.get("selection") if isinstance(held, dict) else None
    if other != method:
        raise NasError(f"{path}: holds a {other if isinstance(other, str) else 'foreign'} selection, not a "
                       f"{method} one; choose another folder or pass --force to replace it")


def read_genotype(path: str | Path) -> dict[str, Any]:
    """``{"space", "genotype"}`` of a selection.json or a search result.json (or their directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / "selection.json" if (p / "selection.json").is_file() else p / SEARCH_RESULT
    if not p.is_file():
        raise NasError(f"{p}: not found (expected a selection.json or a search result.json)")
    obj = read_json(p)
    for key in ("space", "genotype"):
        if not isinstance(obj.get(key), str):
            raise NasError(f"{p}: missing key {key!r}")
    return {"space": obj["space"], "genotype": obj["genotype"]}


def select_stage(cfg: config_mod.SelectConfig, resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Choose the final architecture of a finished search (magnitude or PT); writes
    ``<out>/selection.json`` when ``out`` is set.  PT checkpoints each decided edge in ``out``:
    ``resume`` continues an interrupted PT, ``force`` starts it over.  With ``nproc`` > 1 (and not
    already a rank) it runs in that many processes of this host and its selection.json is read back."""
    from nas import parallel

    if parallel.starts_ranks(cfg.nproc):
        if not cfg.out:
            raise NasError("select: nproc > 1 needs out (the ranks' selection.json is read back from it)")
        return read_json(parallel.launch("select", cfg, resume, force) / "selection.json")
    return select(cfg, resume=resume, force=force)


def strength_stage(cfg: config_mod.SelectConfig) -> dict[str, Any]:
    """α (or the Dirichlet mean) against the accuracy drop of removing each op, per edge and op."""
    return op_strength(cfg.run, cfg, cfg.out)


def landscape_stage(runs: list[str], out: str | Path, points: int = 11, radius: float = 1.0, batches: int = 4,
                    seed: int = 0, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """The loss landscape of each run around its α (``<out>/<run name>/``) and one figure with a
    contour per run (``<out>/landscape.png``), on a shared colour scale."""
    out = Path(out)
    names = [Path(r).name or str(i) for i, r in enumerate(runs)]
    if len(set(names)) != len(names):
        names = [f"{i}-{n}" for i, n in enumerate(names)]
    results = [landscape(r, points, radius, batches, seed, device, out / n, progress) for r, n in zip(runs, names)]
    draw_landscapes(results, out / "landscape.png")
    slim = [{k: v for k, v in r.items() if k not in ("loss", "axis")} for r in results]
    write_json(out / "landscapes.json", slim)
    return {"landscapes": slim, "figure": str(out / "landscape.png")}


def nb201_lookup(space: str, genotype: str, dataset: str = "cifar10") -> dict[str, Any] | None:
    """The benchmark lookup of a genotype, or None outside a space with a table."""
    return benchmark_lookup(space, genotype, dataset)


def lookup_stage(genotype: str, dataset: str = "cifar10", table: str | None = None) -> dict[str, Any]:
    return load_table(table).lookup(genotype, dataset)


def info_stage(space_name: str, genotype: str, channels: int | None = None, cells: int | None = None,
               num_classes: int = 10, in_channels: int = 3, resolution: int = 32) -> dict[str, Any]:
    """Parameter count and multiply-accumulates of the discrete network of a genotype (the
    evaluation network, auxiliary head excluded; C and cells default to the space's)."""
    import torch

    space = get_space(space_name)
    geno = space.parse_genotype(genotype)
    channels = space.retrain_defaults["channels"] if channels is None else channels
    cells = space.retrain_defaults["cells"] if cells is None else cells
    for flag, value, most in (("channels", channels, 1 << 16), ("cells", cells, 1000), ("num-classes", num_classes, 10**6),
                              ("in-channels", in_channels, 1024), ("resolution", resolution, 1 << 14)):
        if not 1 <= value <= most:
            raise NasError(f"info: --{flag} must be in [1, {most}], got {value}")
    with torch.device("meta"):  # shapes only: no weight is allocated, whatever the size
        net = space.build_network(geno, channels, cells, num_classes, in_channels)
        try:
            macs = count_macs(net, (in_channels, resolution, resolution))
        except RuntimeError as exc:  # shapes that do not fit: maps shrunk below a pixel, odd sizes at a reduction
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            why = "its feature maps shrink below one pixel" if "too small" in first else cut(first, 160)
            raise NasError(f"info: --resolution {resolution} does not fit this network ({why}); try 32") from None
    extra = {"genotype_json": space.genotype_json(geno)} if space.genotype_json else {}
    return {"space": space.name, "genotype": space.format_genotype(geno), **extra, "channels": channels, "cells": cells,
            "num_classes": num_classes, "resolution": resolution, "params": count_params(net),
            "macs": macs, "flops": 2 * macs}


def retrain_stage(cfg: config_mod.RetrainConfig, resume: bool = False, force: bool = False) -> dict[str, Any]:
    return retrain(cfg, resume=resume, force=force)


def evaluate_stage(search_dir: str | Path, selection: str | Path, retrain_dir: str | Path,
                   out: str | Path) -> dict[str, Any]:
    """Collect a pipeline run: ``metrics.json`` (numbers only: test accuracy, NB201 lookups, size,
    search cost, sharpness, skip edges), ``summary.json`` (the same with method, selection, space,
    seed, genotype), the plot tables ``plots/alpha.csv`` (mean mixing weight per op and epoch),
    ``plots/eigenvalue.csv``, ``plots/search_accuracy.csv``, ``plots/retrain_accuracy.csv`` (in
    percent), ``plots/retrain_loss.csv``, and the same five as pictures (``plots/*.png``, which
    render without a network).  An ``out`` that holds another stage's run is refused."""
    from nas.rundir import run_kind
    from nas.schemas import validate_history

    held = run_kind(Path(out))
    if held is not None:  # an evaluation never writes into another stage's run
        raise NasError(f"{out}: holds a {held} run, not an evaluation; choose another folder")
    search_res, sel, rt = _pipeline_results(search_dir, selection, retrain_dir)
    history = validate_history(search_res.get("history", []), f"{search_dir}/result.json history")
    out = Path(out)
    space = get_space(search_res["space"])
    info = info_stage(space.name, rt["genotype"], rt["config"].get("channels"), rt["config"].get("cells"),
                      num_classes=search_res.get("dataset", {}).get("num_classes", 10),
                      in_channels=rt.get("dataset", {}).get("channels", 3),
                      resolution=rt.get("dataset", {}).get("resolution") or 32)
    eig = search_res.get("hessian", {}).get("top_eigenvalue") or []
    digest = config_digest({"search": search_res.get("config", {}), "select": sel.get("config", {}),
                            "retrain": rt.get("config", {})})
    metrics: dict[str, Any] = {
        "method": search_res["method"], "selection": sel["selection"], "space": space.name,
        "seed": search_res.get("config", {}).get("seed"), "config_digest": digest,
        "genotype": rt["genotype"], "test_acc": rt["test_acc"], "test_loss": rt["test_loss"],
        "retrain_epochs": rt["epochs"], "params": info["params"], "flops": info["flops"],
        "search_seconds": search_res["seconds"], "retrain_seconds": rt["seconds"],
        "search_val_acc": history[-1]["val_acc"] if history else None,
        "skip_edges": rt["genotype"].count("skip_connect"),
        "final_eigenvalue": eig[-1] if eig else None,
    }
    look = nb201_lookup(space.name, rt["genotype"])
    if look:
        metrics["nb201"] = dict(look["all_datasets"])
        metrics["nb201_oracle_cifar10"] = look["oracle_accuracy"]
        metrics["nb201_rank"] = look["rank"]
    numbers = {k: v for k, v in metrics.items() if k not in ("method", "selection", "space", "seed", "config_digest",
                                                             "genotype") and v is not None}
    write_json(out / "metrics.json", numbers)  # `dvc metrics show`: numbers only
    write_json(out / "summary.json", metrics)
    plots = out / "plots"
    _plot_tables(plots, search_res, history, rt)
    from nas.figures import pipeline_plots

    pipeline_plots(plots)
    return metrics


def _pipeline_results(search_dir: str | Path, selection: str | Path,
                      retrain_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The search, selection and retrain results of one pipeline run, checked to belong together."""
    search_res = read_search_result(search_dir)
    sel_path = Path(selection)
    if sel_path.is_dir():
        sel_path = sel_path / "selection.json"
    if not sel_path.is_file():
        raise NasError(f"{sel_path}: selection not found (expected the output of 'nas select')")
    sel = read_json(sel_path)
    rt_path = Path(retrain_dir) / "result.json"
    if not rt_path.is_file():
        raise NasError(f"{rt_path}: retrain result not found (expected the output of 'nas retrain')")
    rt = read_json(rt_path)
    if rt.get("genotype") != sel.get("genotype"):
        raise NasError(f"{rt_path}: retrained genotype {rt.get('genotype')!r} is not the selected "
                       f"{sel.get('genotype')!r} in {sel_path}")
    return search_res, sel, rt


def _plot_tables(plots: Path, search_res: dict[str, Any], history: list[dict[str, Any]], rt: dict[str, Any]) -> None:
    """The tables ``dvc plots`` draws: α per op, the eigenvalue, the search and retrain accuracy (in
    percent) and the retrain loss."""
    def table(name: str, header: list[str], rows: list[list[Any]]) -> None:
        write_csv(plots / name, [dict(zip(header, r)) for r in rows], header, "{:.6g}", lineterminator="\n")

    eig = search_res.get("hessian", {}).get("top_eigenvalue") or []
    ops = list(search_res.get("ops", []))
    if history and ops and all(len(h["weights"][0]) == len(ops) for h in history):
        table("alpha.csv", ["epoch", *ops],
              [[h["epoch"], *(sum(r[k] for r in h["weights"]) / len(h["weights"]) for k in range(len(ops)))]
               for h in history])
    table("eigenvalue.csv", ["epoch", "top_eigenvalue"],
          [[e, v] for e, v in zip(search_res.get("hessian", {}).get("epochs", []), eig)])
    # accuracies in percent, as MLflow and the command lines show them
    table("search_accuracy.csv", ["epoch", "train_acc", "val_acc"],
          [[h["epoch"], 100 * h["train_acc"], 100 * h["val_acc"]] for h in history])
    table("retrain_accuracy.csv", ["epoch", "train_acc"],
          [[h["epoch"], 100 * h["train_acc"]] for h in rt.get("history", [])])
    table("retrain_loss.csv", ["epoch", "train_loss"], [[h["epoch"], h["train_loss"]] for h in rt.get("history", [])])

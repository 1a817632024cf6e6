"""The benchmark grid: methods x seeds x selections under a named protocol, on NAS-Bench-201.

A protocol is a params file (``params/cpu-proxy.yaml``, ``params/paper.yaml``) with a ``search:``
section, an optional ``select:`` section (PT settings) and a ``grid:`` section::

    grid:
      methods: [darts, snas, gdas, drnas, sdarts-rs, pc-darts, random]
      seeds: [1, 2, 3]
      selections: [magnitude, pt]
      pt_methods: [darts, sdarts-rs]   # PT is applied to these supernets only (default: all)
      strength: true                   # α vs accuracy-drop table on the first seed's supernet

One cell of the grid is one (method, seed): a search, then each selection on the same supernet,
then the NB201 lookups on all three datasets.  A cell is cached on disk: a search whose
``result.json`` was written with the same config is never rerun (an interrupted one resumes from
its checkpoint), and a selection is reused when the search result it was made from is unchanged.
``run_cell`` is the unit of work that both :func:`run_grid` (a local process pool) and the Prefect
benchmark flow (any task runner) map over the grid; :func:`write_report` turns the rows into the
table, the per-run CSV and the figures.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nas import config as config_mod
from nas.benchmarks import load_table
from nas.methods import METHOD_NAMES as METHODS
from nas.methods import trains_alpha
from nas.rundir import SEARCH_RESULT, read_search_result, same_config
from nas.search import search
from nas.select import op_strength
from nas.spaces import get_space
from nas.stages import resume_or_restart, select_stage
from nas.tracking import op_means
from nas.utils import NasError, RunLock, atomic_write, check_output_dir, sha256_file, write_json

DATASETS = ("cifar10", "cifar100", "imagenet16-120")
SELECTIONS = ("magnitude", "pt")
RUN_FIELDS = ["protocol", "method", "selection", "seed", "genotype", *DATASETS, "search_minutes",
              "select_minutes", "final_eigenvalue", "skip_edges"]


@dataclasses.dataclass
class GridSpec:
    protocol: str  # the params file
    name: str  # the protocol's name (file stem)
    methods: list[str]
    seeds: list[int]
    selections: list[str]
    pt_methods: list[str] | None
    strength: bool
    out: str  # run directories (caches)
    report: str  # table, CSV, figures

    def cells(self) -> list[tuple[str, int]]:
        return [(m, s) for m in self.methods for s in self.seeds]


def _list(raw: Any, key: str, source: str, kind: type) -> list:
    if not isinstance(raw, list) or not raw or not all(isinstance(v, kind) and not isinstance(v, bool) for v in raw):
        raise NasError(f"{source}: key 'grid.{key}' expects a non-empty list of {kind.__name__}, got {raw!r}")
    return raw


def load_grid(protocol: str | Path, out: str | None = None, report: str | None = None,
              methods: list[str] | None = None, seeds: list[int] | None = None,
              selections: list[str] | None = None) -> GridSpec:
    """Read and check a protocol's ``grid:`` section (arguments override it)."""
    path = Path(protocol)
    doc = config_mod.load_yaml(path, "protocol file")
    grid = doc.get("grid", {})
    if not isinstance(grid, dict):
        raise NasError(f"{path}: key 'grid' expects a mapping")
    known = {"methods", "seeds", "selections", "pt_methods", "strength"}
    for key in grid:
        if key not in known:
            raise NasError(f"{path}: unknown key 'grid.{key}' (known: {', '.join(sorted(known))})")
    methods = methods or _list(grid.get("methods", ["darts"]), "methods", str(path), str)
    seeds = seeds or _list(grid.get("seeds", [1]), "seeds", str(path), int)
    selections = selections or _list(grid.get("selections", ["magnitude"]), "selections", str(path), str)
    for m in methods:
        if m not in METHODS:
            raise NasError(f"{path}: unknown method {m!r} in grid.methods (expected one of {', '.join(METHODS)})")
    for s in selections:
        if s not in SELECTIONS:
            raise NasError(f"{path}: unknown selection {s!r} in grid.selections (expected magnitude or pt)")
    pt_methods = grid.get("pt_methods")
    if pt_methods is not None:
        pt_methods = _list(pt_methods, "pt_methods", str(path), str)
    strength = grid.get("strength", False)
    if not isinstance(strength, bool):
        raise NasError(f"{path}: key 'grid.strength' expects bool, got {strength!r}")
    # the search and select sections must be valid too, before any work starts
    config_mod.build_config("search", path)
    config_mod.build_config("select", path)
    name = path.stem
    return GridSpec(str(path), name, list(methods), [int(s) for s in seeds], list(selections), pt_methods, strength,
                    out or f"runs/grid/{name}", report or f"data/results/{name}")


def cached_search(cfg: config_mod.SearchConfig) -> tuple[dict[str, Any], bool]:
    """The search of ``cfg``: read back when ``<out>/result.json`` was written with the same config,
    otherwise run (resuming a checkpoint if one is there). Returns (result, was_cached)."""
    path = Path(cfg.out) / SEARCH_RESULT
    if path.is_file():
        try:
            res = read_search_result(path)  # schema-checked: a corrupt result is computed again
        except NasError as exc:
            print(f"{exc}; finishing the search again from its checkpoint", file=sys.stderr, flush=True)
            res = None
        if res and same_config(res.get("config", {}), config_mod.to_dict(cfg), config_mod.to_dict(config_mod.SearchConfig())):
            return res, True
    return search(cfg, resume=True), False


def cached_selection(sel_cfg: config_mod.SelectConfig, search_result: Path) -> tuple[dict[str, Any], bool]:
    """A selection on a finished search, reused when it was made from the same ``result.json``
    with the same selection config."""

    out = Path(sel_cfg.out) / "selection.json"
    digest = sha256_file(search_result)
    key = {k: v for k, v in config_mod.to_dict(sel_cfg).items() if k not in ("out", "progress", "device", "run")}
    if out.is_file():
        try:
            old = json.loads(out.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("search_digest") == digest and old.get("select_config") == key:
            return old, True
    # PT checkpoints each decision in its folder: an interrupted grid continues the selection
    sel = resume_or_restart(select_stage, sel_cfg)
    sel = {**sel, "search_digest": digest, "select_config": key}
    write_json(out, sel)
    return sel, False


def _final_eigenvalue(res: dict[str, Any]) -> float:
    eig = res.get("hessian", {}).get("top_eigenvalue") or []
    return float(eig[-1]) if eig else math.nan


class CellBusy(NasError):
    """Another process is computing this cell."""


def run_cell(protocol: str, method: str, seed: int, selections: list[str], out: str, data: str | None = None,
             pt_methods: list[str] | None = None, strength: bool = False, threads: int = 0,
             progress: bool = False, wait: bool = True) -> list[dict[str, Any]]:
    """Search one (method, seed) of a protocol, select with each selection, look the genotypes up.
    Returns one row per selection (``RUN_FIELDS``).  The cell's folder is claimed for the whole
    computation: a second grid on the same folder waits for it (``wait``) or gets ``CellBusy``,
    and then reads the finished cell back instead of computing it again."""
    cell = Path(out) / f"{method}-s{seed}"
    try:
        with RunLock(cell, wait=wait, what="grid cell"):
            return _run_cell(protocol, method, seed, selections, out, data, pt_methods, strength, threads, progress)
    except NasError as exc:
        if not wait and "another process is writing" in str(exc):
            raise CellBusy(f"{cell}: computed by another grid process") from None
        raise


def _run_cell(protocol: str, method: str, seed: int, selections: list[str], out: str, data: str | None,
              pt_methods: list[str] | None, strength: bool, threads: int, progress: bool) -> list[dict[str, Any]]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    name = Path(protocol).stem
    cell = Path(out) / f"{method}-s{seed}"
    overrides: dict[str, Any] = {"method": method, "seed": seed, "out": str(cell / "search"), "progress": progress}
    if data:
        overrides["data"] = data
    cfg = config_mod.build_config("search", protocol, overrides)
    if get_space(cfg.space).benchmark is None:
        raise NasError(f"{protocol}: the benchmark grid needs search.space nb201 (the table is NAS-Bench-201's), "
                       f"got {cfg.space!r}")
    res, cached = cached_search(cfg)
    print(f"[grid {name}] {method} seed {seed}: search {'cached' if cached else 'done'} "
          f"({res['seconds'] / 60:.1f} min) -> {res['genotype']}", file=sys.stderr, flush=True)
    table = load_table()
    base = {"protocol": name, "method": method, "seed": seed, "search_minutes": res["seconds"] / 60,
            "final_eigenvalue": _final_eigenvalue(res)}
    rows = []
    own = not trains_alpha(method)  # one row, the method's own selection
    todo = [res["selection"]] if own else list(selections)
    for selection in todo:
        if selection == "pt" and pt_methods is not None and method not in pt_methods:
            continue
        if selection == "magnitude" or own:
            geno, minutes = res["genotype"], 0.0
        else:
            sel_cfg = config_mod.build_config("select", protocol, {
                "method": selection, "run": str(cell / "search"), "out": str(cell / f"select-{selection}"),
                "seed": seed, "progress": progress})
            sel, was = cached_selection(sel_cfg, cell / "search" / SEARCH_RESULT)
            geno, minutes = sel["genotype"], sel.get("seconds", 0.0) / 60
            print(f"[grid {name}] {method} seed {seed}: {selection} {'cached' if was else 'done'} -> {geno}",
                  file=sys.stderr, flush=True)
        accs = {d: table.accuracy(geno, d) for d in DATASETS}
        rows.append({**base, "selection": selection, "genotype": geno, **accs, "select_minutes": minutes,
                     "skip_edges": geno.count("skip_connect")})
    if strength and not own:
        sfile = cell / "strength" / "strength.json"
        if not sfile.is_file() or json.loads(sfile.read_text()).get("search_digest") != sha256_file(cell / "search" / SEARCH_RESULT):
            sel_cfg = config_mod.build_config("select", protocol, {"run": str(cell / "search"), "progress": progress})
            summary = op_strength(cell / "search", sel_cfg, cell / "strength")
            write_json(sfile, {**summary, "search_digest": sha256_file(cell / "search" / SEARCH_RESULT)})
    return [{k: r[k] for k in RUN_FIELDS} for r in rows]


def _run_cell_kwargs(kw: dict[str, Any]) -> list[dict[str, Any]]:
    return run_cell(**kw)


def cell_kwargs(spec: GridSpec, data: str | None, threads: int = 0, progress: bool = False) -> list[dict[str, Any]]:
    # the strength analysis runs on each method's first seed only
    return [dict(protocol=spec.protocol, method=m, seed=s, selections=spec.selections, out=spec.out, data=data,
                 pt_methods=spec.pt_methods, strength=spec.strength and s == spec.seeds[0], threads=threads,
                 progress=progress)
            for m, s in spec.cells()]


def run_grid(spec: GridSpec, data: str | None = None, workers: int = 1, threads: int = 0,
             on_rows: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Run every cell (``workers`` processes, ``threads`` torch threads each), then write the report.
    Cells already finished are read back from their run directories."""
    check_output_dir(spec.out, "out")  # both folders are checked before any cell runs
    check_output_dir(spec.report, "report")
    jobs = cell_kwargs(spec, data, threads)
    rows: list[dict[str, Any]] = []

    def collect(new: list[dict[str, Any]]) -> None:
        rows.extend(new)
        write_runs_csv(Path(spec.report) / "runs.csv", rows, merge=True)
        if on_rows is not None:
            on_rows(new)

    failures: list[str] = []
    busy: list[dict[str, Any]] = []

    def failed(kw: dict[str, Any], exc: BaseException) -> None:
        if isinstance(exc, CellBusy):  # another grid computes it: come back to it at the end
            busy.append(kw)
            return
        msg = f"{kw['method']} seed {kw['seed']}: {type(exc).__name__}: {exc}"
        failures.append(msg)
        print(f"[grid {spec.name}] FAILED {msg}", file=sys.stderr, flush=True)

    first = [{**kw, "wait": False} for kw in jobs]
    _run_jobs(first, workers, collect, failed)
    if busy:  # cells another grid was computing: wait for it, then read them back
        again = [{**kw, "wait": True} for kw in busy]
        busy.clear()
        _run_jobs(again, workers, collect, failed)
    if rows or (Path(spec.report) / "runs.csv").is_file():
        write_report(spec, rows)
    if failures:
        raise NasError(f"grid {spec.name}: {len(failures)} of {len(jobs)} cells failed (first: {failures[0]}); "
                       f"rerun the same command to retry them, finished cells are kept")
    return rows


def _run_jobs(jobs: list[dict[str, Any]], workers: int, collect: Callable, failed: Callable) -> None:
    if workers <= 1:
        for kw in jobs:
            try:
                collect(run_cell(**kw))
            except Exception as exc:  # one failing cell must not stop the others
                failed(kw, exc)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: workers start clean (no CUDA context or thread pool inherited from this process)
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_run_cell_kwargs, kw): kw for kw in jobs}
            for fut in as_completed(futures):
                try:
                    collect(fut.result())
                except Exception as exc:
                    failed(futures[fut], exc)


# ------------------------------------------------------------------------------------------ report
def write_runs_csv(path: Path, rows: list[dict[str, Any]], merge: bool = False) -> None:
    """The per-run CSV, sorted; with ``merge`` the rows already in the file for other cells stay.
    Writers hold ``<path>.lock``, so that concurrent merges (two grids) lose no row."""
    from filelock import FileLock

    path = Path(path)
    check_output_dir(path.parent, "report")
    with FileLock(str(path) + ".lock"):
        _write_runs_csv(path, rows, merge)


def _write_runs_csv(path: Path, rows: list[dict[str, Any]], merge: bool) -> None:
    keep: dict[tuple, dict[str, Any]] = {}
    if merge and path.is_file():
        for r in read_runs_csv(path):
            keep[(r["protocol"], r["method"], r["selection"], int(r["seed"]))] = r
    for r in rows:
        keep[(r["protocol"], r["method"], r["selection"], int(r["seed"]))] = r
    ordered = [keep[k] for k in sorted(keep)]

    def w(p: Path) -> None:
        with open(p, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=RUN_FIELDS)
            wr.writeheader()
            for r in ordered:
                wr.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in RUN_FIELDS})

    atomic_write(path, w)


def read_runs_csv(path: Path) -> list[dict[str, Any]]:
    from nas.schemas import validate_runs

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return validate_runs(rows, str(path))


def _mean_std(vals: list[float]) -> tuple[float, float]:
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarise(rows: Iterable[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """One row per (method, selection): mean ± std of the three datasets, search minutes, runs."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["selection"]), []).append(r)
    order = {m: i for i, m in enumerate(methods)}
    out = []
    for (method, selection), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        row: dict[str, Any] = {"method": method, "selection": selection, "runs": len(rs),
                               "seeds": " ".join(str(r["seed"]) for r in sorted(rs, key=lambda r: int(r["seed"])))}
        for d in DATASETS:
            row[f"{d}_mean"], row[f"{d}_std"] = _mean_std([float(r[d]) for r in rs])
        row["search_minutes"] = _mean_std([float(r["search_minutes"]) for r in rs])[0]
        row["select_minutes"] = _mean_std([float(r["select_minutes"]) for r in rs])[0]
        out.append(row)
    return out


def table_markdown(summary: list[dict[str, Any]], oracle: dict[str, float], title: str) -> str:
    head = ("| method | selection | runs | CIFAR-10 | CIFAR-100 | ImageNet16-120 | search (min) | selection (min) |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = [f"**{title}**", "", head.rstrip("\n")]
    for r in summary:
        cells = [f"{r[f'{d}_mean']:.2f} ± {r[f'{d}_std']:.2f}" for d in DATASETS]
        lines.append(f"| {r['method']} | {r['selection']} | {r['runs']} | " + " | ".join(cells)
                     + f" | {r['search_minutes']:.1f} | {r['select_minutes']:.1f} |")
    lines.append("| oracle (best in table) | - | - | " + " | ".join(f"{oracle[d]:.2f}" for d in DATASETS) + " | - | - |")
    return "\n".join(lines) + "\n"


def write_report(spec: GridSpec, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Table (markdown + CSV), per-run CSV and figures under ``spec.report``; returns the paths."""
    report = Path(spec.report)
    runs_csv = report / "runs.csv"
    if rows:
        write_runs_csv(runs_csv, rows, merge=True)
    if not runs_csv.is_file():
        raise NasError(f"{runs_csv}: no finished runs to report")
    all_rows = [r for r in read_runs_csv(runs_csv) if r["protocol"] == spec.name]
    summary = summarise(all_rows, spec.methods)
    table = load_table()
    oracle = {d: table.oracle(d)[1] for d in DATASETS}
    md = table_markdown(summary, oracle, f"NAS-Bench-201, protocol {spec.name}: test accuracy (%) of the "
                                         f"selected cell, mean ± std over seeds")
    atomic_write(report / "table.md", lambda p: p.write_text(md))

    def wt(p: Path) -> None:
        with open(p, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(summary[0]))
            wr.writeheader()
            for r in summary:
                wr.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
            wr.writerow({"method": "oracle", "selection": "-", "runs": 0, "seeds": "",
                         **{f"{d}_mean": f"{oracle[d]:.4f}" for d in DATASETS},
                         **{f"{d}_std": "0" for d in DATASETS}, "search_minutes": "", "select_minutes": ""})

    atomic_write(report / "table.csv", wt)
    figures = draw_figures(spec, all_rows, report / "figures")
    metrics = {f"{r['method']}/{r['selection']}/{d}": r[f"{d}_mean"] for r in summary for d in DATASETS}
    write_json(report / "metrics.json", {"protocol": spec.name, "runs": len(all_rows), "table": metrics})
    return {"table_md": str(report / "table.md"), "table_csv": str(report / "table.csv"), "runs_csv": str(runs_csv),
            "figures": figures, "summary": summary, "markdown": md}


# ----------------------------------------------------------------------------------------- figures
def _result(spec: GridSpec, method: str, seed: int) -> dict[str, Any] | None:
    p = Path(spec.out) / f"{method}-s{seed}" / "search" / "result.json"
    return json.loads(p.read_text()) if p.is_file() else None


def collect_curves(spec: GridSpec, folder: Path) -> dict[str, Any]:
    """The per-run curves the figures are drawn from, keyed ``method/seed``: each op's mean mixing
    weight per epoch, the top-eigenvalue curve and the strength analysis.  They are read from the
    run directories and kept in ``curves.json`` beside the table, so the figures can be redrawn
    from committed data (``nas grid --report-only``) without the run directories."""
    path = folder / "curves.json"
    curves: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    for m in spec.methods:
        if not trains_alpha(m):
            continue
        for s in spec.seeds:
            res = _result(spec, m, s)
            if res is None:
                continue
            edge_ops = get_space(res["space"]).edge_ops
            per_epoch = [op_means(h["weights"], edge_ops) for h in res["history"]]
            entry: dict[str, Any] = {
                "epochs": [h["epoch"] for h in res["history"]],
                "ops": {op: [e.get(op) for e in per_epoch] for op in dict.fromkeys(o for e in per_epoch for o in e)},
            }
            if "hessian" in res:
                entry["hessian_epochs"] = res["hessian"]["epochs"]
                entry["hessian"] = res["hessian"]["top_eigenvalue"]
            strength = Path(spec.out) / f"{m}-s{s}" / "strength" / "strength.json"
            if strength.is_file():
                st = json.loads(strength.read_text())
                entry["strength"] = {"spearman": st["spearman"],
                                     "rows": [{k: r[k] for k in ("edge", "op", "weight", "drop")} for r in st["rows"]]}
            curves[f"{m}/{s}"] = entry
    if curves:
        atomic_write(path, lambda p: p.write_text(json.dumps(curves, indent=1, sort_keys=True) + "\n"))
    return curves


def draw_figures(spec: GridSpec, rows: list[dict[str, Any]], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    curves = collect_curves(spec, folder.parent)

    def save(fig, name: str) -> None:
        atomic_write(folder / name, lambda p: fig.savefig(p, format="png"))
        plt.close(fig)
        written.append(str(folder / name))

    methods = [m for m in spec.methods if trains_alpha(m)]
    runs = {m: [curves[f"{m}/{s}"] for s in spec.seeds if f"{m}/{s}" in curves] for m in methods}
    runs = {m: r for m, r in runs.items() if r}
    # 1. each op's mean mixing weight over the epochs: mean over seeds, band = min..max over seeds
    if runs:
        cols = min(3, len(runs))
        nrows = math.ceil(len(runs) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.3 * nrows), dpi=110, squeeze=False,
                                 sharey=True)
        for ax, (m, rs) in zip(axes.flat, runs.items()):
            n = min(len(r["epochs"]) for r in rs)
            xs = rs[0]["epochs"][:n]
            for op in rs[0]["ops"]:
                ys = np.array([[np.nan if v is None else v for v in r["ops"].get(op, [None] * n)[:n]] for r in rs])
                style = {"lw": 2.2} if op in ("skip_connect", "nor_conv_3x3") else {"lw": 1.0, "alpha": 0.85}
                line, = ax.plot(xs, np.nanmean(ys, 0), label=op, **style)
                if len(rs) > 1:
                    ax.fill_between(xs, np.nanmin(ys, 0), np.nanmax(ys, 0), color=line.get_color(), alpha=0.15, lw=0)
            ax.set_title(f"{m} (mean of {len(rs)} seeds)", fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        for ax in axes[:, 0]:
            ax.set_ylabel("mean mixing weight over edges")
        for ax in list(axes.flat)[len(runs):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{spec.name}: op weights during search (lines: mean over seeds; bands: min to max)",
                     fontsize=10)
        fig.tight_layout()
        save(fig, "alpha_per_op.png")
    # 2. dominant Hessian eigenvalue over the epochs: mean over seeds, band = min..max, log scale
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=110)
    drawn = False
    for m, rs in runs.items():
        hs = [r for r in rs if r.get("hessian")]
        if not hs:
            continue
        n = min(len(r["hessian"]) for r in hs)
        xs = hs[0]["hessian_epochs"][:n]
        ys = np.array([r["hessian"][:n] for r in hs])
        line, = ax.plot(xs, ys.mean(0), marker="o", ms=3, label=f"{m} ({len(hs)} seeds)")
        if len(hs) > 1:
            ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15, lw=0)
        drawn = True
    if drawn:
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(r"$\lambda_{\max}\,(\nabla^2_\alpha \mathcal{L}_{val})$")
        ax.set_title(f"{spec.name}: sharpness during search (mean over seeds; bands: min to max)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save(fig, "eigenvalue.png")
    else:
        plt.close(fig)
    # 3. PT vs magnitude on the same supernets
    pairs = []
    for m in methods:
        for s in spec.seeds:
            mag = [r for r in rows if r["method"] == m and int(r["seed"]) == s and r["selection"] == "magnitude"]
            pt = [r for r in rows if r["method"] == m and int(r["seed"]) == s and r["selection"] == "pt"]
            if mag and pt:
                pairs.append((m, s, float(mag[0]["cifar10"]), float(pt[0]["cifar10"])))
    if pairs:
        fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=110)
        labels = [f"{m}\nseed {s}" for m, s, _, _ in pairs]
        x = range(len(pairs))
        ax.bar([i - 0.2 for i in x], [p[2] for p in pairs], width=0.4, label="magnitude")
        ax.bar([i + 0.2 for i in x], [p[3] for p in pairs], width=0.4, label="PT")
        ax.axhline(table_oracle := _oracle_c10(), color="k", ls="--", lw=0.8, label=f"oracle {table_oracle:.2f}")
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_ylabel("NB201 CIFAR-10 test accuracy (%)")
        ax.set_title(f"{spec.name}: PT vs magnitude on the same supernets", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
        fig.tight_layout()
        save(fig, "pt_vs_magnitude.png")
    # 4. α vs accuracy drop (the strength analysis of each method's first seed that has one):
    #    colour = method, marker = op
    pts = [(m, next(r["strength"] for r in rs if "strength" in r)) for m, rs in runs.items()
           if any("strength" in r for r in rs)]
    if pts:
        markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
        ops = list(dict.fromkeys(r["op"] for _, st in pts for r in st["rows"]))
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (_, st) in enumerate(pts):
            for j, op in enumerate(ops):
                sel = [r for r in st["rows"] if r["op"] == op]
                if sel:
                    ax.scatter([r["weight"] for r in sel], [100 * r["drop"] for r in sel], s=22,
                               color=colours[i % len(colours)], marker=markers[j % len(markers)], alpha=0.85)
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], ls="", marker="o", color=colours[i % len(colours)],
                          label=f"{m}: Spearman's ρ = {st['spearman']:.2f}") for i, (m, st) in enumerate(pts)]
        handles += [Line2D([], [], ls="", marker=markers[j % len(markers)], color="grey", label=op)
                    for j, op in enumerate(ops)]
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel("mixing weight of the op")
        ax.set_ylabel("supernet val. accuracy drop without the op (points)", fontsize=8)
        ax.set_title(f"{spec.name}: α vs accuracy drop (Spearman's rank correlation ρ)", fontsize=10)
        ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        save(fig, "alpha_vs_drop.png")
    return written


def _oracle_c10() -> float:
    return load_table().oracle("cifar10")[1]

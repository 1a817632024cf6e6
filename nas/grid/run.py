"""Running a grid: one cached cell per (method, seed), a process pool over the cells."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas import config as config_mod
from nas.benchmarks import load_table
from nas.grid.report import write_report, write_runs_csv
from nas.grid.spec import ARCHIVE, DATASETS, RETRAIN_FIELDS, RUN_FIELDS, GridSpec, cell_dir
from nas.landscape import landscape as loss_landscape
from nas.methods import trains_alpha
from nas.rundir import SEARCH_RESULT, kept_epochs, read_search_result, same_config
from nas.search import search
from nas.select import PT_LEGACY, op_strength, same_selection
from nas.spaces import get_space
from nas.stages import resume_or_restart, retrain_stage, select_stage
from nas.timings import read_json as read_run_json
from nas.utils import NasError, RunLock, check_output_dir, read_json, sha256_file, write_json


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
        if old.get("search_digest") == digest and same_selection(old.get("select_config", {}), key):
            return old, True
    # PT checkpoints each decision in its folder: an interrupted grid continues the selection
    sel = resume_or_restart(select_stage, sel_cfg)
    sel = {**sel, "search_digest": digest, "select_config": key}
    write_json(out, sel)
    return sel, False


def cached_retrain(cfg: config_mod.RetrainConfig) -> tuple[dict[str, Any], bool]:
    """The retrain of ``cfg``: read back when ``<out>/result.json`` was written with the same
    config (after the space's defaults), otherwise run, resuming its checkpoint."""
    from nas.train import RESULT, RESUME_FREE_KEYS

    path = Path(cfg.out) / RESULT
    if path.is_file():
        try:
            old = read_run_json(path)  # with its seconds (timings.json beside it)
        except NasError:
            old = {}
        now = config_mod.resolve_defaults(cfg, get_space(cfg.space).retrain_defaults)
        if isinstance(old.get("config"), dict) and "test_acc" in old and same_config(
                old["config"], config_mod.to_dict(now), config_mod.to_dict(config_mod.RetrainConfig()),
                RESUME_FREE_KEYS):
            return old, True
    return resume_or_restart(retrain_stage, cfg), False


def _final_eigenvalue(res: dict[str, Any]) -> float:
    eig = res.get("hessian", {}).get("top_eigenvalue") or []
    return float(eig[-1]) if eig else math.nan


class CellBusy(NasError):
    """Another process is computing this cell."""


def run_cell(protocol: str, method: str, seed: int, selections: list[str], out: str, data: str | None = None,
             pt_methods: list[str] | None = None, strength: bool = False, threads: int = 0,
             progress: bool = False, wait: bool = True, landscape: bool = False,
             curve_every: int = 0, space: str | None = None, retrain: bool = False,
             variant: dict[str, Any] | None = None, report: str | None = None,
             reuse: list[str] | None = None) -> list[dict[str, Any]]:
    """Search one (space, method, seed) of a protocol, select with each selection, then look the
    genotypes up (``RUN_FIELDS`` rows) or, with ``retrain``, train each from scratch and test it
    (``RETRAIN_FIELDS`` rows).  ``variant`` holds a named variant's search settings.  The cell's
    folder is claimed for the whole computation: a second grid on the same folder waits for it
    (``wait``) or gets ``CellBusy``, and then reads the finished cell back instead of computing it again.

    With ``report`` (the grid's report folder), an unstarted cell is first seeded from the results
    archived there (``restore_cell``), and the finished cell's results are archived there
    (``archive_cell``): the CLI grid and the Prefect flow both carry a grid across machines this way."""
    cell = cell_dir(out, space, method, seed)
    try:
        with RunLock(cell, wait=wait, what="grid cell"):
            for source in [report, *(reuse or [])] if report else []:
                if restore_cell(cell, Path(source)):
                    print(f"[grid {Path(protocol).stem}] {cell.name}: read back from {Path(source) / ARCHIVE}",
                          file=sys.stderr, flush=True)
                    break
            rows = _run_cell(CellJob(protocol, method, seed, list(selections), out, data, pt_methods, strength,
                                     threads, progress, landscape, curve_every, space, retrain, variant or {}))
            if report:
                archive_cell(cell, Path(report))
            return rows
    except NasError as exc:
        if not wait and "another process is writing" in str(exc):
            raise CellBusy(f"{cell}: computed by another grid process") from None
        raise


@dataclasses.dataclass
class CellJob:
    """One (space, method, seed) of a grid and what to do with it (``run_cell``'s arguments)."""

    protocol: str
    method: str
    seed: int
    selections: list[str]
    out: str
    data: str | None = None
    pt_methods: list[str] | None = None
    strength: bool = False
    threads: int = 0
    progress: bool = False
    landscape: bool = False
    curve_every: int = 0
    space: str | None = None
    retrain: bool = False
    variant: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def cell(self) -> Path:
        return cell_dir(self.out, self.space, self.method, self.seed)

    @property
    def tag(self) -> str:
        return f"[grid {Path(self.protocol).stem}] {self.space + ' ' if self.space else ''}{self.method} seed {self.seed}"

    def search_overrides(self) -> dict[str, Any]:
        o: dict[str, Any] = {**self.variant, "seed": self.seed, "out": str(self.cell / "search"),
                             "progress": self.progress}
        o.setdefault("method", self.method)
        o.update({k: v for k, v in (("space", self.space), ("keep_every", self.curve_every), ("data", self.data)) if v})
        return o


def _say(job: CellJob, text: str) -> None:
    print(f"{job.tag}: {text}", file=sys.stderr, flush=True)


def _run_cell(job: CellJob) -> list[dict[str, Any]]:
    import torch

    if job.threads:
        torch.set_num_threads(job.threads)
    cfg = config_mod.build_config("search", job.protocol, job.search_overrides())
    if get_space(cfg.space).benchmark is None and not job.retrain:
        raise NasError(f"{job.protocol}: space {cfg.space!r} has no lookup table (only nb201 has): its cells must be "
                       f"trained from scratch (grid.retrain: true)")
    res, cached = cached_search(cfg)
    _say(job, f"search {'cached' if cached else 'done'} ({res['seconds'] / 60:.1f} min) -> {res['genotype']}")
    table = None if job.retrain else load_table()
    base = {"protocol": Path(job.protocol).stem, "method": job.method, "seed": job.seed,
            "search_minutes": res["seconds"] / 60, "final_eigenvalue": _final_eigenvalue(res)}
    rows: list[dict[str, Any]] = []
    own = not trains_alpha(cfg.method)  # one row, the method's own selection
    for selection in [res["selection"]] if own else job.selections:
        if selection in ("pt", "pt-fix") and job.pt_methods is not None and job.method not in job.pt_methods:
            continue
        row = dict(base)
        if selection == "magnitude" or own:
            row.update(genotype=res["genotype"], select_minutes=0.0)
        else:
            row.update(_selected(job, selection, rows))
        row["selection"] = selection
        geno = row["genotype"]
        if job.retrain:
            row.update(_retrained(job.protocol, cfg.space, geno, job.seed, job.cell / f"retrain-{selection}", job.data,
                                  job.progress))
            _say(job, f"{selection} retrained, test error {row['test_error']:.2f}%")
        else:
            row.update({d: table.accuracy(geno, d) for d in DATASETS}, skip_edges=geno.count("skip_connect"))
        rows.append(row)
    if not own:
        _analyses(job, res, table)
    fields = RETRAIN_FIELDS if job.retrain else RUN_FIELDS
    return [{k: r[k] for k in fields} for r in rows]


def _selected(job: CellJob, selection: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The genotype and minutes of a selection on the cell's supernet: PT, PT on the same search
    with α held uniform (``pt-fix``, its own search minutes), or verified selection (with PT's
    cell among the candidates when the cell has a PT row)."""
    cell, row = job.cell, {}
    run_dir = cell / "search"
    if selection == "pt-fix":  # the same search with α held at uniform, then PT on its supernet
        fix_cfg = config_mod.build_config("search", job.protocol, {
            **job.search_overrides(), "fix_alpha": True, "hessian_every": 0, "keep_every": 0,
            "out": str(cell / "search-fix")})
        fix_res, was = cached_search(fix_cfg)
        _say(job, f"fix-α search {'cached' if was else 'done'}")
        run_dir = cell / "search-fix"
        row.update(search_minutes=fix_res["seconds"] / 60, final_eigenvalue=math.nan)
    extra: dict[str, Any] = {}
    pt_row = next((r for r in rows if r["selection"] == "pt"), None)
    if selection == "verify":  # PT's cell (computed first: selections keep their order) joins in
        extra = {"method": "verify", "verify_with": [str(cell / "select-pt")] if pt_row else [],
                 **({"data": job.data} if job.data else {})}
    sel_cfg = config_mod.build_config("select", job.protocol, {
        "method": "pt", "run": str(run_dir), "out": str(cell / f"select-{selection}"), "seed": job.seed,
        "progress": job.progress, **extra})
    sel, was = cached_selection(sel_cfg, run_dir / SEARCH_RESULT)
    minutes = sel.get("seconds", 0.0) / 60
    if selection == "verify" and extra["verify_with"]:
        minutes += pt_row["select_minutes"]  # PT's minutes are part of this selection's cost
    _say(job, f"{selection} {'cached' if was else 'done'} -> {sel['genotype']}")
    return {**row, "genotype": sel["genotype"], "select_minutes": minutes}


def _analyses(job: CellJob, res: dict[str, Any], table: Any) -> None:
    """The cell's optional studies of its supernet, each redone only when the search changed: the
    op-strength table, the loss landscape, the selection-against-epoch curve."""
    cell = job.cell
    digest = sha256_file(cell / "search" / SEARCH_RESULT) if job.strength or job.landscape else ""
    if job.strength:
        sfile = cell / "strength" / "strength.json"
        sel_cfg = config_mod.build_config("select", job.protocol, {"run": str(cell / "search"),
                                                                    "progress": job.progress})
        old = json.loads(sfile.read_text()) if sfile.is_file() else {}
        # a file without the measurement's settings was made with the first ones (PT_LEGACY)
        same = (old.get("removal", PT_LEGACY["pt_removal"]) == sel_cfg.pt_removal
                and old.get("bn", PT_LEGACY["pt_bn"]) == sel_cfg.pt_bn)
        if not same or old.get("search_digest") != digest:
            summary = op_strength(cell / "search", sel_cfg, cell / "strength")
            write_json(sfile, {**summary, "search_digest": digest})
    if job.landscape:
        lfile = cell / "landscape" / "landscape.json"
        if not lfile.is_file() or json.loads(lfile.read_text()).get("search_digest") != digest:
            res_l = loss_landscape(cell / "search", out=cell / "landscape")
            write_json(lfile, {**res_l, "search_digest": digest})
    if job.curve_every and table is not None:
        epoch_curve(job.protocol, cell, res, job.seed, job.progress, table)


def _retrained(protocol: str, space: str, genotype: str, seed: int, folder: Path, data: str | None,
               progress: bool) -> dict[str, Any]:
    """Train a selected cell from scratch with the protocol's retrain section (cached, resumable);
    its test numbers and the parameter-free ops of its normal cell."""
    overrides: dict[str, Any] = {"space": space, "genotype": genotype, "seed": seed, "out": str(folder),
                                 "progress": progress}
    if data:
        overrides["data"] = data
    rt, _ = cached_retrain(config_mod.build_config("retrain", protocol, overrides))
    sp = get_space(space)
    ops = sp.counted_ops(sp.parse_genotype(genotype))
    acc = 100.0 * float(rt["test_acc"])
    return {"space": space, "test_acc": acc, "test_error": 100.0 - acc, "params_m": rt["params"] / 1e6,
            "normal_skip": ops.count("skip_connect"), "normal_noise": ops.count("noise"),
            "normal_none": ops.count("none"), "retrain_minutes": rt["seconds"] / 60}


CURVE = "curve.json"


def epoch_curve(protocol: str, cell: Path, res: dict[str, Any], seed: int, progress: bool, table: Any) -> list[dict]:
    """The magnitude and PT selections of the supernets the search kept, looked up in the benchmark:
    one row per (epoch, selection), written to ``<cell>/curve.json``.  PT on the final supernet is
    the cell's own PT selection (shared, cached); each PT is cached and resumable like it."""
    name = Path(protocol).stem
    search_dir = cell / "search"
    digest = sha256_file(search_dir / SEARCH_RESULT)
    done = cell / CURVE
    if done.is_file():  # made from this very search: read back (the kept supernets may be gone)
        old = json.loads(done.read_text())
        if old.get("search_digest") == digest:
            return old["rows"]
    final = res["history"][-1]["epoch"]
    rows = []
    for epoch in [*kept_epochs(search_dir), final]:
        if rows and epoch == rows[-1]["epoch"]:
            continue
        at = 0 if epoch == final else epoch
        for selection in ("magnitude", "pt"):
            sel_cfg = config_mod.build_config("select", protocol, {
                "method": selection, "run": str(search_dir), "epoch": at, "seed": seed, "progress": progress,
                "out": None if selection == "magnitude" else str(cell / ("select-pt" if not at else f"select-pt-e{epoch}"))})
            if selection == "magnitude":
                geno = select_stage(sel_cfg)["genotype"]
            else:
                sel, was = cached_selection(sel_cfg, search_dir / SEARCH_RESULT)
                geno = sel["genotype"]
                print(f"[grid {name}] {cell.name}: pt at epoch {epoch} {'cached' if was else 'done'} -> {geno}",
                      file=sys.stderr, flush=True)
            rows.append({"epoch": epoch, "selection": selection, "genotype": geno,
                         "cifar10": table.accuracy(geno, "cifar10")})
    write_json(cell / CURVE, {"search_digest": digest, "rows": rows})
    return rows


def _json_files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*.json") if p.is_file())


def archive_cell(cell: Path, report: Path) -> Path:
    """Copy a finished cell's JSON results into ``<report>/cells/<cell name>/`` (each file written
    atomically, the search result last, so that a half-copied cell is never taken as finished)."""
    import shutil

    from nas.utils import atomic_write

    dest = Path(report) / ARCHIVE / cell.name
    files = _json_files(cell)
    files.sort(key=lambda rel: rel == Path("search") / SEARCH_RESULT)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp, src=cell / rel: shutil.copyfile(src, tmp))
    return dest


def restore_cell(cell: Path, report: Path) -> bool:
    """Seed an unstarted cell folder from its archived results; False when there is nothing to
    restore or the folder already holds a search (a run folder is never overwritten)."""
    import shutil

    src = Path(report) / ARCHIVE / cell.name
    if not (src / "search" / SEARCH_RESULT).is_file() or (cell / "search").exists():
        return False
    for rel in _json_files(src):
        (cell / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, cell / rel)
    return True


def _run_cell_kwargs(kw: dict[str, Any]) -> list[dict[str, Any]]:
    return run_cell(**kw)


def _read_archive(folder: Path) -> dict[str, Any]:
    """A cell's archived JSON results: relative path -> content."""
    return {rel.as_posix(): read_json(folder / rel) for rel in _json_files(folder)}


def ship_cell(kw: dict[str, Any]) -> dict[str, Any]:
    """A cell's job made self-contained on the client, for a worker that shares no folder with it:
    the protocol file's content, absolute paths for the run folder and the data, and the cell's
    archived results from the client's report folder (so a finished cell is read back, not rerun)."""
    kw = dict(kw)
    protocol = Path(kw["protocol"])
    kw["protocol_text"] = {"name": protocol.name, "text": config_mod.load_yaml_text(protocol)}
    kw["out"] = str(Path(kw["out"]).resolve())
    if kw.get("data"):
        kw["data"] = str(Path(kw["data"]).resolve())
    report, reuse = kw.pop("report", None), kw.pop("reuse", None) or []
    archived: dict[str, Any] = {}
    name = cell_dir("", kw.get("space"), kw["method"], kw["seed"]).name
    for source in [report, *reuse] if report else []:
        folder = Path(source) / ARCHIVE / name
        if (folder / "search" / SEARCH_RESULT).is_file():
            archived = _read_archive(folder)
            break
    kw["archived"] = archived
    return kw


def run_shipped_cell(kw: dict[str, Any]) -> dict[str, Any]:
    """On a worker: run a job made by ``ship_cell`` in a scratch folder of this machine, and return
    the rows with the cell's JSON results (``files``: relative path -> content) for the client to
    archive in its report folder."""
    import tempfile

    kw = dict(kw)
    shipped, archived = kw.pop("protocol_text"), kw.pop("archived")
    with tempfile.TemporaryDirectory(prefix="nas-cell-") as scratch:
        protocol = Path(scratch) / shipped["name"]
        protocol.write_text(shipped["text"])
        report = Path(scratch) / "report"
        name = cell_dir("", kw.get("space"), kw["method"], kw["seed"]).name
        for rel, obj in archived.items():
            write_json(report / ARCHIVE / name / rel, obj)
        rows = run_cell(**{**kw, "protocol": str(protocol), "report": str(report)})
        files = _read_archive(report / ARCHIVE / name)
    return {"rows": rows, "files": files, "cell": name, "host": os.uname().nodename, "pid": os.getpid()}


def store_shipped_cell(report: str | Path, result: dict[str, Any]) -> Path:
    """On the client: a shipped cell's returned results into ``<report>/cells/<cell>/`` (each file
    atomically, the search result last)."""
    dest = Path(report) / ARCHIVE / result["cell"]
    for rel in sorted(result["files"], key=lambda r: r == f"search/{SEARCH_RESULT}"):
        write_json(dest / rel, result["files"][rel])
    return dest


def cell_kwargs(spec: GridSpec, data: str | None, threads: int = 0, progress: bool = False) -> list[dict[str, Any]]:
    # the strength analysis and the landscape run on each method's first seed only
    jobs = []
    for sp, m, s in spec.cells():
        kw = dict(protocol=spec.protocol, method=m, seed=s, selections=spec.selections, out=spec.out, data=data,
                  pt_methods=spec.pt_methods, strength=m in spec.strength and s == spec.seeds[0], threads=threads,
                  progress=progress, landscape=spec.landscape and s == spec.seeds[0],
                  curve_every=spec.curve_every(m, s), report=spec.report)
        if spec.reuse:
            kw["reuse"] = spec.reuse
        if sp or spec.retrain or m in spec.variants:  # (the one-space lookup grid's jobs stay as they were)
            kw.update(space=sp, retrain=spec.retrain, variant=spec.variants.get(m))
        jobs.append(kw)
    return jobs


def run_grid(spec: GridSpec, data: str | None = None, workers: int = 1, threads: int = 0,
             on_rows: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Run every cell (``workers`` processes, ``threads`` torch threads each), then write the report.
    Cells already finished are read back from their run directories."""
    check_output_dir(spec.out, "out")  # both folders are checked before any cell runs
    check_output_dir(spec.report, "report")
    jobs = cell_kwargs(spec, data, threads)  # each cell is restored from and archived to the report
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
        where = f"{kw['space']} " if kw.get("space") else ""
        msg = f"{where}{kw['method']} seed {kw['seed']}: {type(exc).__name__}: {exc}"
        failures.append(msg)
        print(f"[grid {spec.name}] FAILED {msg}", file=sys.stderr, flush=True)

    first = [{**kw, "wait": False} for kw in jobs]
    run_jobs(first, workers, collect, failed)
    if busy:  # cells another grid was computing: wait for it, then read them back
        again = [{**kw, "wait": True} for kw in busy]
        busy.clear()
        run_jobs(again, workers, collect, failed)
    if rows or (Path(spec.report) / "runs.csv").is_file():
        write_report(spec, rows)
    if failures:
        raise NasError(f"grid {spec.name}: {len(failures)} of {len(jobs)} cells failed (first: {failures[0]}); "
                       f"rerun the same command to retry them, finished cells are kept")
    return rows


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """In a worker process: a daemon thread that ends the process once ``parent`` is gone (the
    worker is re-parented), so that a grid killed by SIGTERM or SIGKILL leaves no orphan worker.
    Cells write their results atomically and hold their folder's lock through the OS, so a worker
    ended this way leaves a resumable checkpoint and no stale claim."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(143)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_jobs(jobs: list[dict[str, Any]], workers: int, collect: Callable, failed: Callable,
              fn: Callable[[dict[str, Any]], Any] | None = None) -> None:
    """Run ``fn(job)`` for every job (default: a grid cell), in ``workers`` processes; ``collect``
    takes each result, ``failed`` each job that raised.  ``fn`` must be a module-level function."""
    fn = fn or _run_cell_kwargs
    if workers <= 1:
        for kw in jobs:
            try:
                collect(fn(kw))
            except Exception as exc:  # one failing cell must not stop the others
                failed(kw, exc)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: workers start clean (no CUDA context or thread pool inherited from this process);
        # each leaves when this process dies (a killed grid leaves no worker computing on)
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(fn, kw): kw for kw in jobs}
            for fut in as_completed(futures):
                try:
                    collect(fut.result())
                except Exception as exc:
                    failed(futures[fut], exc)


def rows_from_tracking(spec: GridSpec, uri: str | None = None) -> list[dict[str, Any]]:
    """The rows and archived cells of the protocol's latest benchmark flow run, read from the
    tracking server alone (each row's run holds ``cell/cell.json``: the row and the cell's JSON
    results); the cells are written into ``<report>/cells/``.  A one-line error when the server has
    no such run."""
    import json
    import tempfile

    from nas import tracking

    tr = tracking.Tracker(uri or tracking.tracking_uri())
    client = tr.client
    parents = client.search_runs([tr.experiment_id], f"tags.stage = 'benchmark' and tags.protocol = '{spec.name}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise NasError(f"tracking {tr.uri}: no benchmark run of protocol {spec.name!r} (run the nas-benchmark "
                       f"flow with tracking on first)")
    parent = parents[0].info.run_id
    children = client.search_runs([tr.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=10000)
    rows, cells = [], {}
    with tempfile.TemporaryDirectory(prefix="nas-report-") as tmp:
        for run in children:
            try:
                path = client.download_artifacts(run.info.run_id, "cell/cell.json", tmp)
            except Exception:  # a row logged before rows carried their cell: nothing to rebuild from
                raise NasError(f"tracking {tr.uri}: run {run.info.run_id} of benchmark {parent} has no "
                               f"cell/cell.json; rerun the flow to log it") from None
            doc = json.loads(Path(path).read_text())
            rows.append(doc["row"])
            cells[doc["cell"]] = doc["files"]
    for name, files in cells.items():
        store_shipped_cell(spec.report, {"cell": name, "files": files})
    return rows

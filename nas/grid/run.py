"""Running a grid: one cached cell per (space, method, seed), each a list of run-layer jobs
(``nas.runs.jobs``: its search, selections and retrains), the cells run in a pool of processes."""

from __future__ import annotations

import dataclasses
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
from nas.rundir import SEARCH_RESULT, kept_epochs
from nas.runs import jobs, store
from nas.runs import progress as progress_mod
from nas.runs.files import read_json, write_json
from nas.runs.runner import run_jobs
from nas.select import PT_LEGACY, op_strength
from nas.spaces import get_space
from nas.stages import select_stage
from nas.utils import FolderBusy, NasError, RunLock, check_output_dir, sha256_file


def _final_eigenvalue(res: dict[str, Any]) -> float:
    eig = res.get("hessian", {}).get("top_eigenvalue") or []
    return float(eig[-1]) if eig else math.nan


def _read_or_empty(path: Path) -> dict[str, Any]:
    """A cell's analysis file, or {} when it is missing or damaged (the analysis is then redone)."""
    try:
        doc = read_json(path) if path.is_file() else {}
    except NasError:
        return {}
    return doc if isinstance(doc, dict) else {}


class CellBusy(NasError):
    """Another process is computing this cell."""


@dataclasses.dataclass
class CellJob:
    """One (space, method, seed) of a grid and what to do with it: search, select with each
    selection, then look the genotypes up or (``retrain``) train each from scratch.  ``variant``
    holds a named variant's search settings; ``report`` (the grid's report folder) and ``reuse``
    (other reports) are where the cell's archived results are read back from and written to."""

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
    report: str | None = None
    reuse: list[str] = dataclasses.field(default_factory=list)
    wait: bool = True  # a cell another process holds: wait for it, or raise CellBusy

    @property
    def cell(self) -> Path:
        return cell_dir(self.out, self.space, self.method, self.seed)

    @property
    def label(self) -> str:
        return f"{self.space + ' ' if self.space else ''}{self.method} seed {self.seed}"

    @property
    def tag(self) -> str:
        return f"[grid {Path(self.protocol).stem}] {self.label}"

    @property
    def archives(self) -> list[Path]:
        """Where the cell's archived results may be: its report's archive, then each reuse report's."""
        return [Path(src) / ARCHIVE / self.cell.name for src in [self.report, *self.reuse]] if self.report else []

    def search_overrides(self) -> dict[str, Any]:
        o: dict[str, Any] = {**self.variant, "seed": self.seed, "out": str(self.cell / "search"),
                             "progress": self.progress}
        o.setdefault("method", self.method)
        o.update({k: v for k, v in (("space", self.space), ("keep_every", self.curve_every), ("data", self.data)) if v})
        return o


SEARCH_ARCHIVED = f"search/{SEARCH_RESULT}"  # an archived cell holding it is complete


def run_cell(job: CellJob) -> list[dict[str, Any]]:
    """Compute one cell (``RUN_FIELDS`` rows, or ``RETRAIN_FIELDS`` with ``retrain``).  The cell's
    folder is claimed for the whole computation: a second grid on the same folder waits for it
    (``job.wait``) or gets ``CellBusy``, and then reads the finished cell back instead of computing it
    again.  With a ``report``, an unstarted cell is first seeded from the results archived there
    (or in a ``reuse`` report), and the finished cell is archived there: the CLI grid and the
    Prefect flow both carry a grid across machines this way."""
    cell = job.cell
    try:
        with RunLock(cell, wait=job.wait, what="grid cell"):
            for archive in job.archives:
                if store.restore(archive, cell, SEARCH_ARCHIVED):
                    _say(job, f"read back from {archive.parent}")
                    break
            rows = _run_cell(job)
            if job.report:
                store.archive(cell, Path(job.report) / ARCHIVE / cell.name, SEARCH_ARCHIVED)
            return rows
    except FolderBusy:
        if job.wait:
            raise
        raise CellBusy(f"{cell}: computed by another grid process") from None


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
    res, cached = jobs.cached(jobs.Job.of("search", cfg), restart=False)
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
        fix_res, was = jobs.cached(jobs.Job.of("search", fix_cfg), restart=False)
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
    sel, was = jobs.cached(jobs.Job.selection(sel_cfg))
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
        old = _read_or_empty(sfile)
        # a file without the measurement's settings was made with the first ones (PT_LEGACY)
        same = (old.get("removal", PT_LEGACY["pt_removal"]) == sel_cfg.pt_removal
                and old.get("bn", PT_LEGACY["pt_bn"]) == sel_cfg.pt_bn)
        if not same or old.get("search_digest") != digest:
            summary = op_strength(cell / "search", sel_cfg, cell / "strength")
            write_json(sfile, {**summary, "search_digest": digest})
    if job.landscape:
        lfile = cell / "landscape" / "landscape.json"
        if _read_or_empty(lfile).get("search_digest") != digest:
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
    rt, _ = jobs.cached(jobs.Job.of("retrain", config_mod.build_config("retrain", protocol, overrides)))
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
    old = _read_or_empty(done)  # made from this very search: read back (the kept supernets may be gone)
    if old.get("search_digest") == digest and isinstance(old.get("rows"), list):
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
                sel, was = jobs.cached(jobs.Job.selection(sel_cfg))
                geno = sel["genotype"]
                print(f"[grid {name}] {cell.name}: pt at epoch {epoch} {'cached' if was else 'done'} -> {geno}",
                      file=sys.stderr, flush=True)
            rows.append({"epoch": epoch, "selection": selection, "genotype": geno,
                         "cifar10": table.accuracy(geno, "cifar10")})
    write_json(cell / CURVE, {"search_digest": digest, "rows": rows})
    return rows


@dataclasses.dataclass
class ShippedCell:
    """A cell made self-contained on the client, for a worker that shares no folder with it: the
    job (absolute paths), the protocol file's name and content, and the cell's archived results
    from the client's report folder (so a finished cell is read back, not rerun)."""

    job: CellJob
    protocol_name: str
    protocol_text: str
    archived: dict[str, Any]
    progress: progress_mod.ProgressStore | None = None


def ship_cell(job: CellJob, tracking_uri: str | None = None) -> ShippedCell:
    """The cell of ``job`` made self-contained, with its archived results from the job's report
    (or a ``reuse`` report) when it has some.  The data path is made absolute here, on the
    client; a relative run folder stays relative, so the cell runs in that folder under its
    worker's own folder (the client's folders may be read-only there) and only its results come
    home.  With the client's ``tracking_uri`` (a server), the cell keeps its progress there while it
    runs (``nas.runs.progress``): a cell whose worker died continues on another from its last
    stored checkpoint."""
    archived: dict[str, Any] = {}
    for folder in job.archives:
        if (folder / SEARCH_ARCHIVED).is_file():
            archived = store.read_archive(folder)
            break
    protocol = Path(job.protocol)
    text = config_mod.load_yaml_text(protocol)
    job = dataclasses.replace(job, data=str(Path(job.data).resolve()) if job.data else None, report=None, reuse=[])
    label = f"{protocol.stem}/{job.cell.name}"
    kept = progress_mod.store_for(tracking_uri, label, text, job.cell.name, job.data or "")
    return ShippedCell(job, protocol.name, text, archived, kept)


def run_shipped_cell(shipped: ShippedCell) -> dict[str, Any]:
    """On a worker: run a shipped cell in a scratch folder of this machine, and return the rows with
    the cell's JSON results (``files``: relative path -> content) for the client to archive in its
    report folder."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nas-cell-") as scratch:
        protocol = Path(scratch) / Path(shipped.protocol_name).name
        protocol.write_text(shipped.protocol_text)
        report = Path(scratch) / "report"
        name = shipped.job.cell.name
        store.write_archive(report / ARCHIVE / name, shipped.archived, SEARCH_ARCHIVED)
        kept = None if shipped.archived else shipped.progress  # an archived cell is read back, not computed
        with progress_mod.kept(kept, shipped.job.cell, shipped.job.tag):
            rows = run_cell(dataclasses.replace(shipped.job, protocol=str(protocol), report=str(report)))
        files = store.read_archive(report / ARCHIVE / name)
    return {"rows": rows, "files": files, "cell": name, "host": os.uname().nodename, "pid": os.getpid()}


def store_shipped_cell(report: str | Path, result: dict[str, Any]) -> Path:
    """On the client: a shipped cell's returned results into ``<report>/cells/<cell>/``."""
    name = Path(str(result["cell"])).name
    return store.write_archive(Path(report) / ARCHIVE / name, result["files"], SEARCH_ARCHIVED)


def cell_jobs(spec: GridSpec, data: str | None, threads: int = 0, progress: bool = False) -> list[CellJob]:
    """The grid's cells; the strength analysis and the landscape run on each method's first seed only."""
    out = []
    for sp, m, s in spec.cells():
        out.append(CellJob(spec.protocol, m, s, list(spec.selections), spec.out, data, spec.pt_methods,
                           m in spec.strength and s == spec.seeds[0], threads, progress,
                           spec.landscape and s == spec.seeds[0], spec.curve_every(m, s), sp, spec.retrain,
                           dict(spec.variants.get(m) or {}), spec.report, list(spec.reuse or [])))
    return out


def run_grid(spec: GridSpec, data: str | None = None, workers: int = 1, threads: int = 0,
             on_rows: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Run every cell (``workers`` processes, ``threads`` torch threads each), then write the report.
    Cells already finished are read back from their run directories."""
    check_output_dir(spec.out, "out")  # both folders are checked before any cell runs
    check_output_dir(spec.report, "report")
    cells = cell_jobs(spec, data, threads)  # each cell is restored from and archived to the report
    rows: list[dict[str, Any]] = []
    failures = store.Failures(f"grid {spec.name}")
    busy: list[CellJob] = []

    def collect(new: list[dict[str, Any]]) -> None:
        rows.extend(new)
        write_runs_csv(Path(spec.report) / "runs.csv", rows)
        if on_rows is not None:
            on_rows(new)

    def failed(job: CellJob, exc: BaseException) -> None:
        if isinstance(exc, CellBusy):  # another grid computes it: come back to it at the end
            busy.append(job)
        else:
            failures.add(job.label, exc)

    run_jobs([dataclasses.replace(c, wait=False) for c in cells], workers, run_cell, collect, failed)
    if busy:  # cells another grid was computing: wait for it, then read them back
        again = [dataclasses.replace(c, wait=True) for c in busy]
        busy.clear()
        run_jobs(again, workers, run_cell, collect, failed)
    if rows or (Path(spec.report) / "runs.csv").is_file():
        write_report(spec, rows)
    failures.raise_if_any(len(cells), "cells")
    return rows


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

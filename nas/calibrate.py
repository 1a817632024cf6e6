"""Calibrating an evaluation protocol: can it tell a good cell from a degenerate one?

A proxy evaluation (a short retrain of a small network) ranks cells only if it separates the
extremes.  For each search space the calibration trains two reference cells under a candidate
retrain protocol, several seeds each:

- ``good``: the most parametric normal cell the space allows (every node reads the two edges whose
  best op has the most weights, that op on each);
- ``degenerate``: the normal cell the papers' failure modes end on (skip connections, noise on
  S4), on the lowest-numbered edges that offer it.

Both share the ``good`` reduction cell, so that the pair differs where Table 3 counts: in the
normal cell.  A protocol is valid on a space when the gap between the two means exceeds three
times the seed spread (the larger of the two sample standard deviations).  The candidates of a
calibration file are tried cheapest first; the first one valid on every space is chosen.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from nas import config as config_mod
from nas.grid.spec import ARCHIVE
from nas.spaces.darts import CELL_EDGES, CONCAT, N_CELL_EDGES, STEPS, DartsGenotype, format_genotype, space_edge_ops
from nas.utils import NasError, clip

CELLS = ("good", "degenerate")
DEGENERATE_OP = {"s4": "noise"}  # every other space: skip_connect
FIELDS = ["candidate", "space", "cell", "seed", "genotype", "test_acc", "params_m", "retrain_minutes"]
SPACES = ("s1", "s2", "s3", "s4", "darts")
CANDIDATE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
REPORT_FILE = "calibration.json"  # in a report: the calibration file its runs follow (a report may be a machine's share)


def op_weights(op: str, channels: int = 16) -> int:
    """Weights of one evaluation op at ``channels`` (stride 1): the order 'most parametric' uses."""
    from nas.spaces.darts_ops import make_darts_op

    if op in ("none", "noise"):
        return -1  # below the parameter-free ops: never a good cell's choice
    return sum(p.numel() for p in make_darts_op(op, channels, 1).parameters())


def _edge(node: int, source: int) -> int:
    return CELL_EDGES.index((node, source))


def _cell(edge_ops: tuple[tuple[str, ...], ...], pick: Any) -> tuple[tuple[str, int], ...]:
    """Two genes per intermediate node: ``pick(ops)`` gives an edge's (rank, op) or None when the
    edge cannot serve; the two best-ranked edges (lowest source on ties) are kept."""
    genes: list[tuple[str, int]] = []
    for node in range(2, 2 + STEPS):
        offers = []
        for source in range(node):
            choice = pick(edge_ops[_edge(node, source)])
            if choice is not None:
                offers.append((-choice[0], source, choice[1]))
        if len(offers) < 2:
            raise NasError(f"calibration: node {node} of the cell has fewer than two edges that offer the reference op")
        genes += [(op, source) for _, source, op in sorted(offers)[:2]]
    return tuple(genes)


def reference_genotypes(space: str) -> dict[str, str]:
    """The ``good`` and ``degenerate`` reference genotypes of a DARTS-family space."""
    ops = space_edge_ops(space)
    normal_ops, reduce_ops = ops[:N_CELL_EDGES], ops[N_CELL_EDGES:]

    def most_weights(choices: tuple[str, ...]) -> tuple[int, str]:
        return max((op_weights(op), op) for op in choices if op != "none")

    bad = DEGENERATE_OP.get(space, "skip_connect")

    def degenerate(choices: tuple[str, ...]) -> tuple[int, str] | None:
        return (0, bad) if bad in choices else None

    reduce = _cell(reduce_ops, most_weights)
    out = {}
    for name, pick in (("good", most_weights), ("degenerate", degenerate)):
        geno = DartsGenotype(_cell(normal_ops, pick), tuple(CONCAT), reduce, tuple(CONCAT))
        out[name] = format_genotype(geno)
    return out


@dataclasses.dataclass
class Candidate:
    name: str
    overrides: dict[str, Any]  # keys of the retrain section


@dataclasses.dataclass
class CalibrationSpec:
    protocol: str
    name: str
    spaces: list[str]
    seeds: list[int]
    candidates: list[Candidate]
    out: str
    report: str


def _candidate(raw: Any, path: Path, i: int) -> Candidate:
    where = f"{path}: calibration.candidates[{i}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise NasError(f"{where} expects a mapping with a 'name' and retrain keys, got {clip(raw, 80)}")
    if not CANDIDATE_NAME.fullmatch(raw["name"]):  # it names a folder under --out and the report
        raise NasError(f"{where}: name {clip(raw['name'], 60)} (expected letters, digits, '.', '_' or '-', "
                       f"64 at most, not starting with '.')")
    overrides = {k: v for k, v in raw.items() if k != "name"}
    known = set(config_mod.RetrainConfig.model_fields)
    for key in overrides:
        if key not in known or key in ("space", "genotype", "seed", "out", "data"):
            raise NasError(f"{where}: key {key!r} is not a retrain setting a candidate may change")
    try:  # checked before any work
        config_mod.build_config("retrain", path, overrides)
    except NasError as exc:
        raise NasError(f"{where} ({raw['name']}): {exc}") from None
    return Candidate(raw["name"], overrides)


def load_calibration(protocol: str | Path, out: str | None = None, report: str | None = None) -> CalibrationSpec:
    """Read and check a calibration file: its ``retrain:`` section and ``calibration:`` spaces,
    seeds and candidates (each a name and the retrain keys it changes, cheapest first)."""
    path = Path(protocol)
    doc = config_mod.load_yaml(path, "calibration file")
    cal = doc.get("calibration")
    if not isinstance(cal, dict):
        raise NasError(f"{path}: key 'calibration' expects a mapping (spaces, seeds, candidates)")
    unknown = set(cal) - {"spaces", "seeds", "candidates"}
    if unknown:
        raise NasError(f"{path}: unknown key 'calibration.{sorted(unknown)[0]}' (known: candidates, seeds, spaces)")
    spaces, seeds, cands = cal.get("spaces"), cal.get("seeds"), cal.get("candidates")
    if not isinstance(spaces, list) or not spaces or any(s not in SPACES for s in spaces):
        raise NasError(f"{path}: key 'calibration.spaces' expects a list of {', '.join(SPACES)}, got {clip(spaces, 80)}")
    if not isinstance(seeds, list) or len(seeds) < 2 or not all(type(s) is int and s >= 0 for s in seeds):
        raise NasError(f"{path}: key 'calibration.seeds' expects at least two seeds (a spread needs two), got {clip(seeds, 80)}")
    if not isinstance(cands, list) or not cands:
        raise NasError(f"{path}: key 'calibration.candidates' expects a non-empty list")
    candidates = [_candidate(c, path, i) for i, c in enumerate(cands)]
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise NasError(f"{path}: calibration.candidates: a name appears twice in {names}")
    return CalibrationSpec(str(path), path.stem, list(spaces), list(seeds), candidates,
                           out or f"runs/calibration/{path.stem}", report or f"data/results/{path.stem}")


@dataclasses.dataclass(frozen=True)
class CalibrationJob:
    """One reference cell of a calibration: a retrain of ``cell`` on ``space`` with ``seed`` under a
    candidate protocol (``overrides`` of the protocol file's retrain section, its run folder included)."""

    protocol: str
    overrides: dict[str, Any]
    candidate: str
    space: str
    cell: str
    seed: int

    @property
    def folder(self) -> Path:
        return Path(self.overrides["out"])

    @property
    def row(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "space": self.space, "cell": self.cell, "seed": self.seed}

    def archived(self, report: str | Path) -> Path:
        """Its place in a report's archive: ``cells/<candidate>/<space>-<cell>-s<seed>``."""
        return Path(report) / ARCHIVE / self.folder.parent.name / self.folder.name


def _job(spec: CalibrationSpec, cand: Candidate, space: str, cell: str, seed: int, data: str | None,
         threads: int) -> CalibrationJob:
    folder = Path(spec.out) / cand.name / f"{space}-{cell}-s{seed}"
    overrides = {**cand.overrides, "space": space, "genotype": reference_genotypes(space)[cell], "seed": seed,
                 "out": str(folder), "progress": False}
    if data:
        overrides["data"] = data
    if threads:
        overrides["threads"] = threads
    return CalibrationJob(spec.protocol, overrides, cand.name, space, cell, seed)


def run_job(job: CalibrationJob) -> dict[str, Any]:
    """Train one reference cell (cached: a finished folder with the same config is read back)."""
    from nas.runs import jobs

    cfg = config_mod.build_config("retrain", job.protocol, job.overrides)
    res, _ = jobs.cached(jobs.Job.of("retrain", cfg))
    return {**job.row, "genotype": cfg.genotype, "test_acc": 100.0 * float(res["test_acc"]),
            "params_m": res["params"] / 1e6, "retrain_minutes": res["seconds"] / 60}


def verdict(rows: list[dict[str, Any]], space: str) -> dict[str, Any]:
    """Gap between the good and degenerate means of one space against three times the seed spread."""
    acc = {c: [r["test_acc"] for r in rows if r["space"] == space and r["cell"] == c] for c in CELLS}
    if any(len(v) < 2 for v in acc.values()):
        raise NasError(f"calibration: space {space} needs two or more seeds of each reference cell")
    mean = {c: statistics.fmean(v) for c, v in acc.items()}
    spread = max(statistics.stdev(v) for v in acc.values())
    gap = mean["good"] - mean["degenerate"]
    return {"space": space, "good": mean["good"], "degenerate": mean["degenerate"], "gap": gap, "spread": spread,
            "valid": gap > 3 * spread, "minutes": sum(r["retrain_minutes"] for r in rows if r["space"] == space)}


def run_candidate(spec: CalibrationSpec, cand: Candidate, data: str | None, workers: int = 1,
                  threads: int = 0, stop_early: bool = False, spaces: list[str] | None = None) -> list[dict[str, Any]]:
    """Train both reference cells of every space and seed under one candidate protocol, space by
    space; with ``stop_early`` the candidate ends at the first space it cannot separate (it can no
    longer be chosen, so its other spaces would be spent for nothing)."""
    from nas.runs import store
    from nas.runs.runner import run_jobs

    rows: list[dict[str, Any]] = []
    failures = store.Failures(f"calibration {spec.name}, candidate {cand.name}")
    spaces = [sp for sp in spec.spaces if not spaces or sp in spaces]
    total = 2 * len(spec.seeds) * len(spaces)

    def collect(row: dict[str, Any]) -> None:
        rows.append(row)
        job = _job(spec, cand, row["space"], row["cell"], row["seed"], data, threads)
        store.archive(job.folder, job.archived(spec.report), "result.json")
        write_csv(Path(spec.report) / "runs.csv", [row])
        print(f"[calibrate {cand.name}] {row['space']} {row['cell']} seed {row['seed']}: {row['test_acc']:.2f}% "
              f"({len(rows)}/{total})", file=sys.stderr, flush=True)

    def failed(job: CalibrationJob, exc: BaseException) -> None:
        failures.add(f"{job.space} {job.cell} seed {job.seed}", exc)

    for space in spaces:
        jobs = [_job(spec, cand, space, cell, s, data, threads) for cell in CELLS for s in spec.seeds]
        for job in jobs:
            store.restore(job.archived(spec.report), job.folder, "result.json")
        run_jobs(jobs, workers, run_job, collect, failed)
        failures.raise_if_any(len(jobs), "runs")
        v = verdict(rows, space)
        print(f"[calibrate {cand.name}] {space}: gap {v['gap']:.2f} against 3 x spread {3 * v['spread']:.2f}: "
              f"{'valid' if v['valid'] else 'not valid'}", file=sys.stderr, flush=True)
        if stop_early and not v["valid"]:
            break
    return rows


def runs_file(path: Path) -> Any:
    """The calibration's per-run CSV: one row per candidate, space, cell and seed."""
    from nas.runs.store import RowsFile

    return RowsFile(Path(path), FIELDS, lambda r: (r["candidate"], r["space"], r["cell"], int(r["seed"])), _typed,
                    lineterminator="\n")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Merge rows into the per-run CSV, atomically and under its lock."""
    runs_file(path).merge(rows)


def _typed(rows: list[dict[str, str]], where: str) -> list[dict[str, Any]]:
    """The CSV's rows with their numbers as numbers; a one-line error names the row and column."""
    if rows and set(FIELDS) - set(rows[0]):
        raise NasError(f"{where}: not a calibration runs file (missing column {sorted(set(FIELDS) - set(rows[0]))[0]!r})")
    for i, r in enumerate(rows, 2):
        try:
            r["seed"] = int(r["seed"])
            for k in ("test_acc", "params_m", "retrain_minutes"):
                r[k] = float(r[k])
        except (TypeError, ValueError):
            raise NasError(f"{where}: line {i}: expected numbers in seed, test_acc, params_m, retrain_minutes") from None
    return rows


def read_csv(path: Path) -> list[dict[str, Any]]:
    return runs_file(path).rows()


def table(spec: CalibrationSpec, rows: list[dict[str, Any]]) -> tuple[str, str | None]:
    """The calibration table (markdown) and the chosen candidate: the first, in the file's order,
    whose every space is valid (None when no finished candidate is)."""
    lines = ["| candidate | space | good (%) | degenerate (%) | gap | 3 × spread | valid | minutes per run |",
             "|---|---|---|---|---|---|---|---|"]
    chosen = None
    for cand in spec.candidates:
        mine = [r for r in rows if r["candidate"] == cand.name]
        done = [sp for sp in spec.spaces if len([r for r in mine if r["space"] == sp]) == 2 * len(spec.seeds)]
        verdicts = [verdict(mine, sp) for sp in done]
        for v in verdicts:
            runs = 2 * len(spec.seeds)
            lines.append(f"| {cand.name} | {v['space']} | {v['good']:.2f} | {v['degenerate']:.2f} | {v['gap']:.2f} | "
                         f"{3 * v['spread']:.2f} | {'yes' if v['valid'] else 'no'} | {v['minutes'] / runs:.1f} |")
        if chosen is None and len(done) == len(spec.spaces) and all(v["valid"] for v in verdicts):
            chosen = cand.name
    return "\n".join(lines) + "\n", chosen


def run_calibration(spec: CalibrationSpec, data: str | None = None, workers: int = 1, threads: int = 0,
                    every: bool = False, only: list[str] | None = None, spaces: list[str] | None = None) -> str | None:
    """Try the candidates cheapest first and stop at the first valid on every space (``every``:
    run them all; ``only``: just the named ones, in the file's order; ``spaces``: just those spaces).  Writes ``runs.csv`` and
    ``table.md`` (every candidate with finished runs) to the report; returns the chosen name."""
    names = [c.name for c in spec.candidates]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise NasError(f"--candidates: {spec.protocol} has no candidate {unknown[0]!r} (it has {', '.join(names)})")
    other = [sp for sp in spaces or [] if sp not in spec.spaces]
    if other:
        raise NasError(f"--spaces: {spec.protocol} calibrates {', '.join(spec.spaces)}, not {other[0]!r}")
    chosen = None
    for cand in spec.candidates:
        if only and cand.name not in only:
            continue
        run_candidate(spec, cand, data, workers, threads, stop_early=not every, spaces=spaces)
        chosen = write_report(spec)
        if chosen and not every:
            break
    return chosen


def write_report(spec: CalibrationSpec) -> str | None:
    """``table.md`` and ``calibration.json`` from the report's ``runs.csv`` (no training: also for
    runs merged from other machines' reports); returns the chosen candidate's name."""
    from nas.runs.files import write_json
    from nas.utils import atomic_write

    runs = Path(spec.report) / "runs.csv"
    if not runs.is_file():
        raise NasError(f"{runs}: no calibration runs to report (run nas calibrate without --report-only first)")
    text, chosen = table(spec, read_csv(runs))
    body = text + (f"\nChosen: **{chosen}**.\n" if chosen else "\nNo candidate is valid on every space yet.\n")
    atomic_write(Path(spec.report) / "table.md", lambda tmp: tmp.write_text(body))
    write_json(Path(spec.report) / REPORT_FILE, {"protocol": spec.protocol})
    return chosen

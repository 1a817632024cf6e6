"""A grid's report: the per-run CSV, the summary table (markdown, CSV, metrics) and its figures."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nas.benchmarks import load_table
from nas.grid.figures import draw_figures
from nas.grid.spec import DATASETS, RETRAIN_FIELDS, RUN_FIELDS, GridSpec
from nas.runs.files import write_json
from nas.runs.store import RowsFile
from nas.schemas import validate_retrain_runs, validate_runs
from nas.utils import NasError, atomic_write, write_csv


def runs_file(path: str | Path, retrained: bool = False) -> RowsFile:
    """The grid's per-run CSV: looked-up rows (``RUN_FIELDS``) or retrained rows (``RETRAIN_FIELDS``),
    one per (protocol, space, method, selection, seed)."""
    return RowsFile(Path(path), RETRAIN_FIELDS if retrained else RUN_FIELDS, _key, _read_rows)


def write_runs_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Merge ``rows`` into the per-run CSV (rows of other cells stay), sorted, under ``<path>.lock``."""
    path = Path(path)
    retrained = any("test_error" in r for r in rows)

    def same_kind(merged: list[dict[str, Any]]) -> None:
        if any(("test_error" in r) != retrained for r in merged):
            raise NasError(f"{path}: holds rows of a {'lookup' if retrained else 'retraining'} grid; a "
                           f"{'retraining' if retrained else 'lookup'} grid writes its rows to a report folder of "
                           f"its own")

    return runs_file(path, retrained).merge(rows, same_kind)


def _key(r: dict[str, Any]) -> tuple:
    return (r["protocol"], r.get("space", ""), r["method"], r["selection"], int(r["seed"]))


def _read_rows(rows: list[dict[str, str]], where: str) -> list[dict[str, Any]]:
    if rows and "test_error" in rows[0]:
        return validate_retrain_runs(rows, where)
    return validate_runs(rows, where)


def read_runs_csv(path: str | Path) -> list[dict[str, Any]]:
    """The per-run CSV of a grid, schema-checked: looked-up rows (RUN_FIELDS) or retrained rows
    (RETRAIN_FIELDS), told apart by the header."""
    return runs_file(path).rows()


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


SELECTION_NAMES = {"magnitude": "", "pt": "+PT", "pt-fix": "+PT (fix α)"}


def summarise_retrained(rows: Iterable[dict[str, Any]], spec: GridSpec) -> list[dict[str, Any]]:
    """One row per (space, method, selection) of a retraining grid: test error mean ± std, the
    parameter-free ops of the normal cells (mean), size and minutes."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["space"], r["method"], r["selection"]), []).append(r)
    spaces = {sp: i for i, sp in enumerate(spec.spaces or [])}
    methods = {m: i for i, m in enumerate(spec.methods)}
    sels = {s: i for i, s in enumerate(SELECTION_NAMES)}
    out = []
    for (space, method, selection), rs in sorted(groups.items(), key=lambda kv: (
            spaces.get(kv[0][0], 99), kv[0][0], methods.get(kv[0][1], 99), sels.get(kv[0][2], 99))):
        row: dict[str, Any] = {"space": space, "method": method, "selection": selection, "runs": len(rs),
                               "seeds": " ".join(str(r["seed"]) for r in sorted(rs, key=lambda r: int(r["seed"])))}
        row["test_error_mean"], row["test_error_std"] = _mean_std([float(r["test_error"]) for r in rs])
        for k in ("normal_skip", "normal_noise", "normal_none", "params_m", "search_minutes", "select_minutes",
                  "retrain_minutes"):
            row[k] = _mean_std([float(r[k]) for r in rs])[0]
        out.append(row)
    return out


def retrained_markdown(summary: list[dict[str, Any]], title: str) -> str:
    """The papers' form (a row per space, a column per method and selection: test error %),
    then the long table with the normal cells' parameter-free ops and the minutes."""
    cols = list(dict.fromkeys((r["method"], r["selection"]) for r in summary))
    spaces = list(dict.fromkeys(r["space"] for r in summary))
    by = {(r["space"], r["method"], r["selection"]): r for r in summary}
    names = [f"{m.upper() if m == 'darts' else m}{SELECTION_NAMES.get(s, '+' + s)}" for m, s in cols]
    lines = [f"**{title}**", "", "| space | " + " | ".join(names) + " |", "|---|" + "---|" * len(cols)]
    for sp in spaces:
        cells = []
        for m, s in cols:
            r = by.get((sp, m, s))
            cells.append("-" if r is None else f"{r['test_error_mean']:.2f} ± {r['test_error_std']:.2f}")
        lines.append(f"| {sp} | " + " | ".join(cells) + " |")
    lines += ["", "| space | method | selection | runs | test error (%) | normal cell: skip / noise / none (mean) "
              "| params (M) | search (min) | selection (min) | retrain (min) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['space']} | {r['method']} | {r['selection']} | {r['runs']} | "
                     f"{r['test_error_mean']:.2f} ± {r['test_error_std']:.2f} | {r['normal_skip']:.1f} / "
                     f"{r['normal_noise']:.1f} / {r['normal_none']:.1f} | {r['params_m']:.3f} | "
                     f"{r['search_minutes']:.1f} | {r['select_minutes']:.1f} | {r['retrain_minutes']:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(spec: GridSpec, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Table (markdown + CSV), per-run CSV and figures under ``spec.report``; returns the paths."""
    report = Path(spec.report)
    runs_csv = report / "runs.csv"
    if rows:
        write_runs_csv(runs_csv, rows)
    if not runs_csv.is_file():
        raise NasError(f"{runs_csv}: no finished runs to report")
    all_rows = [r for r in read_runs_csv(runs_csv) if r["protocol"] == spec.name]
    if spec.retrain:
        return _write_retrained_report(spec, all_rows, report, runs_csv)
    summary = summarise(all_rows, spec.methods)
    table = load_table()
    oracle = {d: table.oracle(d)[1] for d in DATASETS}
    md = table_markdown(summary, oracle, f"NAS-Bench-201, protocol {spec.name}: test accuracy (%) of the "
                                         f"selected cell, mean ± std over seeds")
    atomic_write(report / "table.md", lambda p: p.write_text(md))

    oracle_row = {"method": "oracle", "selection": "-", "runs": 0, "seeds": "",
                  **{f"{d}_mean": f"{oracle[d]:.4f}" for d in DATASETS},
                  **{f"{d}_std": "0" for d in DATASETS}, "search_minutes": "", "select_minutes": ""}
    write_csv(report / "table.csv", [*summary, oracle_row], list(summary[0]), "{:.4f}")
    figures = draw_figures(spec, all_rows, report / "figures")
    metrics = {f"{r['method']}/{r['selection']}/{d}": r[f"{d}_mean"] for r in summary for d in DATASETS}
    write_json(report / "metrics.json", {"protocol": spec.name, "runs": len(all_rows), "table": metrics})
    return {"table_md": str(report / "table.md"), "table_csv": str(report / "table.csv"), "runs_csv": str(runs_csv),
            "figures": figures, "summary": summary, "markdown": md}




def _write_retrained_report(spec: GridSpec, all_rows: list[dict[str, Any]], report: Path,
                            runs_csv: Path) -> dict[str, Any]:
    if all_rows and "test_error" not in all_rows[0]:
        raise NasError(f"{runs_csv}: holds looked-up rows, not the retrained rows of grid {spec.name}")
    summary = summarise_retrained(all_rows, spec)
    md = retrained_markdown(summary, f"Protocol {spec.name}: test error (%) of the selected cell trained from "
                                     f"scratch, mean ± std over seeds")
    atomic_write(report / "table.md", lambda p: p.write_text(md))
    if summary:
        write_csv(report / "table.csv", summary, list(summary[0]), "{:.4f}")
    figures = draw_figures(spec, all_rows, report / "figures")
    metrics = {f"{r['space']}/{r['method']}/{r['selection']}/test_error": r["test_error_mean"] for r in summary}
    write_json(report / "metrics.json", {"protocol": spec.name, "runs": len(all_rows), "table": metrics})
    return {"table_md": str(report / "table.md"), "table_csv": str(report / "table.csv"), "runs_csv": str(runs_csv),
            "figures": figures, "summary": summary, "markdown": md}


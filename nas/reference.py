"""Pages of the documentation that are generated from the code and the committed results, so that
they cannot drift: the command line (from the argparse parser), the settings of every stage (from
the pydantic models) and one page per committed grid report (from its ``table.md``, ``runs.csv``
and figures).  The docs site's build hook (``scripts/mkdocs_hooks.py``) calls these; ``python -m
nas.reference OUT`` writes them into a folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nas import config as config_mod

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "data" / "results"
WIDTH = "100"  # the help text's width, fixed so the page is the same in any terminal


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        return parser.format_help().rstrip()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command line the project has, by the name the reference gives it: ``nas``, each
    ``nas COMMAND`` and each flow's ``python -m flows.NAME`` (when the pipeline extra is installed)."""
    from nas.cli import build_parser

    parser = build_parser()
    found = {"nas": parser, **{f"nas {name}": sub for name, sub in _subparsers(parser).items()}}
    for module in ("flows.pipeline", "flows.sweep", "flows.benchmark"):
        flow_parser = _flow_parser(module)
        if flow_parser is not None:
            found[f"python -m {module}"] = flow_parser
    return found


def cli_page() -> str:
    """The ``nas`` command and each subcommand's ``--help``, and the flows' command lines."""
    lines = ["# Command line reference", "",
             "Generated from the argparse parsers (`nas/reference.py`): each block is what `--help` prints.", ""]
    for name, parser in parsers().items():
        lines += [f"## {name}", "", "```text", _help(parser), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _flow_parser(module: str) -> argparse.ArgumentParser | None:
    """The argparse parser a flow module's ``main`` builds, captured without running the flow."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:  # the pipeline extra is not installed
        return None
    captured: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):  # noqa: ANN001, ANN202
        captured.append(self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        mod.main([])
    except SystemExit:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    return captured[0] if captured else None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_page() -> str:
    """Every key of every stage: its type, default and meaning, from the models; a method's own
    settings name the methods that read them."""
    from nas.methods import owners

    lines = ["# Settings reference", "",
             "Generated from the pydantic models in `nas/config.py` (`nas/reference.py`). Every key is set "
             "in a params file's section (`search:`, `select:`, `retrain:`, `prepare:`) or with "
             "`--set KEY=VALUE`; `nas COMMAND --list-keys` prints the same table. `auto` means the "
             "space's or the method's default.", ""]
    for kind in config_mod.CONFIGS:
        lines += [f"## {kind}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, typ, default, meaning in config_mod.key_help(kind):
            if kind == "search" and owners(key):  # a method's own setting: --set refuses it for the others
                meaning = f"{meaning} (read by {', '.join(owners(key))})"
            lines.append(f"| `{key}` | {_cell(typ)} | `{_cell(default)}` | {_cell(meaning)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def result_protocols(results: Path = RESULTS) -> list[str]:
    """The committed grid reports: the folders of ``data/results`` holding a ``table.md``."""
    return sorted(p.parent.name for p in results.glob("*/table.md"))


def results_page(protocol: str, results: Path = RESULTS) -> str:
    """A committed grid report as a page: its protocol file, the table, the per-run rows and the
    figures (``figures()`` puts them in the site under ``results/files/``)."""
    import csv

    folder = results / protocol
    table = (folder / "table.md").read_text().strip()
    params = REPO / "params" / f"{protocol}.yaml"
    from nas.calibrate import REPORT_FILE

    marker = folder / REPORT_FILE  # the calibration file this report's runs follow
    cal_file = json.loads(marker.read_text())["protocol"] if marker.is_file() else f"params/{protocol}.yaml"
    calibration = marker.is_file() or (params.is_file() and "calibration" in (config_mod.load_yaml(params) or {}))
    if calibration:
        report = "" if cal_file == f"params/{protocol}.yaml" else f" --report data/results/{protocol}"
        lines = [f"# Calibration: {protocol}", "",
                 f"Generated from `data/results/{protocol}/` (`nas/reference.py`): the table is `table.md` as "
                 f"`nas calibrate` writes it, means and the largest sample standard deviation over seeds.", "",
                 f"Calibration file: `{cal_file}`; rebuild the table from `runs.csv` with "
                 f"`nas calibrate --protocol {cal_file}{report} --report-only`.", ""]
    else:
        lines = [f"# Results: {protocol}", "",
                 f"Generated from `data/results/{protocol}/` (`nas/reference.py`): the table is `table.md` as "
                 f"`nas grid --report-only` writes it, mean ± sample standard deviation over seeds.", ""]
    if params.is_file() and not calibration:
        lines += [f"Protocol: `params/{protocol}.yaml`; rebuild the table with "
                  f"`nas grid --protocol params/{protocol}.yaml --report-only`.", ""]
    lines += ["## Table", "", table, ""]
    runs = folder / "runs.csv"
    if runs.is_file():
        with runs.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            keys = list(rows[0])
            what = "(candidate, space, cell, seed)" if calibration else "(method, seed, selection)"
            lines += [f"## Runs ({len(rows)})", "", f"One row per {what}, from `runs.csv`.", "",
                      "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            for r in rows:
                lines.append("| " + " | ".join(_cell(_short(r[k])) for k in keys) + " |")
            lines.append("")
    figures = sorted((folder / "figures").glob("*.png")) if (folder / "figures").is_dir() else []
    if figures:
        lines += ["## Figures", ""]
        for fig in figures:
            lines += [f"### {fig.stem}", "", f"![{fig.stem}](../files/{protocol}/figures/{fig.name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


def pages() -> dict[str, str]:
    """Every generated page: its path in the docs site -> its Markdown."""
    out = {"reference/cli.md": cli_page(), "reference/config.md": config_page()}
    for protocol in result_protocols():
        out[f"results/tables/{protocol}.md"] = results_page(protocol)
    return out


def figures(results: Path = RESULTS) -> dict[str, Path]:
    """The committed pictures of ``data/results`` (the grid reports' figures, the studies' plots):
    their path in the docs site (``results/files/...``) -> the file."""
    return {f"results/files/{p.relative_to(results).as_posix()}": p for p in sorted(results.rglob("*.png"))}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m nas.reference OUT_FOLDER", file=sys.stderr)
        return 2
    out = Path(args[0])
    for rel, text in pages().items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``nas``: the command line over the stages.

    nas prepare --dataset cifar10 --data PATH
    nas search  --space nb201 --method darts --dataset cifar10 --data PATH --epochs 50 --seed 0 --out DIR
    nas select  --method magnitude --run DIR --out DIR
    nas info    --space nb201 --genotype STR [--channels 16 --cells 5 --num-classes 10] --json
    nas lookup  --genotype STR [--dataset cifar10] [--table PATH] --json
    nas retrain --space nb201 --genotype STR --dataset ... --epochs ... --out DIR
    nas strength  --run DIR --out DIR
    nas landscape --run DIR [--run DIR ...] --out DIR
    nas grid    --protocol FILE.yaml --data PATH [--workers N] [--report-only]
    nas evaluate --search DIR --selection DIR --retrain DIR --out DIR
    nas cluster up|env|down

Every command takes ``--config FILE.yaml`` and ``--set key=value`` (validated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nas import __version__, stopping
from nas import config as config_mod
from nas.utils import NasError, clip

EXAMPLES = {
    "prepare": """examples:
  nas prepare --dataset cifar10 --data data/raw/cifar-10-python.tar.gz
  nas prepare --list-keys""",
    "search": """examples:
  nas search --epochs 15 --out runs/digits-darts                     # the embedded digits, a few seconds
  nas search --method drnas --config params/cpu-proxy.yaml --data cifar-10-python.tar.gz --seed 1 --out runs/c10-drnas
  nas search --method sdarts-rs --set rs_sigma=0.1 --hessian-every 2 --out runs/rs
  nas search ... --resume                                            # the same command again: continue it
  nas search --list-keys                                             # every key with its default and meaning""",
    "select": """examples:
  nas select --run runs/digits-darts                                 # magnitude: the largest weight per edge
  nas select --method pt --run runs/digits-darts --out runs/digits-darts-pt --set pt_tune_epochs=2
  nas select --method verify --run runs/digits-darts --out runs/digits-darts-verify --set verify_candidates=4""",
    "cluster": """examples:
  nas cluster up --workers 2          # PostgreSQL, MLflow, Prefect and Dask on this machine, loopback only
  eval "$(nas cluster env)"           # point this shell at it
  python -m flows.sweep --method drnas --runner dask --address "$NAS_DASK_ADDRESS" --n-trials 4
  nas cluster down""",
    "landscape": """examples:
  nas landscape --run runs/search --out runs/search/landscape
  nas landscape --run runs/darts --run runs/sdarts-rs --run runs/sdarts-adv --out runs/landscape --points 11""",
    "strength": """examples:
  nas strength --run runs/digits-darts --out runs/digits-darts-strength""",
    "retrain": """examples:
  nas retrain --selection runs/digits-darts/result.json --epochs 10 --out runs/digits-retrain
  nas retrain --genotype '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|' \\
      --dataset cifar10 --data cifar-10-python.tar.gz --out runs/c10-retrain""",
}


def _default(kind: str, key: str) -> str:
    for name, _, default, _ in config_mod.key_help(kind, shared_only=True):  # no method settings: no torch
        if name == key:
            return default
    return "?"


DATASET_HELP = "digits (embedded), cifar10, cifar100, svhn, imagefolder, prepared"
DATA_HELP = "archive, image folder or prepared .pt file (default: none, the embedded digits)"
DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:N (default auto)"
GENOTYPE_HELP = ("the cell: an NB201 string '|op~0|+|op~0|op~1|+...|', or a DARTS-space "
                 "'Genotype(normal=[...], ...)' or its JSON form")
SPACE_HELP = "nb201, darts, s1, s2, s3, s4"


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _common(p: argparse.ArgumentParser, kind: str | None = None) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of key: value (or a section per stage)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable); --list-keys shows them all")
    _json_flag(p)
    if kind:
        p.add_argument("--list-keys", dest="list_keys", action="store_true",
                       help=f"list every key of '{kind}' with its default and meaning, and exit")


def _data_args(p: argparse.ArgumentParser, kind: str) -> None:
    d = lambda key: _default(kind, key)  # noqa: E731
    p.add_argument("--dataset", help=f"{DATASET_HELP} (default {d('dataset')})")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--seed", type=int, help=f"random seed (default {d('seed')})")
    p.add_argument("--epochs", type=int, help=f"{kind} epochs (default {d('epochs')})")
    p.add_argument("--out", help=f"run directory (default {d('out')})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--force", action="store_true", help="start over in an --out that already holds a run "
                   "(its files are removed)")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                   help="no progress bar")


# the methods of nas.methods.REGISTRY, written out so that `--help` does not import torch
# (tests/test_cli.py holds this list to the registry)
METHOD_HELP = "darts, snas, gdas, drnas, sdarts-rs, sdarts-adv, pc-darts, random, rsps, naswot"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas", description="Differentiable neural architecture search.",
                                     epilog="`nas COMMAND --help` shows a command's flags and examples; "
                                            "`nas search --list-keys` every search setting.")
    parser.add_argument("--version", action="version", version=f"nas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_parser_prepare, _parser_search, _parser_select, _parser_strength, _parser_landscape, _parser_grid, _parser_calibrate, _parser_cluster, _parser_info, _parser_lookup, _parser_retrain, _parser_evaluate):
        add(sub)
    return parser


def _command(sub: Any, name: str, text: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand: ``text`` is its one-line help (and its description unless one is given); its
    examples from ``EXAMPLES`` go below the flags."""
    if name not in EXAMPLES:
        return sub.add_parser(name, help=text, description=description or text)
    return sub.add_parser(name, help=text, description=description or text, epilog=EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _parser_prepare(sub: Any) -> None:
    p = _command(sub, "prepare", "decode a dataset once into a tensor file + manifest")
    p.add_argument("--dataset", help=f"{DATASET_HELP} (default {_default('prepare', 'dataset')})")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--cache-dir", dest="cache_dir", help="where decoded datasets go (default data/prepared)")
    _common(p, "prepare")


def _parser_search(sub: Any) -> None:
    p = _command(sub, "search", "search a supernet and select an architecture by α magnitude")
    p.add_argument("--space", help=SPACE_HELP)
    p.add_argument("--method", help=METHOD_HELP)
    p.add_argument("--order", type=int, choices=(1, 2), help="DARTS gradient order")
    p.add_argument("--perturb", help="w-step perturbation: auto (method default), none, rs, adv")
    p.add_argument("--hessian-every", dest="hessian_every", type=int, metavar="K",
                   help="top Hessian eigenvalue of L_val w.r.t. alpha every K epochs (0 = off)")
    p.add_argument("--early-stop", dest="early_stop", action="store_const", const=True,
                   help="stop when the eigenvalue grows (DARTS-ES); needs --hessian-every 1")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="one data-parallel search in N processes on this host, started under torchrun "
                        "(GPUs: one each; CPUs: gloo); the setting nproc")
    p.add_argument("--max-restarts", dest="max_restarts", type=int, metavar="R",
                   help="with --nproc: start the processes again up to R times after a failure; they continue "
                        "from the last checkpoint (the setting max_restarts, default 0)")
    _data_args(p, "search")
    _common(p, "search")


def _parser_select(sub: Any) -> None:
    p = _command(sub, "select", "select the final architecture of a finished search (magnitude or PT)")
    p.add_argument("--method", help="magnitude (default), pt, or verify (the best of a few candidate cells "
                                    "trained briefly)")
    p.add_argument("--run", help="search run directory")
    p.add_argument("--out", help="directory for selection.json (and PT's per-edge checkpoint); default: none")
    p.add_argument("--seed", type=int, help="seed of PT's edge order (default 0)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="PT in N processes of this host under torchrun: evaluations split, tuning data-parallel "
                        "(needs --out; the setting nproc)")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N (default auto)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted PT selection in --out")
    p.add_argument("--force", action="store_true", help="start over in an --out that already holds a selection")
    _common(p, "select")


def _parser_strength(sub: Any) -> None:
    p = _command(sub, "strength", "α against the accuracy drop of removing each op (table, plot, rank correlation)")
    p.add_argument("--run", help="search run directory")
    p.add_argument("--out", help="directory for strength.csv/.json/.png")
    p.add_argument("--device", help=DEVICE_HELP)
    _common(p, "select")


def _parser_landscape(sub: Any) -> None:
    p = _command(sub, "landscape", "L_val of finished supernets around their α along two random directions",
                 "L_val of finished supernets around their α along two random directions "
                 "(edge rows of unit norm); a contour per run, side by side")
    p.add_argument("--run", action="append", required=True, help="search run directory (repeat for several)")
    p.add_argument("--out", required=True, help="folder for landscape.json/.csv/.png (one subfolder per run)")
    p.add_argument("--points", type=int, default=11, help="grid points per direction")
    p.add_argument("--radius", type=float, default=1.0, help="the grid spans [-radius, radius] along each direction")
    p.add_argument("--batches", type=int, default=4, help="α-split batches per loss evaluation")
    p.add_argument("--seed", type=int, default=0, help="seed of the two directions")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    _json_flag(p)


def _parser_grid(sub: Any) -> None:
    p = _command(sub, "grid", "the benchmark grid of a protocol: [spaces x] methods x seeds x selections, table and figures")
    p.add_argument("--protocol", default="params/cpu-proxy.yaml", help="protocol params file (cpu-proxy, paper)")
    p.add_argument("--data", help="the CIFAR-10 archive or folder (the protocol's dataset)")
    p.add_argument("--methods", help="comma-separated methods (default: the protocol's)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the protocol's)")
    p.add_argument("--selections", help="comma-separated: magnitude,pt,pt-fix,verify (default: the protocol's)")
    p.add_argument("--out", help="run directories (default runs/grid/<protocol>)")
    p.add_argument("--report", help="table, CSV and figures (default data/results/<protocol>)")
    p.add_argument("--workers", type=int, default=1, help="cells run side by side (processes)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0 = torch's default)")
    p.add_argument("--report-only", dest="report_only", action="store_true",
                   help="only rebuild the table and figures from finished runs")
    p.add_argument("--from-tracking", dest="from_tracking", action="store_true",
                   help="with --report-only: read the rows and cells of the protocol's latest benchmark flow "
                        "run from the tracking server (MLFLOW_TRACKING_URI) instead of the report folder")
    _json_flag(p)


def _names(text: str) -> list[str]:
    """A comma-separated list of names."""
    return [n.strip() for n in text.split(",") if n.strip()]


def _parser_calibrate(sub: Any) -> None:
    p = _command(sub, "calibrate", "can a retrain protocol tell a good cell from a degenerate one? (S1-S4)",
                 "Train each space's good and degenerate reference cells under the candidate "
                 "retrain protocols of a calibration file, cheapest first, and choose the first "
                 "whose gap exceeds three times the seed spread on every space.")
    p.add_argument("--protocol", default="params/s-calibration.yaml", help="calibration file")
    p.add_argument("--data", help="the CIFAR-10 archive or folder")
    p.add_argument("--out", help="run directories (default runs/calibration/<file>)")
    p.add_argument("--report", help="runs.csv and table.md (default data/results/<file>)")
    p.add_argument("--workers", type=int, default=1, help="runs side by side (processes)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0 = torch's default)")
    p.add_argument("--all", dest="every", action="store_true", help="run every candidate, not only up to the chosen")
    p.add_argument("--candidates", type=_names,
                   help="only these candidates, comma-separated names (another machine's share of the file)")
    p.add_argument("--spaces", type=_names,
                   help="only these spaces, comma-separated (the table still shows every finished one)")
    p.add_argument("--references", action="store_true", help="only print the reference genotypes of each space")
    p.add_argument("--report-only", dest="report_only", action="store_true",
                   help="only rebuild table.md from the report's runs.csv (no training)")
    _json_flag(p)


def _parser_cluster(sub: Any) -> None:
    p = _command(sub, "cluster", "a throwaway cluster on this machine: PostgreSQL, MLflow, Prefect, Dask",
                 "Start, show or stop the services several machines share, on this machine "
                 "(loopback only): PostgreSQL, an MLflow server with proxied artifacts, a Prefect "
                 "server and a Dask scheduler with workers, each worker in its own folder.")
    p.add_argument("action", choices=("up", "down", "env"),
                   help="up: start the services; down: stop them; env: print the variables that point a client at them")
    p.add_argument("--root", default="runs/cluster", help="the cluster's folder (default runs/cluster)")
    p.add_argument("--workers", type=int, default=2, help="Dask workers to start (default 2)")
    p.add_argument("--no-prefect", dest="prefect", action="store_false", help="no Prefect server")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds each service may take to start")
    _json_flag(p)


def _parser_info(sub: Any) -> None:
    p = _command(sub, "info", "parameters and FLOPs of a genotype's network")
    p.add_argument("--space", default="nb201", help=f"{SPACE_HELP} (default nb201)")
    p.add_argument("--genotype", required=True, help=GENOTYPE_HELP)
    p.add_argument("--channels", type=int, help="C (default: the space's evaluation network, 16 or 36)")
    p.add_argument("--cells", type=int, help="NB201: cells per stage (5); DARTS spaces: cells (20)")
    p.add_argument("--num-classes", type=int, default=10, help="classes of the output layer (default 10)")
    p.add_argument("--in-channels", type=int, default=3, help="image channels (default 3)")
    p.add_argument("--resolution", type=int, default=32, help="image side in pixels, for the FLOPs (default 32)")
    _json_flag(p)


def _parser_lookup(sub: Any) -> None:
    p = _command(sub, "lookup", "NAS-Bench-201 test accuracy of a genotype, beside the oracle")
    p.add_argument("--genotype", required=True, help="an NB201 string '|op~0|+|op~0|op~1|+...|'")
    p.add_argument("--dataset", default="cifar10", help="cifar10, cifar100 or imagenet16-120")
    p.add_argument("--table", help="NAS-Bench-201 table CSV (default: data/benchmarks or $NAS_NB201_TABLE)")
    _json_flag(p)


def _parser_retrain(sub: Any) -> None:
    p = _command(sub, "retrain", "train a genotype's network from scratch and evaluate it")
    p.add_argument("--space", help=f"{SPACE_HELP} (default nb201; with --selection, the selection's)")
    p.add_argument("--genotype", help=GENOTYPE_HELP)
    p.add_argument("--selection", metavar="FILE", help="take the genotype (and space) from a selection.json "
                   "or a search result.json")
    _data_args(p, "retrain")
    _common(p, "retrain")


def _parser_evaluate(sub: Any) -> None:
    p = _command(sub, "evaluate", "collect a pipeline run: metrics.json and the plot tables")
    p.add_argument("--search", required=True, help="search run directory")
    p.add_argument("--selection", required=True, help="selection.json (or its directory)")
    p.add_argument("--retrain", required=True, help="retrain run directory")
    p.add_argument("--out", required=True, help="directory for metrics.json and plots/")
    _json_flag(p)


def _print(obj: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(obj, indent=2))
    else:
        print("\n".join(lines))


def _overrides(args: argparse.Namespace, keys: Sequence[str]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _maybe_lookup(space: str, genotype: str) -> dict[str, Any] | None:
    from nas.benchmarks import benchmark_lookup as nb201_lookup

    return nb201_lookup(space, genotype)


# how a stopped command goes on where it stopped
RESUME = {"search": "rerun it with --resume to go on from the last checkpoint",
          "select": "rerun it with --resume to go on from the last decision",
          "retrain": "rerun it with --resume to go on from the last checkpoint",
          "grid": "rerun the same command: finished cells are kept, a stopped search resumes",
          "calibrate": "rerun the same command: finished runs are kept"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if "WORLD_SIZE" in os.environ:  # a rank of a data-parallel search: torch's C++ retry logs would bury
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")  # the one-line error (set it to see them)
    if getattr(args, "list_keys", False):
        try:
            print(config_mod.format_key_help("select" if args.command == "strength" else args.command), flush=True)
        except BrokenPipeError:  # `nas search --list-keys | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    stopping.install()
    try:
        return _run(args)
    except NasError as exc:
        print(f"nas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM (stopping.Stopped)
        print(f"nas {args.command}: {stopping.stopped_line(exc, RESUME.get(args.command, 'rerun the same command'))}",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nas ... | head`: the reader has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a path the system refuses (a name over 255 bytes, no permission, ...)
        where = f"{clip(exc.filename, 120)}: " if exc.filename else ""
        print(f"nas {args.command}: error: {where}{exc.strerror or type(exc).__name__}", file=sys.stderr)
        return 2


def _tracked(stage: str, cfg: Any, tags: dict[str, Any], selection: str | None = None):
    """An MLflow run for one CLI stage (``NAS_MLFLOW=0`` switches it off); it ends FINISHED or
    FAILED whatever happens.  Runs from ``dvc repro`` are tagged ``source=dvc``."""
    from nas import tracking

    name = tracking.stage_run_name(stage, config_mod.to_dict(cfg), tags.get("method"), selection)
    return tracking.stage_run(name, {"stage": stage, "source": _source(), **tags})


def _source() -> str:
    """``dvc`` under ``dvc repro`` (which sets ``DVC_STAGE`` for its commands), else ``cli``."""
    return "dvc" if os.environ.get("DVC_STAGE") else "cli"


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command: one small function per command below."""
    return COMMANDS[args.command](args)


_DATA_KEYS = ("dataset", "data", "device", "seed", "epochs", "out", "progress")


def _cmd_prepare(args: argparse.Namespace) -> int:
    from nas import stages

    cfg = config_mod.build_config("prepare", args.config, _overrides(args, ("dataset", "data", "cache_dir")), args.sets)
    m = stages.prepare_stage(cfg)
    _print(m, args.json, [f"{m['path']}: {m['dataset']} {m['counts']['train']} train / "
                          f"{m['counts']['test']} test, {m['num_classes']} classes, "
                          f"{m['channels']}x{m['height']}x{m['width']}"])
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from nas import parallel, stages

    keys = ("space", "method", "order", "perturb", "hessian_every", "early_stop", "nproc", "max_restarts",
            *_DATA_KEYS)
    cfg = config_mod.build_config("search", args.config, _overrides(args, keys), args.sets)
    if parallel.restarted():  # torchrun started this rank again after a failure: continue the run
        args.resume, args.force = True, False
    if parallel.env_rank() != 0:  # rank 0 owns the run, its tracking and its output
        try:
            stages.search_stage(cfg, resume=args.resume, force=args.force)
        finally:
            parallel.stop()
        return 0
    tags = {"method": cfg.method, "space": cfg.space, "dataset": cfg.dataset, "seed": cfg.seed}
    stages.preflight("search", cfg, args.resume, args.force)
    with _tracked("search", cfg, tags) as (tracker, run_id):
        res = stages.search_stage(cfg, resume=args.resume, force=args.force,
                                  callback=_epoch_logger(tracker, run_id, cfg.space))
        from nas import tracking_stages  # lazily: `nas --help` loads no torch
        tracking_stages.log_search(tracker, run_id, res, live=not parallel.starts_ranks(cfg.nproc))
    parallel.stop()
    look = _maybe_lookup(res["space"], res["genotype"])
    lines = [f"genotype: {res['genotype']}", f"result:   {cfg.out}/result.json",
             f"seconds:  {res['seconds']:.1f}"]
    if look:
        lines.append(f"NAS-Bench-201 cifar10 test accuracy: {look['test_accuracy']:.2f} "
                     f"(oracle {look['oracle_accuracy']:.2f}, rank {look['rank']}/{look['of']})")
    summary = {k: res[k] for k in ("space", "method", "order", "genotype", "seconds")}
    summary["result"] = f"{cfg.out}/result.json"
    summary["nb201"] = look
    _print(summary, args.json, lines)
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from nas import parallel, stages

    cfg = config_mod.build_config("select", args.config,
                                  _overrides(args, ("method", "run", "out", "seed", "device", "nproc")), args.sets)
    if parallel.env_rank() != 0:  # a rank of a PT spread over processes: rank 0 reports
        stages.select_stage(cfg, resume=args.resume, force=args.force)
        return 0
    stages.preflight("selection", cfg, args.resume, args.force)
    with _tracked("select", cfg, {"selection": cfg.method, "seed": cfg.seed}, cfg.method) as (tracker, run_id):
        sel = stages.select_stage(cfg, resume=args.resume, force=args.force)
        from nas import tracking_stages  # lazily: `nas --help` loads no torch
        tracking_stages.log_selection(tracker, run_id, config_mod.to_dict(cfg), sel)
    lines = [f"genotype: {sel['genotype']}"]
    if sel["selection"] == "pt":
        lines.append(f"magnitude would give: {sel['magnitude_genotype']}  (PT took {sel['seconds']:.1f}s)")
    look = _maybe_lookup(sel["space"], sel["genotype"])
    if look:
        lines.append(f"NAS-Bench-201 cifar10 test accuracy: {look['test_accuracy']:.2f} (oracle {look['oracle_accuracy']:.2f})")
        sel = {**sel, "nb201": look}
    _print(sel, args.json, lines)
    return 0


def _cmd_strength(args: argparse.Namespace) -> int:
    from nas import stages

    cfg = config_mod.build_config("select", args.config, _overrides(args, ("run", "out", "device")), args.sets)
    r = stages.strength_stage(cfg)
    out = {k: r[k] for k in ("run", "base_acc", "spearman", "p_value")}
    _print({**out, "rows": r["rows"]}, args.json,
           [f"supernet validation accuracy {r['base_acc']:.4f}; Spearman(weight, accuracy drop) = "
            f"{r['spearman']:.3f} (p = {r['p_value']:.3g}) over {len(r['rows'])} ops"]
           + ([f"table and plot in {cfg.out}"] if cfg.out else []))
    return 0


def _check_work(args: argparse.Namespace) -> None:
    """Work sizes and pool sizes a user sets, bounded before any work: one line naming the flag."""
    import math

    bounds = {"workers": (1, 64), "threads": (0, 1024), "points": (2, 101), "batches": (1, 10_000)}
    for flag, (lo, hi) in bounds.items():
        value = getattr(args, flag, None)
        if value is not None and not lo <= value <= hi:
            raise NasError(f"--{flag}: expected {lo} to {hi}, got {value}")
    radius = getattr(args, "radius", None)
    if radius is not None and not (math.isfinite(radius) and 0 < radius <= 1e3):
        raise NasError(f"--radius: expected a number in (0, 1000], got {radius}")


def _cmd_landscape(args: argparse.Namespace) -> int:
    from nas import stages

    _check_work(args)
    res = stages.landscape_stage(args.run, args.out, args.points, args.radius, args.batches, args.seed,
                                 args.device)
    _print({"landscapes": res["landscapes"], "figure": res["figure"]}, args.json,
           [f"{r['method']} ({r['run']}): L_val(α) {r['center_loss']:.4f}, max rise {r['max_rise']:.4f}, "
            f"mean rise {r['mean_rise']:.4f}" for r in res["landscapes"]] + [f"figure: {res['figure']}"])
    return 0


def _cmd_grid(args: argparse.Namespace) -> int:
    from nas import grid

    _check_work(args)

    def split(v, cast=str):
        return [cast(x) for x in v.split(",") if x.strip()] if v else None

    spec = grid.load_grid(args.protocol, args.out, args.report, split(args.methods), split(args.seeds, int),
                          split(args.selections))
    if args.from_tracking and not args.report_only:
        raise NasError("--from-tracking: only with --report-only")
    if args.from_tracking:
        from nas.grid.run import rows_from_tracking

        rep = grid.write_report(spec, rows_from_tracking(spec))
    elif args.report_only:
        rep = grid.write_report(spec)
    else:
        grid.run_grid(spec, args.data, workers=args.workers, threads=args.threads)
        rep = grid.write_report(spec)
    _print({k: v for k, v in rep.items() if k != "summary"}, args.json,
           [rep["markdown"], f"per-run CSV: {rep['runs_csv']}", f"table: {rep['table_md']}, {rep['table_csv']}",
            "figures: " + ", ".join(rep["figures"])])
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from nas import calibrate

    _check_work(args)

    spec = calibrate.load_calibration(args.protocol, args.out, args.report)
    if args.references:
        refs = {sp: calibrate.reference_genotypes(sp) for sp in spec.spaces}
        _print(refs, args.json, [f"{sp} {cell}: {g}" for sp, r in refs.items() for cell, g in r.items()])
        return 0
    chosen = (calibrate.write_report(spec) if args.report_only else
              calibrate.run_calibration(spec, args.data, args.workers, args.threads, args.every, args.candidates,
                                        args.spaces))
    table = (Path(spec.report) / "table.md").read_text()
    _print({"chosen": chosen, "report": spec.report}, args.json, [table, f"per-run CSV: {spec.report}/runs.csv"])
    return 0 if chosen else 1


def _cmd_cluster(args: argparse.Namespace) -> int:
    import math

    from nas.cluster import Cluster

    if not args.root.strip():
        raise NasError("--root: expected a folder, got an empty string")
    if args.action == "up":  # checked before anything starts: a refusal leaves no service behind
        if args.workers < 1 or args.workers > 64:
            raise NasError(f"--workers: expected 1 to 64, got {args.workers}")
        if not math.isfinite(args.timeout) or not 1 <= args.timeout <= 3600:
            raise NasError(f"--timeout: expected 1 to 3600 seconds, got {args.timeout}")
    cluster = Cluster(args.root)
    if args.action == "up":
        cluster.up(args.workers, args.prefect, args.timeout)
    elif args.action == "down":
        cluster.down()
        return 0
    elif not cluster.state.get("services"):
        raise NasError(f"{cluster.state_path}: no cluster is up in {cluster.root} ('nas cluster up' first)")
    _print(cluster.env(), args.json, [cluster.exports()])
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from nas import stages

    info = stages.info_stage(args.space, args.genotype, args.channels, args.cells, args.num_classes,
                             args.in_channels, args.resolution)
    _print(info, args.json, [f"genotype: {info['genotype']}", f"params:   {info['params']:,}",
                             f"FLOPs:    {info['flops'] / 1e6:.2f} M ({info['macs'] / 1e6:.2f} M MACs) "
                             f"at {info['resolution']}x{info['resolution']}"])
    return 0


def _cmd_lookup(args: argparse.Namespace) -> int:
    from nas import stages

    r = stages.lookup_stage(args.genotype, args.dataset, args.table)
    _print(r, args.json, [f"genotype: {r['genotype']}",
                          f"{r['dataset']} test accuracy: {r['test_accuracy']:.2f}  "
                          f"(oracle {r['oracle_accuracy']:.2f}, gap {r['gap_to_oracle']:.2f}, "
                          f"rank {r['rank']}/{r['of']})",
                          "all: " + ", ".join(f"{d} {v:.2f}" for d, v in r["all_datasets"].items())])
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nas import stages

    m = stages.evaluate_stage(args.search, args.selection, args.retrain, args.out)
    from nas import tracking

    if tracking.enabled():  # the pipeline's summary row: what `dvc repro` found, comparable in the UI
        tags = {"stage": "evaluate", "method": m["method"], "selection": m["selection"], "space": m["space"],
                "seed": m.get("seed"), "config_digest": m.get("config_digest"),
                "source": _source()}
        name = tracking.run_name("evaluate", m["method"], m["selection"], m["space"], m.get("seed"),
                                 m.get("config_digest"))
        with tracking.stage_run(name, tags) as (tracker, run_id):
            from nas import tracking_stages  # lazily: `nas --help` loads no torch
            tracking_stages.log_summary(tracker, run_id, m)
    lines = [f"genotype: {m['genotype']}", f"test accuracy: {100 * m['test_acc']:.2f}%  params {m['params']:,}"]
    if "nb201" in m:
        lines.append("NAS-Bench-201: " + ", ".join(f"{d} {v:.2f}" for d, v in m["nb201"].items()))
    lines.append(f"metrics: {args.out}/metrics.json")
    _print(m, args.json, lines)
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from nas import stages

    if args.selection:
        picked = stages.read_genotype(args.selection)
        args.genotype = args.genotype or picked["genotype"]
        args.space = args.space or picked["space"]
    cfg = config_mod.build_config("retrain", args.config,
                                  _overrides(args, ("space", "genotype", *_DATA_KEYS)), args.sets)
    tags = {"space": cfg.space, "dataset": cfg.dataset, "seed": cfg.seed, "genotype": cfg.genotype}
    stages.preflight("retrain", cfg, args.resume, args.force)
    with _tracked("retrain", cfg, tags) as (tracker, run_id):
        res = stages.retrain_stage(cfg, resume=args.resume, force=args.force)
        from nas import tracking_stages  # lazily: `nas --help` loads no torch
        tracking_stages.log_retrain(tracker, run_id, res, f"{cfg.out}/model.pt")
    out = {k: res[k] for k in ("space", "genotype", "params", "test_acc", "test_loss", "epochs", "seconds")}
    out["result"] = f"{cfg.out}/result.json"
    _print(out, args.json, [f"genotype: {res['genotype']}", f"params:   {res['params']:,}",
                            f"test accuracy: {res['test_acc'] * 100:.2f}% after {res['epochs']} epochs "
                            f"({res['seconds']:.1f}s)", f"result:   {cfg.out}/result.json"])
    return 0


COMMANDS = {"prepare": _cmd_prepare, "search": _cmd_search, "select": _cmd_select, "strength": _cmd_strength, "landscape": _cmd_landscape, "grid": _cmd_grid, "calibrate": _cmd_calibrate, "cluster": _cmd_cluster, "info": _cmd_info, "lookup": _cmd_lookup, "evaluate": _cmd_evaluate, "retrain": _cmd_retrain}


def _epoch_logger(tracker: Any, run_id: str | None, space: str) -> Any:
    from nas import tracking_stages  # lazily: `nas --help` loads no torch
    log = tracking_stages.epoch_logger(tracker, run_id, space)
    return lambda st: log(st.history[-1])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

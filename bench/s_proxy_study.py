"""The S-space proxy study: does plain DARTS degenerate at a CPU scale?

``record`` reads one search run folder (its ``result.json`` when the search finished, else its
checkpoint, for a search stopped early) and adds to the study folder
  - a row of ``runs.csv``: the selected normal and reduction ops, the mean weight of the space's
    parameter-free op (``op``: noise on S4, skip_connect on the others; the ``*_skip_*`` columns
    hold it) on the normal edges at the first epoch, its lowest value (and epoch) and its last, the reduction
    edges' at the end, the last top Hessian eigenvalue, the supernet's training and validation
    accuracy and the search minutes (the sum of the epoch times);
  - the per-epoch curves of ``skip_weights.json``: those two mean skip weights, the accuracies and
    whether α was trained in that epoch.
``plot`` draws ``skip_weights.png`` from ``skip_weights.json``: one panel per run.

    nas search --space s2 --method darts --seed 1 --dataset cifar10 --data ../shared/data/cifar10-jpeg.tar.gz \\
        --epochs 100 --set subset=200 --set resolution=16 --set channels=8 --set cells=5 --out runs/study-s/s2-a
    python bench/s_proxy_study.py record runs/study-s/s2-a --name s2-a --settings "subset=200 ..." --planned 100
    python bench/s_proxy_study.py plot
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

STUDY = Path(__file__).resolve().parent.parent / "data" / "results" / "s-proxy-study"
FIELDS = ["run", "space", "method", "seed", "settings", "op", "epochs", "normal_ops", "reduce_ops",
          "normal_skip_weight_epoch1", "normal_skip_weight_final", "reduce_skip_weight_final", "top_eigenvalue_final",
          "train_acc", "val_acc", "minutes", "planned_epochs", "normal_skip_weight_min", "normal_skip_min_epoch"]


def _history(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from nas.runs.files import read_json, torch_load
    from nas.utils import NasError

    if (run / "result.json").is_file():
        res = read_json(run / "result.json")
        return res["history"], res["config"]
    if (run / "checkpoint.pt").is_file():
        ck = torch_load(run / "checkpoint.pt")
        return ck["history"], ck["config"]
    raise NasError(f"{run}: neither result.json nor checkpoint.pt (expected a search run folder)")


def tracked_op(space: str) -> str:
    """The parameter-free op whose weight the study follows: S4's noise, elsewhere skip_connect."""
    return "noise" if space == "s4" else "skip_connect"


def _mean_skip(weights: list[list[float]], edge_ops: tuple[tuple[str, ...], ...], lo: int, hi: int,
               op: str = "skip_connect") -> float:
    vals = [weights[e][edge_ops[e].index(op)] for e in range(lo, hi) if op in edge_ops[e]]
    return sum(vals) / len(vals) if vals else float("nan")


def record(run: Path, name: str, settings: str, planned: int, study: Path = STUDY) -> dict[str, Any]:
    """Add (or replace) the study row and curves of one search run; returns the row."""
    from nas.spaces import get_space
    from nas.utils import NasError, atomic_write

    history, cfg = _history(run)
    if not history:
        raise NasError(f"{run}: the search has not finished an epoch yet")
    space = get_space(cfg["space"])
    if space.alpha_shape[0] != 28:
        raise NasError(f"{run}: space {cfg['space']!r} is not a DARTS-space (S1-S4) search")
    half = space.alpha_shape[0] // 2
    op = tracked_op(cfg["space"])
    normal = [_mean_skip(r["weights"], space.edge_ops, 0, half, op) for r in history]
    reduce = [_mean_skip(r["weights"], space.edge_ops, half, 2 * half, op) for r in history]
    last = history[-1]
    gen = space.parse_genotype(last["genotype"])
    eig = [r["hessian_eig"] for r in history if r.get("hessian_eig") is not None]
    low = min(range(len(normal)), key=lambda i: (normal[i], i))
    row = {"run": name, "space": cfg["space"], "method": cfg["method"], "seed": cfg["seed"], "settings": settings, "op": op,
           "epochs": last["epoch"], "normal_ops": " ".join(op for op, _ in gen.normal),
           "reduce_ops": " ".join(op for op, _ in gen.reduce),
           "normal_skip_weight_epoch1": f"{normal[0]:.4f}", "normal_skip_weight_final": f"{normal[-1]:.4f}",
           "reduce_skip_weight_final": f"{reduce[-1]:.4f}", "top_eigenvalue_final": f"{eig[-1]:.4f}" if eig else "",
           "train_acc": f"{last['train_acc']:.4f}", "val_acc": f"{last['val_acc']:.4f}",
           "minutes": f"{sum(r.get('seconds', 0.0) for r in history) / 60:.2f}", "planned_epochs": planned,
           "normal_skip_weight_min": f"{normal[low]:.4f}", "normal_skip_min_epoch": history[low]["epoch"]}
    study.mkdir(parents=True, exist_ok=True)
    csv_path = study / "runs.csv"
    rows = list(csv.DictReader(csv_path.open())) if csv_path.is_file() else []
    rows = [r for r in rows if r["run"] != name] + [row]
    for r in rows:  # rows recorded before the op column
        r["op"] = r.get("op") or tracked_op(r["space"])

    def write_csv(p: Path) -> None:
        with p.open("w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in FIELDS})

    atomic_write(csv_path, write_csv)
    curves_path = study / "skip_weights.json"
    curves = json.loads(curves_path.read_text()) if curves_path.is_file() else {}
    curves[name] = {"epoch": [r["epoch"] for r in history], "train_acc": [r["train_acc"] for r in history],
                    "val_acc": [r["val_acc"] for r in history],
                    "alpha_trained": [r.get("alpha_trained", True) for r in history], "op": op,
                    "normal_skip_weight": [round(v, 4) for v in normal],
                    "reduce_skip_weight": [round(v, 4) for v in reduce]}
    atomic_write(curves_path, lambda p: p.write_text(json.dumps(curves, indent=1) + "\n"))
    return row


def plot(study: Path = STUDY) -> Path:
    """``skip_weights.png``: per run, the mean skip weight of the normal and the reduction edges and
    the supernet's training accuracy against the epoch (α frozen: shaded)."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas.utils import atomic_write

    curves = json.loads((study / "skip_weights.json").read_text())
    cols = min(2, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 3.4 * rows), dpi=110, squeeze=False)
    for ax, (name, c) in zip(axes.flat, curves.items()):
        op = c.get("op", "skip_connect")
        ax.plot(c["epoch"], c["normal_skip_weight"], lw=2, label=f"{op} weight, normal edges")
        ax.plot(c["epoch"], c["reduce_skip_weight"], lw=2, label=f"{op} weight, reduction edges")
        ax.plot(c["epoch"], c["train_acc"], ls=":", color="grey", label="supernet training accuracy")
        frozen = [e for e, t in zip(c["epoch"], c["alpha_trained"]) if not t]
        if frozen:
            ax.axvspan(min(frozen) - 0.5, max(frozen) + 0.5, color="grey", alpha=0.12, lw=0, label="α frozen")
        ax.axhline(0.5, color="k", lw=0.6)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name} ({op})", fontsize=8)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    for ax in list(axes.flat)[:len(curves)]:
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("DARTS on S2 and S4 at CPU scales: mean mixing weight of the parameter-free op (0.5 = uniform)",
                 fontsize=10)
    fig.tight_layout()
    out = study / "skip_weights.png"
    atomic_write(out, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    from nas.utils import NasError

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="add a search run to the study")
    r.add_argument("run", type=Path)
    r.add_argument("--name", required=True)
    r.add_argument("--settings", required=True, help="the --set KEY=VALUE settings of the search, for the table")
    r.add_argument("--planned", type=int, required=True, help="the epochs the search was started for")
    r.add_argument("--study", type=Path, default=STUDY)
    p = sub.add_parser("plot", help="draw skip_weights.png")
    p.add_argument("--study", type=Path, default=STUDY)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "record":
            print(record(args.run, args.name, args.settings, args.planned, args.study))
        else:
            print(plot(args.study))
    except NasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

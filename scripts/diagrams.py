"""Draw the docs' diagrams (docs/figures/*.png) from the boxes and arrows below.

    python scripts/diagrams.py            # rewrites docs/figures/

Each diagram is data: boxes (name -> position, size, text, colour) and arrows between box names.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "figures"
COLOURS = {"entry": "#dbe9f6", "run": "#fde7c8", "stage": "#d9f0d3", "core": "#e8ddf3", "store": "#eeeeee",
           "host": "#f7f7f7"}


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float
    text: str
    kind: str = "stage"


def draw(name: str, size: tuple[float, float], boxes: dict[str, Box], arrows: list[tuple], title: str,
         sideways: bool = False) -> Path:
    fig, ax = plt.subplots(figsize=size)
    ax.set_xlim(0, size[0])
    ax.set_ylim(0, size[1])
    ax.axis("off")
    for b in boxes.values():
        ax.add_patch(FancyBboxPatch((b.x, b.y), b.w, b.h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    fc=COLOURS[b.kind], ec="#555555", lw=1.0))
        ax.text(b.x + b.w / 2, b.y + b.h / 2, b.text, ha="center", va="center", fontsize=9, wrap=True)
    for arrow in arrows:
        src, dst, label = (*arrow, "")[:3]
        a, b = boxes[src], boxes[dst]
        start, end = _ends(a, b, sideways)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#333333", lw=1.0,
                                     shrinkA=2, shrinkB=2))
        if label:
            vertical = abs(start[0] - end[0]) < 1e-6
            ax.text((start[0] + end[0]) / 2 + (0.08 if vertical else 0), (start[1] + end[1]) / 2 + 0.08, label,
                    ha="left" if vertical else "center", va="center" if vertical else "bottom", fontsize=8,
                    color="#333333", bbox={"fc": "white", "ec": "none", "pad": 0.5})
    ax.set_title(title, fontsize=11)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def _ends(a: Box, b: Box, sideways: bool) -> tuple[tuple[float, float], tuple[float, float]]:
    """From the side of box a that faces box b to the facing side of b (left or right if sideways)."""
    ax_, ay = a.x + a.w / 2, a.y + a.h / 2
    bx, by = b.x + b.w / 2, b.y + b.h / 2
    if (sideways and abs(bx - ax_) > 1e-6) or abs(bx - ax_) * (a.h + b.h) >= abs(by - ay) * (a.w + b.w):  # mostly sideways
        return ((a.x + a.w, ay), (b.x, by)) if bx > ax_ else ((a.x, ay), (b.x + b.w, by))
    return ((ax_, a.y), (bx, b.y + b.h)) if by < ay else ((ax_, a.y + a.h), (bx, b.y))


def supernet_edge() -> Path:
    ops = ["none", "skip_connect", "conv 1x1", "conv 3x3", "avg_pool 3x3"]
    boxes = {"xi": Box(0.2, 2.0, 1.2, 0.8, "node i\n(feature map)", "core"),
             "sum": Box(5.6, 2.0, 1.6, 0.8, "Σ  p_k · op_k(x_i)", "run"),
             "xj": Box(8.0, 2.0, 1.2, 0.8, "node j", "core"),
             "alpha": Box(5.4, 4.3, 2.0, 0.7, "p = softmax(α_ij)\n(the method's mixing)", "entry")}
    for k, op in enumerate(ops):
        boxes[op] = Box(2.6, 0.2 + k * 0.95, 1.9, 0.6, f"{op}  (w)" if "conv" in op else op)
    arrows = [("xi", op) for op in ops] + [(op, "sum") for op in ops] + [("sum", "xj"), ("alpha", "sum")]
    return draw("supernet-edge", (9.5, 5.2), boxes, arrows,
                "One edge of the supernet: every op runs (the convolutions hold w), α weights their outputs",
                sideways=True)


def pipeline() -> Path:
    names = ["prepare", "search", "select", "retrain", "evaluate"]
    text = {"prepare": "prepare\ndata → tensors", "search": "search\ntrain w and α", "select": "select\nα → cell",
            "retrain": "retrain\nthe cell alone", "evaluate": "evaluate\ntest acc, NB201"}
    boxes = {n: Box(0.3 + 2.1 * i, 1.6, 1.7, 0.9, text[n]) for i, n in enumerate(names)}
    boxes["layers"] = Box(0.3, 3.3, 10.1, 0.8, "run by:  nas CLI  ·  dvc repro (dvc.yaml)  ·  Prefect flows "
                          "(cached tasks, deployments)  ·  grids and Optuna sweeps", "entry")
    boxes["mlflow"] = Box(2.4, 0.1, 6.0, 0.7, "MLflow: α history, Hessian eigenvalues, cells, accuracies", "store")
    arrows = [(a, b) for a, b in zip(names, names[1:])] + [("search", "mlflow"), ("evaluate", "mlflow")]
    return draw("pipeline", (10.8, 4.4), boxes, arrows, "The pipeline: five plain stages, one cached job each")


def architecture() -> Path:
    boxes = {
        "entry": Box(0.2, 4.4, 9.6, 0.8, "entry points:  nas CLI (nas/cli.py)  ·  dvc.yaml  ·  flows/ (Prefect)  ·  "
                     "nas grid / calibrate / sweep", "entry"),
        "runs": Box(0.2, 3.0, 9.6, 0.9, "run layer (nas/runs/): typed Job = stage + resolved config + input digests;\n"
                    "one cache key, claim, archive/restore, results rows, failure report, runner", "run"),
        "stages": Box(0.2, 1.7, 4.6, 0.8, "stages (nas/stages.py): prepare, search,\nselect, retrain, evaluate"),
        "track": Box(5.2, 1.7, 4.6, 0.8, "tracking (nas/tracking*.py): MLflow client\nand one adapter per stage", "store"),
        "loop": Box(0.2, 0.2, 3.0, 1.0, "one search loop\n(nas/search.py)", "core"),
        "methods": Box(3.5, 0.2, 3.1, 1.0, "methods as plug-ins: mixing,\nperturbation, selection,\nown settings", "core"),
        "net": Box(6.9, 0.2, 2.9, 1.0, "one supernet over\nspaces as data\n(NB201, DARTS, S1-S4)", "core"),
    }
    arrows = [("entry", "runs"), ("runs", "stages"), ("stages", "track"), ("stages", "loop"), ("loop", "methods"),
              ("methods", "net")]
    return draw("architecture", (10.0, 5.6), boxes, arrows, "How the code is layered")


def several_machines() -> Path:
    boxes = {
        "client": Box(0.2, 2.4, 2.4, 1.2, "client host\nnas grid / flows.sweep\n(builds the jobs)", "entry"),
        "db": Box(3.6, 4.2, 2.6, 0.9, "db host\nPostgreSQL: Optuna,\nPrefect, MLflow stores", "store"),
        "tracking": Box(7.2, 4.2, 2.6, 0.9, "tracking host\nmlflow server\n(artifact store)", "store"),
        "orch": Box(3.6, 2.4, 2.6, 1.2, "orchestration host\nPrefect server\nDask scheduler", "run"),
        "w1": Box(7.2, 2.7, 2.6, 0.8, "GPU worker 1\ndask worker", "core"),
        "w2": Box(7.2, 1.5, 2.6, 0.8, "GPU worker 2\ndask worker", "core"),
        "w3": Box(7.2, 0.3, 2.6, 0.8, "GPU worker N\n(torchrun ranks)", "core"),
    }
    arrows = [("client", "orch", "jobs"), ("orch", "w1"), ("orch", "w2"), ("orch", "w3"), ("orch", "db"),
              ("client", "db", "study"), ("w1", "tracking", "metrics, files")]
    return draw("several-machines", (10.0, 5.5), boxes, arrows,
                "Several machines: one database, one tracking server, Dask workers that run the jobs", sideways=True)


def main() -> int:
    for fn in (supernet_edge, pipeline, architecture, several_machines):
        print(fn())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Draw docs/distributed.png: a global batch cut into micro-batches over two ranks, their
gradients summed, the same step on every rank.  python scripts/draw_distributed.py"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

COLOURS = ["#4c72b0", "#55a868", "#c44e52", "#8172b2"]


def box(ax, x, y, w, h, text, colour="#eeeeee", size=10):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=colour, ec="#333333", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(ax, a, b):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, lw=1.2, color="#333333"))


def main() -> None:
    fig, ax = plt.subplots(figsize=(10, 4.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4.6)
    ax.axis("off")
    ax.text(0.1, 4.3, "one global batch (the same on every rank), cut into ranks x accumulate micro-batches",
            fontsize=10)
    for j in range(4):
        box(ax, 0.1 + 1.3 * j, 3.5, 1.2, 0.55, f"micro-batch {j}", COLOURS[j], 8)
    for r in range(2):
        y = 2.1 - 1.3 * r
        box(ax, 5.3, y, 2.0, 0.8, f"rank {r}\nsupernet w, α\n(micro-batches {2 * r}, {2 * r + 1})", size=9)
        for j in (2 * r, 2 * r + 1):
            arrow(ax, (0.7 + 1.3 * j, 3.5), (5.3, y + 0.4))
        arrow(ax, (7.3, y + 0.4), (7.9, 1.75))
    box(ax, 7.9, 1.3, 2.0, 0.9, "all-reduce:\nsum of weighted\ngradients (w, α)", "#f3e5ab", 9)
    ax.text(5.3, 0.25, "every rank takes the same optimiser step: w and α stay identical, one genotype at the end",
            fontsize=9, ha="center")
    out = Path(__file__).resolve().parent.parent / "docs" / "distributed.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(out)


if __name__ == "__main__":
    main()

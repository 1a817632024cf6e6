"""Static pictures of a pipeline run's plot tables.

``dvc plots show`` draws the CSV tables with vega, which its HTML page loads from a CDN; the PNG
pictures written here beside them are listed in ``dvc.yaml`` too, so the page shows every curve
offline as well.
"""

from __future__ import annotations

import csv
from pathlib import Path

from nas.utils import atomic_write

# table -> (title, y label, log scale)
PLOTS = {
    "alpha.csv": ("mean mixing weight per op during search", "mean mixing weight", False),
    "eigenvalue.csv": ("top Hessian eigenvalue of L_val w.r.t. alpha", "top eigenvalue", False),
    "search_accuracy.csv": ("supernet accuracy during search", "accuracy (%)", False),
    "retrain_accuracy.csv": ("training accuracy during retraining", "training accuracy (%)", False),
    "retrain_loss.csv": ("training loss during retraining", "training loss (cross-entropy)", False),
}


def _read(path: Path) -> tuple[list[str], list[list[float]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return [], []
    return rows[0], [[float(x) for x in r] for r in rows[1:] if r]


def pipeline_plots(folder: str | Path) -> list[Path]:
    """``<table>.png`` for every plot table in ``folder``: each column against ``epoch``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folder = Path(folder)
    written = []
    for name, (title, ylabel, log) in PLOTS.items():
        path = folder / name
        if not path.is_file():
            continue
        header, rows = _read(path)
        fig, ax = plt.subplots(figsize=(7.2, 3.6), dpi=100)
        if rows:
            xs = [r[0] for r in rows]
            for k, col in enumerate(header[1:], start=1):
                ax.plot(xs, [r[k] for r in rows], marker="o" if len(rows) < 25 else None, ms=3, label=col)
            if len(header) > 2:  # beside the axes, never over the curves
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        else:
            ax.text(0.5, 0.5, "no data (not computed in this run)", ha="center", va="center", transform=ax.transAxes)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = folder / name.replace(".csv", ".png")
        atomic_write(out, lambda p, fig=fig: fig.savefig(p, format="png"))
        plt.close(fig)
        written.append(out)
    return written

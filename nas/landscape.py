"""The loss landscape of a finished search around its α (the "smoother landscape" figure of
SDARTS, Chen & Hsieh 2020): L_val of the supernet at α + a·d1 + b·d2 on a grid of (a, b) in
[-radius, radius]², along two random directions d1, d2 of α's shape whose rows (edges) each have
unit L2 norm.  The supernet's weights w stay those of the search; L_val is measured as PT measures
accuracy, on the first ``batches`` batches of the unaugmented α split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nas.progress import progress_bar
from nas.rng import rng_stream
from nas.runs.files import write_json
from nas.select import load_supernet
from nas.utils import NasError, atomic_write, check_output_dir, generator_for, write_csv


def directions(shape: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random directions of α's shape, each edge's row of unit L2 norm."""
    gen = generator_for(seed, rng_stream("landscape-directions"))
    out = []
    for _ in range(2):
        d = torch.randn(shape, generator=gen, dtype=torch.float64)
        out.append(d / d.norm(dim=-1, keepdim=True))
    return out[0], out[1]


def landscape(run: str | Path, points: int = 11, radius: float = 1.0, batches: int = 4, seed: int = 0,
              device: str = "auto", out: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """The landscape of the search in ``run``; with ``out``, ``landscape.json``, ``landscape.csv``
    and ``landscape.png`` are written there.  Returns the grid, the losses and their summary.
    ``progress`` shows a bar over the ``points``² evaluations on a terminal."""
    if points < 2 or radius <= 0 or batches < 1:
        raise NasError(f"landscape: points must be >= 2, radius > 0 and batches >= 1, got {points}, {radius}, {batches}")
    if out is not None:
        check_output_dir(out)
    search, st, _, _, val = load_supernet(run, device)
    alpha = st.arch.alpha.detach().clone()
    d1, d2 = (d.to(alpha) for d in directions(tuple(alpha.shape), seed))
    axis = torch.linspace(-radius, radius, points, dtype=torch.float64).tolist()
    losses = []
    bar = progress_bar(progress, total=points * points, initial=0, desc=f"landscape {Path(run).name}")
    try:
        with torch.no_grad():
            for a in axis:
                row = []
                for b in axis:
                    mix = search.expected_mix(st, alpha + a * d1 + b * d2)
                    row.append(search.measurement.measure(st, val, mix, batches)[0])
                    if bar is not None:
                        bar.update(1)
                losses.append(row)
            center = search.measurement.measure(st, val, search.expected_mix(st, alpha), batches)[0]
    finally:
        if bar is not None:
            bar.close()
    flat = [v for r in losses for v in r]
    result = {
        "run": str(run), "method": search.method.name, "space": search.space.name, "seed": seed,
        "radius": radius, "points": points, "batches": batches, "axis": axis, "loss": losses,
        "center_loss": center, "max_rise": max(flat) - center, "mean_rise": sum(flat) / len(flat) - center,
    }
    if out is not None:
        out = Path(out)
        write_json(out / "landscape.json", result)
        write_csv(out / "landscape.csv", [{"a": a, "b": b, "loss": losses[i][j]} for i, a in enumerate(axis)
                                          for j, b in enumerate(axis)], ["a", "b", "loss"], "{:.6g}")
        draw([result], out / "landscape.png")
    return result


def draw(results: list[dict[str, Any]], path: str | Path) -> None:
    """One contour panel per landscape, on a shared colour scale of the rise over the centre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rises = [np.array(r["loss"]) - r["center_loss"] for r in results]
    top = max(float(z.max()) for z in rises)
    bottom = min(float(z.min()) for z in rises)
    levels = np.linspace(bottom, top if top > bottom else bottom + 1e-6, 15)
    fig, axes = plt.subplots(1, len(results), figsize=(3.9 * len(results) + 1.0, 3.6), dpi=120, squeeze=False,
                             layout="constrained")
    for ax, r, z in zip(axes[0], results, rises):
        grid = np.array(r["axis"])
        cs = ax.contourf(grid, grid, z.T, levels=levels, cmap="viridis")
        ax.plot([0], [0], "r+", ms=10)
        ax.set_title(f"{r['method']}: max rise {r['max_rise']:.3f}", fontsize=9)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
    fig.colorbar(cs, ax=axes[0].tolist(), label="L_val - L_val(α)")
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))
    plt.close(fig)

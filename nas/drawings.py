"""Pictures and arrays of a search for the trackers and reports: each op's mean mixing weight, the
α history as an array and a heatmap, and the drawing of a genotype's cells."""

from __future__ import annotations

import functools
import io
from typing import Any

import numpy as np

from nas.spaces import get_space


def op_means(weights: list[list[float]], edge_ops: Any) -> dict[str, float]:
    """Mean mixing weight of each op over the edges that offer it (ops in first-seen order)."""
    sums: dict[str, list[float]] = {}
    for w, ops in zip(weights, edge_ops):
        if len(w) != len(ops):  # a progressively pruned edge: its ops are no longer the space's
            continue
        for op, v in zip(ops, w):
            sums.setdefault(op, []).append(float(v))
    return {op: sum(v) / len(v) for op, v in sums.items()}


def alpha_history_npz(history: list[dict[str, Any]]) -> bytes:
    """α and the mixing weights of every epoch as arrays ``[epochs, edges, ops]``."""

    buf = io.BytesIO()
    arrays = {"epoch": np.array([h["epoch"] for h in history])}
    for key in ("alpha", "weights"):
        if all(key in h for h in history) and len({np.shape(h[key]) for h in history}) == 1:
            arrays[key] = np.array([h[key] for h in history], dtype=np.float32)
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_bytes(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _plt().close(fig)
    return buf.getvalue()


def alpha_heatmap_png(result: dict[str, Any]) -> bytes:
    """Left: each op's mean mixing weight minus the uniform weight, over the epochs (a diverging
    scale centred on 0, so differences of 0.001 show).  Right: the final weights per edge."""

    plt = _plt()
    sp = get_space(result["space"])
    hist = [h for h in result["history"] if "weights" in h]
    per_epoch = [op_means(h["weights"], sp.edge_ops) for h in hist]
    ops = list(dict.fromkeys(op for m in per_epoch for op in m))
    n_ops = {op: sum(op in e for e in sp.edge_ops) for op in ops}
    uniform = {op: float(np.mean([1.0 / len(e) for e in sp.edge_ops if op in e])) for op in ops}
    dev = np.array([[m.get(op, np.nan) - uniform[op] for m in per_epoch] for op in ops])
    epochs = [h["epoch"] for h in hist]
    final = result["weights"]
    width = max(len(w) for w in final)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * max(len(ops), width) + 2.2), dpi=110,
                             gridspec_kw={"width_ratios": [3, 2]})
    span = max(1e-6, float(np.nanmax(np.abs(dev))) if dev.size else 1e-6)
    im = axes[0].imshow(dev, aspect="auto", cmap="RdBu_r", vmin=-span, vmax=span, interpolation="nearest",
                        extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(ops) - 0.5, -0.5))
    axes[0].set_yticks(range(len(ops)), [f"{op} ({n_ops[op]} edges)" if n_ops[op] != len(sp.edge_ops) else op
                                         for op in ops], fontsize=7)
    from matplotlib.ticker import MaxNLocator

    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_xlabel("epoch")
    axes[0].set_title("mean mixing weight minus uniform, per op", fontsize=9)
    fig.colorbar(im, ax=axes[0], label="weight - uniform")
    grid = np.full((width, len(final)), np.nan)
    for e, w in enumerate(final):
        grid[:len(w), e] = w
    # the colour scale spans the weights' own range, so that small differences show
    lo, hi = float(np.nanmin(grid)), float(np.nanmax(grid))
    im2 = axes[1].imshow(grid, aspect="auto", cmap="magma", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
    if all(tuple(e) == tuple(sp.edge_ops[0]) for e in sp.edge_ops):
        axes[1].set_yticks(range(width), sp.edge_ops[0], fontsize=7)
    else:
        axes[1].set_yticks(range(width), [f"op {k}" for k in range(width)], fontsize=7)
    axes[1].set_xticks(range(len(final)), list(sp.edge_names)[:len(final)], fontsize=6, rotation=90)
    axes[1].set_title("final mixing weights per edge", fontsize=9)
    fig.colorbar(im2, ax=axes[1])
    fig.suptitle(f"{result.get('method')} on {result.get('space')}", fontsize=10)
    return _png_bytes(fig)


def alpha_lines_png(result: dict[str, Any]) -> bytes:
    """Each op's mean mixing weight over the epochs, all ops on one axis from 0 to 1 (so that a
    move of 0.0003 looks as small as it is), beside the mean, lowest and highest edge entropy on an
    axis from 0 to log(number of ops) (uniform mixing)."""
    plt = _plt()
    sp = get_space(result["space"])
    hist = [h for h in result["history"] if "weights" in h]
    epochs = [h["epoch"] for h in hist]
    per_epoch = [op_means(h["weights"], sp.edge_ops) for h in hist]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), dpi=110)
    for op in dict.fromkeys(op for m in per_epoch for op in m):
        axes[0].plot(epochs, [m.get(op, np.nan) for m in per_epoch], label=op, lw=1.4)
    axes[0].set_ylim(0, 1)
    axes[0].set(xlabel="epoch", ylabel="mean mixing weight", title="mixing weight per op (one scale)")
    axes[0].legend(fontsize=7, ncol=2)
    ent = [h.get("edge_entropy") for h in hist]
    if all(ent):
        e = np.array(ent, dtype=float)
        axes[1].plot(epochs, e.mean(1), color="k", label="mean")
        axes[1].fill_between(epochs, e.min(1), e.max(1), color="0.8", label="lowest-highest edge")
        axes[1].set_ylim(0, float(np.log(max(len(ops) for ops in sp.edge_ops))) * 1.02)
        axes[1].legend(fontsize=7)
    axes[1].set(xlabel="epoch", ylabel="entropy (nats)", title="edge entropy (top: uniform)")
    fig.tight_layout()
    return _png_bytes(fig)


def cell_edges(space: str, genotype: str) -> list[tuple[list[tuple[int, int, str]], str]]:
    """The cell(s) of a genotype as (edges (src, dst, op), title)."""
    sp = get_space(space)
    geno = sp.parse_genotype(genotype)
    if not sp.genotype_json:  # one cell whose genotype is an op per edge (NAS-Bench-201)
        pairs = [tuple(int(x) for x in name.split("<-"))[::-1] for name in sp.edge_names]
        return [([(s, d, op) for (s, d), op in zip(pairs, geno) if op != "none"], "cell")]
    js = sp.genotype_json(geno)
    cells = []
    for kind in ("normal", "reduce"):
        edges = [(src, 2 + i // 2, op) for i, (op, src) in enumerate(js[kind])]
        cells.append((edges, kind))
    return cells


# One colour per kind of op, the same in every drawing.
OP_COLOURS = {"skip_connect": "#dd8452", "none": "#999999", "noise": "#c44e52", "avg_pool_3x3": "#8172b3",
              "max_pool_3x3": "#937860", "nor_conv_1x1": "#55a868", "nor_conv_3x3": "#4c72b0",
              "sep_conv_3x3": "#4c72b0", "sep_conv_5x5": "#64b5cd", "sep_conv_7x7": "#1f3d7a",
              "dil_conv_3x3": "#55a868", "dil_conv_5x5": "#2d6e3e"}


@functools.lru_cache(maxsize=64)  # a grid's report draws the same cells each time it is rewritten
def cell_png(space: str, genotype: str) -> bytes:
    """The cell(s) as graphs: nodes in a row, each edge an arc coloured by its op with the op's
    name at the middle of the arc, a legend of the colours."""
    from matplotlib.patches import Patch

    plt = _plt()
    cells = cell_edges(space, genotype)
    fig, axes = plt.subplots(1, len(cells), figsize=(6 * len(cells), 4.2), dpi=110, squeeze=False)
    seen: dict[str, str] = {}
    darts_like = len(cells) > 1
    for ax, (edges, title) in zip(axes.flat, cells):
        nodes = sorted({n for s, d, _ in edges for n in (s, d)} | ({0, 1} if darts_like else {0, 1, 2, 3}))
        pos = {n: (1.6 * i, 0.0) for i, n in enumerate(nodes)}
        for n, (x, y) in pos.items():
            ax.add_patch(plt.Circle((x, y), 0.22, color="#333333", zorder=3))
            label = ({0: "k-2", 1: "k-1"}.get(n, str(n - 2))) if darts_like else str(n)
            ax.text(x, y, label, ha="center", va="center", color="white", fontsize=7, zorder=4)
        for k, (s, d, op) in enumerate(edges):
            (x0, y0), (x1, y1) = pos[s], pos[d]
            # arcs above the row for even edges, below for odd; longer arcs bulge more
            sign = 1 if k % 2 == 0 else -1
            rad = sign * (0.35 + 0.05 * (d - s))
            colour = OP_COLOURS.get(op, "#333333")
            seen[op] = colour
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=2,
                        arrowprops=dict(arrowstyle="-|>", connectionstyle=f"arc3,rad={rad}", lw=1.6, color=colour,
                                        shrinkA=9, shrinkB=9))
            # the middle of matplotlib's arc3 curve: the chord's midpoint + rad/2 * (dy, -dx)
            dx, dy = x1 - x0, y1 - y0
            mx, my = (x0 + x1) / 2 + rad * dy / 2, (y0 + y1) / 2 - rad * dx / 2
            ax.text(mx, my, op, fontsize=6.5, ha="center", va="center", color=colour, zorder=5,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=colour, lw=0.6))
        xs = [p[0] for p in pos.values()]
        reach = 0.5 * 0.45 * (max(xs) - min(xs)) + 0.6
        ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
        ax.set_ylim(-reach, reach)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(f"{space} {title} cell" if title != "cell" else f"{space} cell", fontsize=9)
    fig.legend(handles=[Patch(color=c, label=op) for op, c in seen.items()], loc="lower center",
               ncol=min(len(seen), 6), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()

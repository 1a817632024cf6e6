"""A grid's figures: α per op over the epochs, eigenvalues, α against the accuracy drop, PT against
magnitude, the sharpness panels over the epochs and the loss landscapes; drawn from the per-run
curves kept beside the table (``curves.json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from nas.benchmarks import load_table
from nas.grid.spec import ARCHIVE, GridSpec
from nas.landscape import draw as draw_landscapes
from nas.methods import trains_alpha
from nas.spaces import get_space
from nas.tracking import op_means
from nas.utils import atomic_write


def _cell_folder(spec: GridSpec, space: str | None, method: str, seed: int) -> Path:
    """The cell's run folder, or its archived results in the report folder when this machine has no
    run folder for it (the cell ran on another machine, or this is a fresh clone)."""
    cell = spec.cell_dir(space, method, seed)
    if (cell / "search" / "result.json").is_file():
        return cell
    return Path(spec.report) / ARCHIVE / cell.name


def _result(spec: GridSpec, space: str | None, method: str, seed: int) -> dict[str, Any] | None:
    p = _cell_folder(spec, space, method, seed) / "search" / "result.json"
    return json.loads(p.read_text()) if p.is_file() else None


def collect_curves(spec: GridSpec, folder: Path) -> dict[str, Any]:
    """The per-run curves the figures are drawn from, keyed ``method/seed``: each op's mean mixing
    weight per epoch, the top-eigenvalue curve, the supernet's validation accuracy and the NB201
    accuracy of α's cell per epoch, the strength analysis and the landscape.  They are read from the
    run directories and kept in ``curves.json`` beside the table, so the figures can be redrawn
    from committed data (``nas grid --report-only``) without the run directories."""
    path = folder / "curves.json"
    curves: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    for label, sp, m in spec.labels():
        if not trains_alpha(spec.base_method(m)):
            continue
        for s in spec.seeds:
            res = _result(spec, sp, m, s)
            if res is None:
                continue
            cell = _cell_folder(spec, sp, m, s)
            space = get_space(res["space"])
            per_epoch = [op_means(h["weights"], space.edge_ops) for h in res["history"]]
            entry: dict[str, Any] = {
                "epochs": [h["epoch"] for h in res["history"]],
                "ops": {op: [e.get(op) for e in per_epoch] for op in dict.fromkeys(o for e in per_epoch for o in e)},
            }
            if "hessian" in res:
                entry["hessian_epochs"] = res["hessian"]["epochs"]
                entry["hessian"] = res["hessian"]["top_eigenvalue"]
            entry["val_acc"] = [h["val_acc"] for h in res["history"]]
            if space.benchmark is not None:  # the cell α selects at each epoch, looked up
                table = load_table()
                entry["selected_cifar10"] = [table.accuracy(h["genotype"], "cifar10") for h in res["history"]]
            strength = cell / "strength" / "strength.json"
            if strength.is_file():
                st = json.loads(strength.read_text())
                entry["strength"] = {"spearman": st["spearman"],
                                     "rows": [{k: r[k] for k in ("edge", "op", "weight", "drop")} for r in st["rows"]]}
            land = cell / "landscape" / "landscape.json"
            if land.is_file():
                lj = json.loads(land.read_text())
                entry["landscape"] = {k: lj[k] for k in ("axis", "loss", "center_loss", "max_rise", "mean_rise",
                                                         "radius", "points", "batches", "seed")}
            cfile = cell / "curve.json"
            if cfile.is_file():  # selections of the supernets kept during the search
                entry["selection_curve"] = json.loads(cfile.read_text())["rows"]
            curves[f"{label}/{s}"] = entry
    if curves:
        atomic_write(path, lambda p: p.write_text(json.dumps(curves, indent=1, sort_keys=True) + "\n"))
    return curves


def draw_figures(spec: GridSpec, rows: list[dict[str, Any]], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    curves = collect_curves(spec, folder.parent)

    def save(fig, name: str) -> None:
        atomic_write(folder / name, lambda p: fig.savefig(p, format="png"))
        plt.close(fig)
        written.append(str(folder / name))

    methods = [label for label, _, m in spec.labels() if trains_alpha(spec.base_method(m))]
    runs = {m: [curves[f"{m}/{s}"] for s in spec.seeds if f"{m}/{s}" in curves] for m in methods}
    runs = {m: r for m, r in runs.items() if r}
    figures = [("alpha_per_op.png", _alpha_figure(spec, runs)), ("eigenvalue.png", _eigen_figure(spec, runs)),
               # a retraining grid draws its cells; a looked-up one PT against magnitude
               ("cells.png", cells_figure(spec, rows) if spec.retrain else None),
               ("pt_vs_magnitude.png", None if spec.retrain else _pt_figure(spec, rows, methods)),
               ("alpha_vs_drop.png", _strength_figure(spec, runs))]
    for name, fig in figures:
        if fig is not None:
            save(fig, name)
    # the sharpness figure's three panels against the epoch (runs whose curves hold them)
    tracked = {m: [r for r in rs if r.get("selected_cifar10")] for m, rs in runs.items()}
    tracked = {m: rs for m, rs in tracked.items() if rs}
    if tracked:
        save(epoch_panels(tracked, f"{spec.name}: supernet, selected cell and sharpness during the search "
                                   "(mean over seeds; bands: min to max)"), "sharpness_over_epochs.png")
    # "performance improves with more searching epochs": magnitude and PT against the epoch
    kept = {m: [r["selection_curve"] for r in rs if r.get("selection_curve")] for m, rs in runs.items()}
    kept = {m: cs for m, cs in kept.items() if cs}
    if kept:
        save(selection_epochs(kept, f"{spec.name}: the selected cell against the search epoch "
                                    "(mean over seeds; bands: min to max)"), "search_epochs.png")
    # the loss landscape around α (each method's first seed that has one), shared colour scale
    lands = [{"method": m, **next(r["landscape"] for r in rs if r.get("landscape"))}
             for m, rs in runs.items() if any(r.get("landscape") for r in rs)]
    if lands:
        draw_landscapes(lands, folder / "landscape.png")
        written.append(str(folder / "landscape.png"))
    return written


def _alpha_figure(spec: GridSpec, runs: dict[str, list[dict[str, Any]]]) -> Any:
    """Each op's mean mixing weight over the epochs: mean over seeds, band = min..max over seeds."""
    import matplotlib.pyplot as plt
    import numpy as np

    if runs:
        cols = min(3, len(runs))
        nrows = math.ceil(len(runs) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.3 * nrows), dpi=110, squeeze=False,
                                 sharey=True)
        # one colour per op in every panel; spaces with other op sets (S1-S4) get a legend each
        all_ops = list(dict.fromkeys(op for rs in runs.values() for op in rs[0]["ops"]))
        colour = {op: f"C{i % 10}" for i, op in enumerate(all_ops)}
        one_legend = len({tuple(rs[0]["ops"]) for rs in runs.values()}) == 1
        for ax, (m, rs) in zip(axes.flat, runs.items()):
            n = min(len(r["epochs"]) for r in rs)
            xs = rs[0]["epochs"][:n]
            for op in rs[0]["ops"]:
                ys = np.array([[np.nan if v is None else v for v in r["ops"].get(op, [None] * n)[:n]] for r in rs])
                style = {"lw": 2.2} if op in ("skip_connect", "nor_conv_3x3") else {"lw": 1.0, "alpha": 0.85}
                ax.plot(xs, np.nanmean(ys, 0), label=op, color=colour[op], **style)
                if len(rs) > 1:
                    ax.fill_between(xs, np.nanmin(ys, 0), np.nanmax(ys, 0), color=colour[op], alpha=0.15, lw=0)
            ax.set_title(f"{m} (mean of {len(rs)} seed{'s' if len(rs) > 1 else ''})", fontsize=9)
            if not one_legend:
                ax.legend(fontsize=7)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        for ax in axes[:, 0]:
            ax.set_ylabel("mean mixing weight over edges")
        for ax in list(axes.flat)[len(runs):]:
            ax.axis("off")
        if one_legend:
            axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{spec.name}: op weights during search (lines: mean over seeds; bands: min to max)",
                     fontsize=10)
        fig.tight_layout()
        return fig
    return None


def _eigen_figure(spec: GridSpec, runs: dict[str, list[dict[str, Any]]]) -> Any:
    """The dominant Hessian eigenvalue over the epochs: mean over seeds, band = min..max, log scale."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=110)
    drawn = False
    for m, rs in runs.items():
        hs = [r for r in rs if r.get("hessian")]
        if not hs:
            continue
        n = min(len(r["hessian"]) for r in hs)
        xs = hs[0]["hessian_epochs"][:n]
        ys = np.array([r["hessian"][:n] for r in hs])
        line, = ax.plot(xs, ys.mean(0), marker="o", ms=3, label=f"{m} ({len(hs)} seeds)")
        if len(hs) > 1:
            ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15, lw=0)
        drawn = True
    if drawn:
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(r"$\lambda_{\max}\,(\nabla^2_\alpha \mathcal{L}_{val})$")
        ax.set_title(f"{spec.name}: sharpness during search (mean over seeds; bands: min to max)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig
    plt.close(fig)
    return None


def _pt_figure(spec: GridSpec, rows: list[dict[str, Any]], methods: list[str]) -> Any:
    """PT against magnitude on the same supernets, per method and seed (looked-up grids)."""
    import matplotlib.pyplot as plt

    pairs = []
    for m in methods:
        for s in spec.seeds:
            mag = [r for r in rows if r["method"] == m and int(r["seed"]) == s and r["selection"] == "magnitude"]
            pt = [r for r in rows if r["method"] == m and int(r["seed"]) == s and r["selection"] == "pt"]
            if mag and pt:
                pairs.append((m, s, float(mag[0]["cifar10"]), float(pt[0]["cifar10"])))
    if pairs:
        fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=110)
        labels = [f"{m}\nseed {s}" for m, s, _, _ in pairs]
        x = range(len(pairs))
        ax.bar([i - 0.2 for i in x], [p[2] for p in pairs], width=0.4, label="magnitude")
        ax.bar([i + 0.2 for i in x], [p[3] for p in pairs], width=0.4, label="PT")
        ax.axhline(table_oracle := _oracle_c10(), color="k", ls="--", lw=0.8, label=f"oracle {table_oracle:.2f}")
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_ylabel("NB201 CIFAR-10 test accuracy (%)")
        ax.set_title(f"{spec.name}: PT vs magnitude on the same supernets", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
        fig.tight_layout()
        return fig
    return None


def _strength_figure(spec: GridSpec, runs: dict[str, list[dict[str, Any]]]) -> Any:
    """α against the accuracy drop (the strength analysis of each method's first seed that
    has one): colour = method, marker = op."""
    import matplotlib.pyplot as plt

    pts = [(m, next(r["strength"] for r in rs if "strength" in r)) for m, rs in runs.items()
           if any("strength" in r for r in rs)]
    if pts:
        markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
        ops = list(dict.fromkeys(r["op"] for _, st in pts for r in st["rows"]))
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (_, st) in enumerate(pts):
            for j, op in enumerate(ops):
                sel = [r for r in st["rows"] if r["op"] == op]
                if sel:
                    ax.scatter([r["weight"] for r in sel], [100 * r["drop"] for r in sel], s=22,
                               color=colours[i % len(colours)], marker=markers[j % len(markers)], alpha=0.85)
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], ls="", marker="o", color=colours[i % len(colours)],
                          label=f"{m}: Spearman's ρ = {st['spearman']:.2f}") for i, (m, st) in enumerate(pts)]
        handles += [Line2D([], [], ls="", marker=markers[j % len(markers)], color="grey", label=op)
                    for j, op in enumerate(ops)]
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel("mixing weight of the op")
        ax.set_ylabel("supernet val. accuracy drop without the op (points)", fontsize=8)
        ax.set_title(f"{spec.name}: α vs accuracy drop (Spearman's rank correlation ρ)", fontsize=10)
        ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        return fig
    return None


def cells_figure(spec: GridSpec, rows: list[dict[str, Any]]) -> Any:
    """The selected normal and reduction cells of each space and selection (the first seed that has
    the row; methods side by side): the "degenerated solutions" figure.  Parameter-free ops are
    counted in each panel's title."""
    import io

    import matplotlib.pyplot as plt

    from nas.drawings import cell_png

    first: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: int(r["seed"])):
        first.setdefault((r["space"], r["method"], r["selection"]), r)
    if not first:
        return None
    spaces = list(dict.fromkeys(k[0] for k in first))
    cols = list(dict.fromkeys(k[1:] for k in first))
    fig, axes = plt.subplots(len(spaces), len(cols), figsize=(4.6 * len(cols), 2.6 * len(spaces)), dpi=110,
                             squeeze=False)
    for i, sp in enumerate(spaces):
        for j, (m, sel) in enumerate(cols):
            ax = axes[i, j]
            ax.axis("off")
            r = first.get((sp, m, sel))
            if r is None:
                continue
            ax.imshow(plt.imread(io.BytesIO(cell_png(sp, r["genotype"])), format="png"))
            free = r["normal_skip"] + r["normal_noise"] + r["normal_none"]
            ax.set_title(f"{sp}, {m} {sel}, seed {r['seed']}: {free} parameter-free ops in the normal cell, "
                         f"test error {float(r['test_error']):.2f}%", fontsize=7)
    fig.suptitle(f"{spec.name}: selected cells (normal and reduction)", fontsize=10)
    fig.tight_layout()
    return fig


def selection_epochs(curves: dict[str, list[list[dict[str, Any]]]], title: str) -> Any:
    """NB201 CIFAR-10 test accuracy of the magnitude and PT selections made on the supernets kept
    during the search, against the search epoch: one line per (method, selection), mean over the
    seeds that kept them, band min to max."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (m, runs) in enumerate(curves.items()):
        for selection, style in (("magnitude", "--"), ("pt", "-")):
            series = [{r["epoch"]: r["cifar10"] for r in rows if r["selection"] == selection} for rows in runs]
            epochs = sorted(set.intersection(*(set(s) for s in series)))
            if not epochs:
                continue
            ys = np.array([[s[e] for e in epochs] for s in series])
            ax.plot(epochs, ys.mean(0), style, marker="o", ms=4, color=colours[i % len(colours)],
                    label=f"{m}, {'PT' if selection == 'pt' else 'magnitude'} ({len(ys)} seed{'s' * (len(ys) > 1)})")
            if len(ys) > 1:
                ax.fill_between(epochs, ys.min(0), ys.max(0), color=colours[i % len(colours)], alpha=0.12, lw=0)
    ax.axhline(oracle := _oracle_c10(), color="k", ls=":", lw=0.8, label=f"oracle {oracle:.2f}")
    ax.set_xlabel("search epoch of the supernet selected from")
    ax.set_ylabel("NB201 CIFAR-10 test accuracy (%)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def epoch_panels(runs: dict[str, list[dict[str, Any]]], title: str) -> Any:
    """Three panels against the search epoch, one line per method (mean over its runs, band min to
    max): the supernet's validation error, the NB201 CIFAR-10 test error of the cell α selects at
    that epoch, and the dominant Hessian eigenvalue."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.8), dpi=110)
    for m, rs in runs.items():
        n = min(len(r["epochs"]) for r in rs)
        xs = rs[0]["epochs"][:n]
        series = [(axes[0], np.array([[100 * (1 - v) for v in r["val_acc"][:n]] for r in rs]), xs),
                  (axes[1], np.array([[100 - v for v in r["selected_cifar10"][:n]] for r in rs]), xs)]
        hs = [r for r in rs if r.get("hessian")]
        if hs:
            k = min(len(r["hessian"]) for r in hs)
            series.append((axes[2], np.array([r["hessian"][:k] for r in hs]), hs[0]["hessian_epochs"][:k]))
        colour = None
        for ax, ys, x in series:
            line, = ax.plot(x, ys.mean(0), lw=1.4, color=colour, label=f"{m} ({len(ys)})")
            colour = line.get_color()
            if len(ys) > 1:
                ax.fill_between(x, ys.min(0), ys.max(0), color=colour, alpha=0.15, lw=0)
    labels = ["supernet validation error (%)", "NB201 CIFAR-10 test error of α's cell (%)",
              r"$\lambda_{\max}\,(\nabla^2_\alpha \mathcal{L}_{val})$"]
    for ax, label in zip(axes, labels):
        ax.set_xlabel("search epoch")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _oracle_c10() -> float:
    return load_table().oracle("cifar10")[1]

"""Verified selection: check a few discrete cells before choosing one.

A supernet's weights rank cells cheaply but not reliably (a large α is no proof of a strong op).
``verify`` takes the ``verify_candidates`` best distinct discrete cells the finished search
proposes, trains each from scratch for ``verify_epochs`` on the search's w split exactly as the
random-search baseline trains its samples (``nas.baselines.train_briefly``), and keeps the one
with the best accuracy on the α split.  The test split and the benchmark table are never read.

Candidates, in this order, duplicates dropped, until ``verify_candidates`` are found:

1. the magnitude cell of the final weights;
2. the cells of other selections passed in (``verify_with``: e.g. PT's ``selection.json``);
3. the cells α gave at the end of earlier epochs (the search's history), latest first, at most
   ``verify_history`` of them;
4. second choices on the least certain edges: on edge e the strongest allowed op is taken out
   and the space's own rule picks again; edges in order of increasing margin between their two
   strongest allowed ops, then pairs of the least certain edges.

Every candidate is trained with the same weight seed and the same batch order, so that the
comparison differs only in the architecture.  Progress is kept after each candidate in
``<out>/verify-checkpoint.json``; ``resume`` continues from it.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import torch

from nas import config as config_mod
from nas.progress import log_line, progress_bar
from nas.rundir import read_search_result
from nas.runs.files import read_json, write_json
from nas.spaces import SearchSpace, get_space
from nas.utils import NasError

VERIFY_CHECKPOINT = "verify-checkpoint.json"


def _allowed(space: SearchSpace, weights: torch.Tensor) -> torch.Tensor:
    """The weights with the ops a selection never keeps (the space's ``pt_exclude``) at -inf."""
    w = weights.clone().float()
    for e, ops in enumerate(space.edge_ops):
        for k, op in enumerate(ops):
            if op in space.pt_exclude:
                w[e, k] = float("-inf")
    return w


def _without_top(space: SearchSpace, weights: torch.Tensor, edges: tuple[int, ...]) -> Any:
    """The space's magnitude rule on ``weights`` with each of ``edges``'s strongest allowed op removed."""
    w = weights.clone()
    allowed = _allowed(space, weights)
    for e in edges:
        w[e, int(allowed[e].argmax())] = -1.0
    return space.select_magnitude(w)


def edge_margins(space: SearchSpace, weights: torch.Tensor) -> list[tuple[float, int]]:
    """(margin between the two strongest allowed ops, edge) for every edge with two of them,
    least certain first (ties: lower edge index)."""
    allowed = _allowed(space, weights)
    out = []
    for e in range(allowed.shape[0]):
        top = torch.topk(allowed[e], 2).values
        if torch.isfinite(top).all():
            out.append((float(top[0] - top[1]), e))
    return sorted(out)


def propose(space: SearchSpace, weights: torch.Tensor, k: int, others: list[str] = (),
            history: list[dict[str, Any]] = (), history_count: int = 2) -> list[dict[str, str]]:
    """Up to ``k`` distinct candidate cells, each ``{"genotype", "source"}``, in the order of the
    module's docstring."""
    found: dict[str, str] = {}

    def add(geno: Any, source: str) -> None:
        text = geno if isinstance(geno, str) else space.format_genotype(geno)
        text = space.format_genotype(space.parse_genotype(text))  # one spelling per cell
        if len(found) < k and text not in found:
            found[text] = source

    add(space.select_magnitude(weights), "magnitude")
    for i, g in enumerate(others):
        add(g, f"given-{i + 1}")
    taken = 0
    for h in reversed(list(history)[:-1]):  # the final epoch's cell is the magnitude cell
        if taken >= history_count or len(found) >= k:
            break
        before = len(found)
        add(h["genotype"], f"epoch-{h['epoch']}")
        taken += len(found) > before
    margins = [e for _, e in edge_margins(space, weights)]
    for e in margins:
        add(_without_top(space, weights, (e,)), f"second-choice-{space.edge_names[e]}")
    for pair in itertools.combinations(margins, 2):
        if len(found) >= k:
            break
        add(_without_top(space, weights, pair), "second-choice-" + "+".join(space.edge_names[e] for e in pair))
    return [{"genotype": g, "source": s} for g, s in found.items()]


def _search_of(res: dict[str, Any], cfg: config_mod.SelectConfig) -> Any:
    """The ``nas.search.Search`` of the finished run (its data, network sizes and w optimiser)."""
    from nas.search import Search

    saved = dict(res["config"])
    saved.update(device=cfg.device, progress=False, out=str(cfg.out or cfg.run))
    if cfg.data:
        saved["data"] = cfg.data
    return Search(config_mod.build_config("search", overrides=saved))


def verify_select(cfg: config_mod.SelectConfig, resume: bool = False) -> dict[str, Any]:
    """The verified selection of the search in ``cfg.run`` (see the module's docstring)."""
    from nas.baselines import train_briefly

    t0 = time.perf_counter()
    res = read_search_result(cfg.run)
    if res.get("weights") is None or res.get("selection") != "magnitude":
        raise NasError(f"{cfg.run}: searched with {res.get('selection')!r}, which trains no α; verify needs a "
                       f"supernet's weights to propose cells from")
    space = get_space(res["space"])
    others = []
    for path in cfg.verify_with:
        p = Path(path)
        p = p / "selection.json" if p.is_dir() else p
        if not p.is_file():
            raise NasError(f"verify_with: {p}: not found (expected a selection.json)")
        sel = read_json(p)
        if sel.get("space") != space.name or not isinstance(sel.get("genotype"), str):
            raise NasError(f"verify_with: {p}: not a selection of space {space.name!r}")
        others.append(sel["genotype"])
    weights = torch.tensor(res["weights"], dtype=torch.float32)
    candidates = propose(space, weights, cfg.verify_candidates, others, res.get("history", []), cfg.verify_history)
    search = _search_of(res, cfg)
    bundle, w_stream, a_stream = search.streams()
    eval_stream = bundle.stream(a_stream.indices, search.cfg.eval_batch_size, augment=False)
    ck = Path(cfg.out) / VERIFY_CHECKPOINT if cfg.out else None
    done: list[dict[str, Any]] = []
    key = {"run_digest": _digest(cfg.run), "candidates": candidates, "epochs": cfg.verify_epochs, "seed": cfg.seed}
    if ck is not None and resume and ck.is_file():
        old = read_json(ck)
        if {k: old.get(k) for k in key} == key:
            done = list(old["trained"])
            t0 -= float(old.get("seconds", 0.0))
    bar = progress_bar(cfg.progress, total=len(candidates) * cfg.verify_epochs * len(w_stream),
                       initial=len(done) * cfg.verify_epochs * len(w_stream), desc="verify")
    try:
        for i in range(len(done), len(candidates)):
            c = candidates[i]
            rec = train_briefly(search, (bundle, w_stream, eval_stream), space.parse_genotype(c["genotype"]),
                                cfg.verify_epochs, init_seed=cfg.seed, batches=("verify-batches",), bar=bar)
            done.append({"candidate": i + 1, "source": c["source"], **rec})
            log_line(bar, f"verify {i + 1}/{len(candidates)} ({c['source']}): val acc {rec['val_acc']:.4f}  "
                          f"{rec['genotype']}")
            if ck is not None:
                write_json(ck, {**key, "trained": done, "seconds": time.perf_counter() - t0})
    finally:
        if bar is not None:
            bar.close()
    best = max(range(len(done)), key=lambda i: (done[i]["val_acc"], -i))  # ties: the earlier candidate
    return {"space": space.name, "selection": "verify", "genotype": done[best]["genotype"],
            "source": done[best]["source"], "magnitude_genotype": candidates[0]["genotype"],
            "search_method": res.get("method"), "run": str(cfg.run), "epochs": cfg.verify_epochs,
            "candidates": done, "seconds": time.perf_counter() - t0}


def _digest(run: str | Path) -> str:
    from nas.rundir import SEARCH_RESULT
    from nas.utils import sha256_file

    return sha256_file(Path(run) / SEARCH_RESULT)

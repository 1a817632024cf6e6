"""What a search records: each epoch's history record, and at the end the selected architecture and
``result.json``.  ``Search.records`` is one of these."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from nas.data import BatchStream
from nas.rundir import SEARCH_RESULT, search_result
from nas.runs.files import write_json
from nas.utils import NasError

RESULT = SEARCH_RESULT
SearchState = Any


def _edge_stats(weights: torch.Tensor, edge_ops: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    ent = -(weights * weights.clamp_min(1e-12).log()).sum(-1)
    stats: dict[str, Any] = {
        "edge_entropy": ent.tolist(),
        "edge_max_weight": weights.max(-1).values.tolist(),
    }
    skips = [float(weights[e, ops.index("skip_connect")]) for e, ops in enumerate(edge_ops) if "skip_connect" in ops]
    if skips:
        stats["skip_weight_mean"] = sum(skips) / len(skips)
    return stats


class SearchRecord:
    """The history records and the result of one ``Search``."""

    def __init__(self, search: Any):
        self.search = search

    def epoch(self, st: SearchState, epoch: int, stage: int, train_alpha: bool, sums: list[float], counts: list[int],
                lr: float, t0: float) -> dict[str, Any]:
        """An epoch's history record from its sums (train loss, train correct, val loss, val
        correct); a non-finite loss ends the search with one line."""
        s = self.search
        method, epochs = s.method, s.cfg.epochs
        weights = s.expected(st)
        record = {
            "epoch": epoch + 1,
            "train_loss": sums[0] / counts[0],
            "train_acc": sums[1] / counts[0],
            "val_loss": sums[2] / counts[1],
            "val_acc": sums[3] / counts[1],
            "w_lr": lr,
            "alpha_trained": train_alpha,
            "stage": stage + 1,
            "alpha": st.arch.alpha.detach().cpu().tolist(),
            "weights": weights.tolist(),
            "genotype": s.space.format_genotype(s.space.select_magnitude(weights)),
            **_edge_stats(weights, s.space.edge_ops),
            **method.mixing.describe(epoch, epochs),
            "perturb_epsilon": method.perturbation.epsilon(epoch, epochs),
            "seconds": time.perf_counter() - t0,
        }
        if st.arch.beta is not None:
            record["edge_scale"] = st.arch.edge_scale().detach().cpu().tolist()
        for v in (record["train_loss"], record["val_loss"]):
            if not math.isfinite(v):
                raise NasError(f"search diverged at epoch {epoch + 1}: loss is {v} (lower w_lr or a_lr)")
        return record

    def result(self, st: SearchState, a_stream: BatchStream) -> dict[str, Any]:
        """Select the final architecture (the method's selection) and write ``result.json``."""
        s = self.search
        geno, extra = s.method.select(s, st, a_stream)
        if st.early_stop is not None:
            extra["early_stop"] = st.early_stop
        eigs = [(h["epoch"], h["hessian_eig"]) for h in st.history if "hessian_eig" in h]
        if eigs:
            extra["hessian"] = {"epochs": [e for e, _ in eigs], "top_eigenvalue": [v for _, v in eigs],
                                "spectra": [h.get("hessian_top") for h in st.history if "hessian_eig" in h]}
        if st.arch.beta is not None:
            extra["edge_scale"] = st.arch.edge_scale().detach().cpu().tolist()
        assert s.bundle is not None
        result = search_result(s, geno, st.arch.alpha.detach().cpu().tolist(), s.expected(st).tolist(),
                               sum(h.get("seconds", 0.0) for h in st.history), st.history,
                               mask=st.arch.mask.cpu().tolist(), **extra)
        if s.shards.main:
            write_json(s.out / RESULT, result)
        return s.shards.broadcast(result)  # every rank returns rank 0's result

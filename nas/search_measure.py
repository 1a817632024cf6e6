"""What a search measures on its supernet: accuracy and loss (``measure``, ``evaluate``; PT, the
landscape and the records use them) and the sharpness, the top eigenvalue(s) of the Hessian of the
validation loss in α (``hessian``).  ``Search.measurement`` is one of these."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas import hessian as hessian_mod
from nas.data import BatchStream
from nas.mix import Mix
from nas.utils import NasError, set_training

SearchState = Any


class SearchMeasure:
    """Measurements of one ``Search``'s supernet."""

    def __init__(self, search: Any):
        self.search = search
        self._hessian_batches: list | None = None  # the fixed, seeded α-split batches of the Hessian

    def hessian(self, st: SearchState, a_stream: BatchStream) -> dict[str, Any]:
        """Top eigenvalue(s) of ∇²_α L_val on fixed α-split batches."""
        s = self.search
        cfg = s.cfg
        if self._hessian_batches is None:
            self._hessian_batches = hessian_mod.fixed_batches(a_stream, cfg.hessian_batches, cfg.seed)
        eig = hessian_mod.sharpness(st.model, self._hessian_batches, lambda a: s.expected_mix(st, a), st.arch.alpha,
                        cfg.hessian_method, cfg.hessian_topk, seed=cfg.seed, tol=cfg.hessian_tol)
        out = {"hessian_eig": eig.value, "hessian_seconds": eig.seconds, "hessian_hvps": eig.iterations}
        if eig.top is not None:
            out["hessian_top"] = eig.top
        return out

    def evaluate(self, st: SearchState, stream: BatchStream, mix: Mix | None = None, batches: int = 0,
                 bn: str = "running") -> float:
        """Supernet accuracy with ``mix`` (default: ``expected_mix``) on (the first ``batches`` of)
        ``stream``, in order and without augmentation; the model is left in training mode."""
        return self.measure(st, stream, mix, batches, bn)[1]

    @torch.no_grad()
    def measure(self, st: SearchState, stream: BatchStream, mix: Mix | None = None,
                batches: int = 0, bn: str = "running") -> tuple[float, float]:
        """(mean cross-entropy loss, accuracy) of the supernet as ``evaluate`` takes it.  ``bn``:
        ``running`` normalises with the batch-norm running statistics (evaluation mode); ``batch``
        with each batch's own statistics, leaving the running ones untouched (PT's measurement).
        With several ranks, each measures every world-th batch and the sums are totalled: the same
        numbers on every rank (with ``bn="batch"``, the numbers of one process)."""
        s = self.search
        if bn not in ("running", "batch"):
            raise NasError(f"measure: bn must be 'running' or 'batch', not {bn!r}")
        mix = s.expected_mix(st) if mix is None else mix
        # training mode without tracking with bn="batch": batch statistics, running ones not updated
        modules = set_training(st.model, bn == "batch")
        norms = [m for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        tracked = [m.track_running_stats for m in norms]
        if bn == "batch":
            for m in norms:
                m.track_running_stats = False
        loss, correct, n = 0.0, 0.0, 0
        sh = s.shards
        try:
            for b, (x, y) in enumerate(stream.epoch(None, shuffle=False)):
                if batches and b >= batches:
                    break
                if b % sh.world != sh.rank:  # several ranks: each measures its share of the batches
                    continue
                logits = st.forward(x, mix)
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += float((logits.argmax(1) == y).sum())
                n += len(y)
        finally:
            for m, t in zip(norms, tracked):
                m.track_running_stats = t
            set_training(st.model, True, modules)
        if sh.world > 1:
            totals = torch.tensor([loss, correct, float(n)], dtype=torch.float64, device=s.device)
            sh.sum_([totals])
            loss, correct, n = totals[0].item(), totals[1].item(), int(totals[2].item())
        return loss / max(n, 1), correct / max(n, 1)

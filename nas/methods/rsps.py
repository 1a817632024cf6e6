"""RSPS (Li & Talwalkar 2019): random sampling with parameter sharing.  The supernet trains on one
uniformly sampled op per edge, α is never trained, and the final architecture is the best of
``rsps_candidates`` uniformly sampled cells by supernet accuracy on the α split."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from nas.methods.base import Method, MethodSpec
from nas.methods.mixing import UniformPath
from nas.mix import Mix
from nas.rng import rng_stream
from nas.settings import Settings
from nas.utils import generator_for

TRAINS_ALPHA = False  # its architecture is chosen by its own selection, not read from α


class RSPSSettings(Settings):
    """RSPS: how many sampled architectures are ranked, on how many batches."""

    rsps_candidates: int = Field(100, ge=1, le=20_000,
                                 description="RSPS: sampled architectures ranked by supernet validation accuracy")
    rsps_eval_batches: int = Field(1, ge=1, le=10**6, description="α-split batches per candidate")


@torch.no_grad()
def rsps_select(engine: Any, st: Any, a_stream: Any) -> tuple[Any, dict[str, Any]]:
    """Sample architectures uniformly and keep the one whose supernet accuracy on
    ``rsps_eval_batches`` batches of the α split is highest (ties: first sampled)."""
    cfg, space = engine.cfg, engine.space
    val = engine.bundle.stream(a_stream.indices, cfg.batch_size, augment=False)
    gen = generator_for(cfg.seed, rng_stream("rsps-candidates"))
    st.model.eval()
    scored = []
    for c in range(cfg.rsps_candidates):
        geno = space.random_genotype(gen)
        w = space.genotype_weights(geno).to(engine.device)
        mix = Mix(w, mask=w > 0)  # only the chosen op of each used edge is computed
        correct, n = 0.0, 0
        batches = val.epoch(generator_for(cfg.seed, rng_stream("rsps-batches"), c, device=engine.device))
        for b, (x, y) in enumerate(batches):
            if b >= cfg.rsps_eval_batches:
                break
            correct += float((st.forward(x, mix).argmax(1) == y).sum())
            n += len(y)
        scored.append({"genotype": space.format_genotype(geno), "val_acc": correct / max(n, 1)})
    st.model.train()
    ranked = sorted(range(len(scored)), key=lambda i: (-scored[i]["val_acc"], i))
    best = scored[ranked[0]]
    return space.parse_genotype(best["genotype"]), {"rsps_candidates": [scored[i] for i in ranked]}


def build(cfg, seams: dict) -> Method:
    return Method(name="rsps", mixing=UniformPath(), train_alpha=TRAINS_ALPHA, selection="rsps", select=rsps_select,
                  **seams)


SPEC = MethodSpec(
    name="rsps",
    build=build,
    trains_alpha=TRAINS_ALPHA,
    settings=RSPSSettings,
)

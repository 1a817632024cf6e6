"""The supernet's architecture state and the masks that PT selection applies to it.

``Architecture`` holds α ``[edges, ops]``, PC-DARTS's edge-normalisation β ``[edges]``, the mask of
ops still in the space (DrNAS's progressive pruning), and PT's decisions: the op kept on each
decided edge (one-hot from then on) and the edges removed by the topology step.  The functions
below build the ``Mix`` of the supernet with one op or one edge taken out, which is how PT
measures an op's strength.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas.mix import Mix


class Architecture(nn.Module):
    """α, optional β, the op mask, and PT's decided / removed edges."""

    def __init__(self, space: Any, edge_norm: bool, gen: torch.Generator):
        super().__init__()
        n_edges = space.alpha_shape[0]
        self.alpha = nn.Parameter(1e-3 * torch.randn(space.alpha_shape, generator=gen))
        self.beta = nn.Parameter(1e-3 * torch.randn(n_edges, generator=gen)) if edge_norm else None
        self.register_buffer("mask", torch.ones(space.alpha_shape, dtype=torch.bool))
        # PT selection: op decided per edge (-1 = not decided); decided edges are one-hot;
        # removed edges (the DARTS-space topology step) contribute nothing
        self.register_buffer("decided", torch.full((n_edges,), -1, dtype=torch.long))
        self.register_buffer("removed", torch.zeros(n_edges, dtype=torch.bool))
        self.groups = [list(g) for g in space.edge_groups]

    def active_mask(self) -> torch.Tensor | None:
        return None if bool(self.mask.all()) else self.mask

    @torch.no_grad()
    def prune(self, keep: int) -> None:
        """Keep only the ``keep`` ops of largest α on every edge (among those still in the space)."""
        alpha = self.alpha.masked_fill(~self.mask, float("-inf"))
        top = alpha.topk(keep, dim=-1).indices
        self.mask.copy_(torch.zeros_like(self.mask).scatter_(-1, top, True))

    def override(self, mix: Mix) -> Mix:
        """Replace the weights of decided edges by one-hot rows (and their hard index), and zero
        removed edges."""
        if bool((self.decided < 0).all()) and not bool(self.removed.any()):
            return mix
        rows = self.decided >= 0
        one_hot = torch.zeros_like(mix.weights).scatter_(-1, self.decided.clamp(min=0)[:, None], 1.0)
        mix.weights = torch.where(rows[:, None], one_hot, mix.weights)
        if mix.index is not None:
            mix.index = torch.where(rows, self.decided, mix.index)
        if bool(self.removed.any()):
            mix.weights = mix.weights * (~self.removed)[:, None]
            keep = torch.ones_like(self.mask) if mix.mask is None else mix.mask
            mix.mask = keep & ~self.removed[:, None]
        return mix

    def edge_scale(self) -> torch.Tensor | None:
        """Softmax of β over the incoming edges of each node."""
        if self.beta is None:
            return None
        parts = torch.empty_like(self.beta)
        for g in self.groups:
            parts[g] = torch.softmax(self.beta[g], dim=0)
        return parts

    def candidate_ops(self, edge: int, exclude: tuple[str, ...] = (), edge_ops: Any = None) -> list[int]:
        """The ops of ``edge`` still in the space, without the names in ``exclude``."""
        ks = [k for k in range(self.mask.shape[1]) if bool(self.mask[edge, k])]
        if edge_ops is not None and exclude:
            ks = [k for k in ks if edge_ops[edge][k] not in exclude]
        return ks


def without_op(mix: Mix, edge: int, op: int, renormalise: bool = False) -> Mix:
    """``mix`` with op ``op`` of edge ``edge`` removed: its weight 0, the edge's other weights
    unchanged (as the PT authors' code masks it), or rescaled to sum 1 with ``renormalise``."""
    w = mix.weights.clone()
    w[edge, op] = 0.0
    if renormalise:
        s = w[edge].sum()
        w[edge] = w[edge] / s if s > 0 else w[edge]
    return Mix(w, edge_scale=mix.edge_scale, mask=mix.mask)


def without_edge(mix: Mix, edge: int) -> Mix:
    """``mix`` with a whole edge removed (all its weights 0, nothing computed)."""
    w = mix.weights.clone()
    w[edge] = 0.0
    mask = torch.ones_like(w, dtype=torch.bool) if mix.mask is None else mix.mask.clone()
    mask[edge] = False
    return Mix(w, edge_scale=mix.edge_scale, mask=mask)

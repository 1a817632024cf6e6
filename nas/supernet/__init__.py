"""The supernet: one macro network of mixed cells over any space, fed mixing weights from outside.

The supernet holds only w.  The architecture parameters live in ``nas.arch.Architecture``; a
method turns them into a ``Mix`` and every edge computes ``sum_k weights[e, k] * op_k(x)``, which
keeps the method seams (softmax, Gumbel, Dirichlet, perturbations) outside the network.

The space supplies the macro skeleton, the cell DAG and the search ops; every cell is a
``MixedCell`` (``nas.supernet.cell``), or its fused fast path ``FusedCell``
(``nas.supernet.fused``) where the space's cells allow it (NAS-Bench-201) and ``reference`` is off.
Both widen their partial channels in place (DrNAS's progressive stages).
"""

from __future__ import annotations

import torch
from torch import nn

from nas.mix import Mix, as_mix
from nas.spaces.base import CellSlot, SearchSpace
from nas.supernet.cell import MixedCell, MixedEdge, channel_shuffle, grow_like
from nas.supernet.fused import FusedCell, fusable, widen_tensor

__all__ = ["Supernet", "MixedCell", "MixedEdge", "FusedCell", "channel_shuffle", "grow_like", "widen_tensor"]


class Supernet(nn.Module):
    """The space's macro network with mixed cells sharing one ``Mix``."""

    def __init__(self, space: SearchSpace, channels: int = 16, cells: int = 5, num_classes: int = 10,
                 in_channels: int = 3, partial_channels: int = 1, reference: bool = False):
        super().__init__()
        if channels % partial_channels:
            raise ValueError(f"channels {channels} not divisible by partial_channels {partial_channels}")
        fused = not reference and fusable(space)

        def make_cell(slot: CellSlot) -> nn.Module:
            if fused:
                return FusedCell(slot.channels, space.edge_ops[0], space.cell_edges, partial_channels)
            return MixedCell(space, slot, partial_channels)

        self.net = space.build_macro(make_cell, channels, cells, num_classes, in_channels)
        self.num_edges, self.num_ops = space.alpha_shape

    def forward(self, x: torch.Tensor, mix: Mix | torch.Tensor) -> torch.Tensor:
        return self.net(x, as_mix(mix))

    def search_cells(self) -> list[nn.Module]:
        """The mixed cells (each has ``widen``)."""
        return [m for m in self.modules() if isinstance(m, (FusedCell, MixedCell))]

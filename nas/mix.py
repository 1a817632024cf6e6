"""The contract between a method and the supernet: what one forward pass needs from α.

A method turns the architecture parameters into a ``Mix``; every mixed edge of the supernet
computes ``sum_k weights[e, k] * op_k(x)`` from it.  Rows are edges in the space's order (for
spaces with normal and reduction cells, every normal edge first).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Mix:
    """Mixing weights and what restricts them.

    - ``weights``: ``[edges, ops]`` mixing weights;
    - ``index``: ``[edges]`` op chosen per edge for hard paths (only that op is computed);
    - ``edge_scale``: ``[edges]`` multipliers of whole edges (PC-DARTS edge normalisation);
    - ``mask``: ``[edges, ops]`` ops still in the space (pruned ops have weight 0 and are skipped).
    """

    weights: torch.Tensor
    index: torch.Tensor | None = None
    edge_scale: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def detach(self) -> Mix:
        return replace(self, weights=self.weights.detach(),
                       edge_scale=None if self.edge_scale is None else self.edge_scale.detach())

    def with_weights(self, weights: torch.Tensor) -> Mix:
        return replace(self, weights=weights)

    def rows(self, start: int, count: int) -> Mix:
        """The rows ``start .. start + count`` (one cell type's edges)."""
        if start == 0 and count == self.weights.shape[0]:
            return self

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:start + count]

        return Mix(self.weights[start:start + count], cut(self.index), cut(self.edge_scale), cut(self.mask))


def as_mix(m: Mix | torch.Tensor) -> Mix:
    """A ``Mix`` from a ``Mix`` or a bare weight matrix."""
    return m if isinstance(m, Mix) else Mix(m)

"""The supernet: the macro network with mixed cells, fed mixing weights from outside.

The supernet holds only w.  The architecture parameters α live in the search loop's
``Architecture`` and a method turns them into mixing weights of shape ``[edges, ops]``;
the supernet just computes ``sum_k weights[e, k] * op_k(x)`` on every edge.  That keeps the
method seam (softmax, Gumbel, Dirichlet, perturbations) outside the network.

``NB201SearchCell`` computes the same function as a plain per-edge weighted sum
(``ReferenceSearchCell``), but shares work between the edges that leave one node:
- ``none`` is never computed (its output is zero, so neither value nor gradient changes);
- ``skip_connect`` and ``avg_pool_3x3`` of a node are computed once for all its out-edges;
- the ReLU in front of every convolution is applied once per node, and the convolutions of all
  out-edges of a node run as one wider convolution; their batch norms (per channel, batch
  statistics, no affine) run as one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas.spaces import nb201
from nas.spaces.ops import make_op


def _bn(x: torch.Tensor) -> torch.Tensor:
    """Search-cell BN: batch statistics, no affine, no running statistics."""
    return F.batch_norm(x, None, None, training=True, momentum=0.0, eps=1e-5)


class NB201SearchCell(nn.Module):
    """Mixed NB201 cell with work shared across the out-edges of each node."""

    def __init__(self, channels: int, ops: tuple[str, ...] = nb201.OPS):
        super().__init__()
        self.ops = ops
        self.channels = channels
        self.convs = nn.ModuleDict()
        n = nb201.NUM_NODES
        for op in ops:
            if op.startswith("nor_conv_"):
                k = int(op[-1])
                self.convs[op] = nn.ModuleList(
                    nn.Conv2d(channels, channels * (n - 1 - j), k, padding=k // 2, bias=False)
                    for j in range(n - 1))
        self.op_index = {op: i for i, op in enumerate(ops)}

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        n = nb201.NUM_NODES
        nodes = [x]
        acc: list[torch.Tensor | None] = [None] * n
        wt = weights.unbind(0)
        for j in range(n - 1):
            h = nodes[j]
            targets = range(j + 1, n)
            parts: dict[str, tuple[torch.Tensor, ...] | torch.Tensor] = {}
            relu = None
            for op, convs in self.convs.items():
                if relu is None:
                    relu = F.relu(h)
                parts[op] = _bn(convs[j](relu)).chunk(len(targets), dim=1)
            if "avg_pool_3x3" in self.op_index:
                parts["avg_pool_3x3"] = F.avg_pool2d(h, 3, 1, 1, count_include_pad=False)
            for t, i in enumerate(targets):
                w = wt[nb201.EDGE_INDEX[(i, j)]]
                y = None
                for op, k in self.op_index.items():
                    if op == "none":
                        continue
                    if op == "skip_connect":
                        term = h * w[k]
                    elif op == "avg_pool_3x3":
                        term = parts[op] * w[k]
                    else:
                        term = parts[op][t] * w[k]
                    y = term if y is None else y + term
                if y is None:
                    y = h * 0.0
                acc[i] = y if acc[i] is None else acc[i] + y
            nodes.append(acc[j + 1])
        return nodes[-1]


class ReferenceSearchCell(nn.Module):
    """The straightforward mixed cell (one module per op per edge), kept as the fidelity oracle."""

    def __init__(self, channels: int, ops: tuple[str, ...] = nb201.OPS):
        super().__init__()
        self.ops = ops
        self.edges = nn.ModuleList(
            nn.ModuleList(make_op(op, channels, affine=False, track_running_stats=False) for op in ops)
            for _ in nb201.EDGES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, nb201.NUM_NODES):
            total = 0
            for j in range(i):
                e = nb201.EDGE_INDEX[(i, j)]
                total = total + sum(w * op(nodes[j]) for w, op in zip(weights[e], self.edges[e]))
            nodes.append(total)
        return nodes[-1]

    def load_from_fused(self, fused: NB201SearchCell) -> None:
        """Copy a fused cell's conv weights into the per-edge modules (for equivalence tests)."""
        c = fused.channels
        for op, convs in fused.convs.items():
            k = fused.op_index[op]
            for j, conv in enumerate(convs):
                for t, i in enumerate(range(j + 1, nb201.NUM_NODES)):
                    e = nb201.EDGE_INDEX[(i, j)]
                    self.edges[e][k][1].weight.data.copy_(conv.weight.data[t * c:(t + 1) * c])


class Supernet(nn.Module):
    """An NB201 macro network whose cells are mixed cells sharing one weights tensor."""

    def __init__(self, channels: int = 16, cells: int = 5, num_classes: int = 10, in_channels: int = 3,
                 reference: bool = False):
        super().__init__()
        cell = ReferenceSearchCell if reference else NB201SearchCell
        self.net = nb201.MacroNetwork(lambda c: cell(c), channels, cells, num_classes, in_channels)
        self.num_edges = len(nb201.EDGES)
        self.num_ops = len(nb201.OPS)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.net(x, weights)

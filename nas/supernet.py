"""The supernet: the macro network with mixed cells, fed mixing weights from outside.

The supernet holds only w.  The architecture parameters live in the search loop's
``Architecture``; a method turns them into a ``Mix`` (mixing weights ``[edges, ops]`` and, for
some methods, a hard path or edge scales) and every edge computes ``sum_k weights[e, k] * op_k(x)``.
That keeps the method seams (softmax, Gumbel, Dirichlet, perturbations) outside the network.

``NB201SearchCell`` computes the same function as the plain per-edge weighted sum
(``ReferenceSearchCell``) but shares work among the edges that leave one node:
- ``none`` is never computed (its output is zero, so neither value nor gradient changes);
- ``skip_connect`` and ``avg_pool_3x3`` of a node are computed once for all its out-edges;
- the ReLU in front of every convolution runs once per node, and the convolutions of all
  out-edges of a node run as one wider convolution, with one batch norm (per channel, batch
  statistics, no affine, so fusing does not change it).
With a hard path (GDAS, RSPS) only the sampled op of each edge is computed.  With partial
channels (PC-DARTS) only the first C/K channels of a node go through the ops; the rest bypass
them, and the result is channel-shuffled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from nas.spaces import nb201
from nas.spaces.ops import make_op


@dataclass
class Mix:
    """What a supernet forward pass needs from the architecture.

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


def as_mix(m: Mix | torch.Tensor) -> Mix:
    return m if isinstance(m, Mix) else Mix(m)


def _bn(x: torch.Tensor) -> torch.Tensor:
    """Search-cell BN: batch statistics, no affine, no running statistics."""
    return F.batch_norm(x, None, None, training=True, momentum=0.0, eps=1e-5)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class NB201SearchCell(nn.Module):
    """Mixed NB201 cell with work shared across the out-edges of each node."""

    def __init__(self, channels: int, ops: tuple[str, ...] = nb201.OPS, partial_channels: int = 1):
        super().__init__()
        if channels % partial_channels:
            raise ValueError(f"channels {channels} not divisible by partial_channels {partial_channels}")
        self.ops = ops
        self.channels = channels
        self.k = partial_channels
        cp = channels // partial_channels
        n = nb201.NUM_NODES
        self.convs = nn.ModuleDict()
        for op in ops:
            if op.startswith("nor_conv_"):
                ks = int(op[-1])
                self.convs[op] = nn.ModuleList(
                    nn.Conv2d(cp, cp * (n - 1 - j), ks, padding=ks // 2, bias=False) for j in range(n - 1))
        self.op_index = {op: i for i, op in enumerate(ops)}

    @property
    def part(self) -> int:
        return self.channels // self.k

    def forward(self, x: torch.Tensor, mix: Mix | torch.Tensor) -> torch.Tensor:
        mix = as_mix(mix)
        n = nb201.NUM_NODES
        cp = self.part
        w_rows = mix.weights.unbind(0)
        index = mix.index.tolist() if mix.index is not None else None
        mask = mix.mask.tolist() if mix.mask is not None else None
        scale = mix.edge_scale.unbind(0) if mix.edge_scale is not None else None
        nodes = [x]
        acc: list[torch.Tensor | None] = [None] * n
        bypass: list[torch.Tensor | None] = [None] * n
        for j in range(n - 1):
            h = nodes[j]
            h_op = h[:, :cp] if self.k > 1 else h
            targets = list(range(j + 1, n))
            edges = [nb201.EDGE_INDEX[(i, j)] for i in targets]
            outs = self._edge_outputs(h_op, j, edges, w_rows, index, mask)
            for i, e, y in zip(targets, edges, outs):
                s = scale[e] if scale is not None else None
                y = y if s is None else y * s
                acc[i] = y if acc[i] is None else acc[i] + y
                if self.k > 1:
                    b = h[:, cp:] if s is None else h[:, cp:] * s
                    bypass[i] = b if bypass[i] is None else bypass[i] + b
            nxt = acc[j + 1]
            if self.k > 1:
                nxt = channel_shuffle(torch.cat([nxt, bypass[j + 1]], dim=1), self.k)
            nodes.append(nxt)
        return nodes[-1]

    def _edge_outputs(self, h: torch.Tensor, j: int, edges: list[int], w_rows, index, mask) -> list[torch.Tensor]:
        """The mixed outputs of the out-edges ``edges`` of node ``j`` (input ``h``)."""
        n_t = len(edges)
        if index is not None:  # hard path: only the chosen op of each edge
            chosen = [self.ops[index[e]] for e in edges]
            parts: dict[str, dict[int, torch.Tensor]] = {}
            relu = None
            for op, convs in self.convs.items():
                sel = [t for t in range(n_t) if chosen[t] == op]
                if not sel:
                    continue
                if relu is None:
                    relu = F.relu(h)
                conv = convs[j]
                wt = conv.weight.view(n_t, -1, *conv.weight.shape[1:])[sel].flatten(0, 1)
                out = _bn(F.conv2d(relu, wt, padding=conv.padding)).chunk(len(sel), dim=1)
                parts[op] = dict(zip(sel, out))
            outs = []
            for t, e in enumerate(edges):
                w = w_rows[e]
                k = index[e]
                op = chosen[t]
                rest = w.sum() - w[k]  # zero in value; carries gradient to the other weights (as GDAS does)
                if op == "none":
                    y = torch.zeros_like(h) + rest
                elif op == "skip_connect":
                    y = h * w[k] + rest
                elif op == "avg_pool_3x3":
                    y = F.avg_pool2d(h, 3, 1, 1, count_include_pad=False) * w[k] + rest
                else:
                    y = parts[op][t] * w[k] + rest
                outs.append(y)
            return outs

        def active(op: str) -> bool:
            return mask is None or any(mask[e][self.op_index[op]] for e in edges)

        parts2: dict[str, tuple[torch.Tensor, ...] | torch.Tensor] = {}
        relu = None
        for op, convs in self.convs.items():
            if not active(op):
                continue
            if relu is None:
                relu = F.relu(h)
            parts2[op] = _bn(convs[j](relu)).chunk(n_t, dim=1)
        if "avg_pool_3x3" in self.op_index and active("avg_pool_3x3"):
            parts2["avg_pool_3x3"] = F.avg_pool2d(h, 3, 1, 1, count_include_pad=False)
        outs = []
        for t, e in enumerate(edges):
            w = w_rows[e]
            y = None
            for op, k in self.op_index.items():
                if op == "none" or (mask is not None and not mask[e][k]):
                    continue
                if op == "skip_connect":
                    term = h * w[k]
                elif op == "avg_pool_3x3":
                    term = parts2[op] * w[k]
                else:
                    term = parts2[op][t] * w[k]
                y = term if y is None else y + term
            outs.append(h * 0.0 if y is None else y)
        return outs

    @torch.no_grad()
    def widen(self, partial_channels: int, gen: torch.Generator | None = None) -> dict[int, tuple]:
        """Pass more channels through the ops (K -> smaller K), as DrNAS's progressive search does:
        each edge's conv grows by copying randomly chosen existing input and output channels
        (Net2Wider).  Returns ``{id(old weight): (new param, out_idx, in_idx, blocks)}`` so that the
        caller can widen optimiser state the same way."""
        old_part, self.k = self.part, partial_channels
        new_part = self.part
        if self.channels % partial_channels or new_part < old_part:
            raise ValueError(f"cannot widen partial channels from {old_part} to {new_part} of {self.channels}")
        changes = {}
        for convs in self.convs.values():
            for conv in convs:
                blocks = conv.out_channels // old_part
                out_idx = torch.randint(0, old_part, (new_part - old_part,), generator=gen)
                in_idx = torch.randint(0, old_part, (new_part - old_part,), generator=gen)
                old = conv.weight
                new = widen_tensor(old.data, blocks, out_idx, in_idx)
                conv.weight = nn.Parameter(new)
                conv.in_channels, conv.out_channels = new_part, new_part * blocks
                changes[id(old)] = (conv.weight, out_idx, in_idx, blocks)
        return changes


def widen_tensor(t: torch.Tensor, blocks: int, out_idx: torch.Tensor, in_idx: torch.Tensor) -> torch.Tensor:
    """Grow a fused conv weight ``[blocks*c, c, k, k]`` to ``[blocks*c', c', k, k]`` by copying
    channels ``out_idx`` (per block) and ``in_idx``."""
    c = t.shape[1]
    t = torch.cat([t, t[:, in_idx.to(t.device)]], dim=1)
    per = t.view(blocks, c, *t.shape[1:])
    per = torch.cat([per, per[:, out_idx.to(t.device)]], dim=1)
    return per.reshape(-1, *t.shape[1:]).contiguous()


class ReferenceSearchCell(nn.Module):
    """The straightforward mixed cell (one module per op per edge), kept as the fidelity oracle.
    Partial channels and edge scales follow the PC-DARTS reference formulation per edge."""

    def __init__(self, channels: int, ops: tuple[str, ...] = nb201.OPS, partial_channels: int = 1):
        super().__init__()
        self.ops = ops
        self.k = partial_channels
        cp = channels // partial_channels
        self.edges = nn.ModuleList(
            nn.ModuleList(make_op(op, cp, affine=False, track_running_stats=False) for op in ops)
            for _ in nb201.EDGES)

    def forward(self, x: torch.Tensor, mix: Mix | torch.Tensor) -> torch.Tensor:
        mix = as_mix(mix)
        weights = mix.weights
        cp = x.shape[1] // self.k
        nodes = [x]
        for i in range(1, nb201.NUM_NODES):
            total = 0
            for j in range(i):
                e = nb201.EDGE_INDEX[(i, j)]
                h = nodes[j]
                xin = h[:, :cp]
                y = sum(w * op(xin) for w, op in zip(weights[e], self.edges[e]))
                if self.k > 1:
                    y = channel_shuffle(torch.cat([y, h[:, cp:]], dim=1), self.k)
                if mix.edge_scale is not None:
                    y = mix.edge_scale[e] * y
                total = total + y
            nodes.append(total)
        return nodes[-1]

    def load_from_fused(self, fused: NB201SearchCell) -> None:
        """Copy a fused cell's conv weights into the per-edge modules (for equivalence tests)."""
        c = fused.part
        for op, convs in fused.convs.items():
            k = fused.op_index[op]
            for j, conv in enumerate(convs):
                for t, i in enumerate(range(j + 1, nb201.NUM_NODES)):
                    e = nb201.EDGE_INDEX[(i, j)]
                    self.edges[e][k][1].weight.data.copy_(conv.weight.data[t * c:(t + 1) * c])


class Supernet(nn.Module):
    """An NB201 macro network whose cells are mixed cells sharing one ``Mix``."""

    def __init__(self, channels: int = 16, cells: int = 5, num_classes: int = 10, in_channels: int = 3,
                 reference: bool = False, partial_channels: int = 1):
        super().__init__()
        cell = ReferenceSearchCell if reference else NB201SearchCell
        self.net = nb201.MacroNetwork(lambda c: cell(c, nb201.OPS, partial_channels), channels, cells,
                                      num_classes, in_channels)
        self.num_edges = len(nb201.EDGES)
        self.num_ops = len(nb201.OPS)

    def forward(self, x: torch.Tensor, mix: Mix | torch.Tensor) -> torch.Tensor:
        return self.net(x, as_mix(mix))

    def search_cells(self) -> list[NB201SearchCell]:
        return [m for m in self.modules() if isinstance(m, NB201SearchCell)]

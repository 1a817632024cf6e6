"""The fused fast path of a mixed cell: same function as ``MixedCell``, less work.

It applies to cells of one input node whose output is the last node, whose every node feeds every
later node, and whose ops are among ``FUSABLE_OPS`` (the NAS-Bench-201 cell).  It shares work
among the edges that leave one node:
- ``none`` is never computed (its output is zero, so neither value nor gradient changes);
- ``skip_connect`` and ``avg_pool_3x3`` of a node are computed once for all its out-edges;
- the ReLU in front of every convolution runs once per node, and the convolutions of all
  out-edges of a node run as one wider convolution, with one batch norm (per channel, batch
  statistics, no affine, so fusing does not change it).
With a hard path (GDAS, RSPS) only the sampled op of each edge is computed.  With partial
channels (PC-DARTS) only the first C/K channels of a node go through the ops; the rest bypass
them, and the result is channel-shuffled.  ``MixedCell`` is its test oracle.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas.mix import Mix, as_mix
from nas.supernet.cell import channel_shuffle

FUSABLE_OPS = frozenset({"none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"})


def _bn(x: torch.Tensor) -> torch.Tensor:
    """Search-cell BN: batch statistics, no affine, no running statistics."""
    return F.batch_norm(x, None, None, training=True, momentum=0.0, eps=1e-5)


def fusable(space) -> bool:
    """Whether the fused cell computes this space's cells."""
    edges = set(space.cell_edges)
    n = 1 + max(i for i, _ in edges)
    complete = edges == {(i, j) for i in range(1, n) for j in range(i)}
    return (space.cell_inputs == 1 and not space.cell_concat and len(space.cell_kinds) == 1 and complete
            and len(set(space.edge_ops)) == 1 and set(space.edge_ops[0]) <= FUSABLE_OPS)


class FusedCell(nn.Module):
    """A mixed cell with work shared across the out-edges of each node."""

    def __init__(self, channels: int, ops: tuple[str, ...], cell_edges: tuple[tuple[int, int], ...],
                 partial_channels: int = 1):
        super().__init__()
        if channels % partial_channels:
            raise ValueError(f"channels {channels} not divisible by partial_channels {partial_channels}")
        self.ops = ops
        self.channels = channels
        self.k = partial_channels
        cp = channels // partial_channels
        self.num_nodes = n = 1 + max(i for i, _ in cell_edges)
        self.edge_index = {e: k for k, e in enumerate(cell_edges)}
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
        n = self.num_nodes
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
            edges = [self.edge_index[(i, j)] for i in targets]
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
        if index is not None:  # hard path: only the chosen op of each edge
            return self._hard_outputs(h, j, edges, w_rows, index)
        return self._soft_outputs(h, j, edges, w_rows, mask)

    def _hard_outputs(self, h: torch.Tensor, j: int, edges: list[int], w_rows, index) -> list[torch.Tensor]:
        """Each edge computes only its chosen op; the other weights join with zero value (GDAS)."""
        n_t = len(edges)
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

    def _soft_outputs(self, h: torch.Tensor, j: int, edges: list[int], w_rows, mask) -> list[torch.Tensor]:
        """Every (unmasked) op of every edge, the convolutions of all edges as one wider one."""
        n_t = len(edges)

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
        (Net2Wider).  Returns ``{id(old weight): (new param, grow)}``, ``grow`` widening a tensor of
        the old weight's shape the same way (for the optimiser's state)."""
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
                changes[id(old)] = (conv.weight, _grower(blocks, out_idx, in_idx))
        return changes


def _grower(blocks: int, out_idx: torch.Tensor, in_idx: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: widen_tensor(t, blocks, out_idx, in_idx)


def widen_tensor(t: torch.Tensor, blocks: int, out_idx: torch.Tensor, in_idx: torch.Tensor) -> torch.Tensor:
    """Grow a fused conv weight ``[blocks*c, c, k, k]`` to ``[blocks*c', c', k, k]`` by copying
    channels ``out_idx`` (per block) and ``in_idx``."""
    c = t.shape[1]
    t = torch.cat([t, t[:, in_idx.to(t.device)]], dim=1)
    per = t.view(blocks, c, *t.shape[1:])
    per = torch.cat([per, per[:, out_idx.to(t.device)]], dim=1)
    return per.reshape(-1, *t.shape[1:]).contiguous()


@torch.no_grad()
def copy_to_reference(fused: FusedCell, reference: nn.Module) -> None:
    """Copy a fused cell's conv weights into the per-edge ops of a ``MixedCell`` of the same space
    (the equivalence tests' oracle)."""
    c = fused.part
    for op, convs in fused.convs.items():
        k = fused.op_index[op]
        for j, conv in enumerate(convs):
            for t, i in enumerate(range(j + 1, fused.num_nodes)):
                e = fused.edge_index[(i, j)]
                reference.edges[e].candidates[k][1].weight.copy_(conv.weight[t * c:(t + 1) * c])

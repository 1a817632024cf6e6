"""The mixed-cell template every space's supernet is built from.

A ``MixedEdge`` holds one search op per candidate and computes ``sum_k w[k] * op_k(x)`` (only the
chosen op on a hard path, only unmasked ops otherwise; ``none`` is never computed).  With partial
channels (PC-DARTS, K > 1) only the first C/K channels go through the ops; the others bypass them
(max-pooled on a stride-2 edge) and the result is channel-shuffled.  A ``MixedCell`` wires the
edges as the space's cell DAG describes: preprocessed inputs, every later node the (edge-scaled)
sum of its incoming edges, the output the last node or the concatenation of the intermediate ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.mix import as_mix


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MixedEdge(nn.Module):
    def __init__(self, make_op: Callable[[str, int, int], nn.Module], channels: int, stride: int,
                 ops: tuple[str, ...], partial_channels: int = 1):
        super().__init__()
        self.make_op = make_op
        self.channels = channels
        self.k = partial_channels
        self.stride = stride
        self.ops = ops
        self.candidates = nn.ModuleList(make_op(op, channels // partial_channels, stride) for op in ops)

    def _zeros(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0) if self.stride > 1 else x.mul(0.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor, index: int | None, active: list[bool] | None) -> torch.Tensor:
        cp = x.shape[1] // self.k
        xin = x[:, :cp] if self.k > 1 else x
        if index is not None:
            rest = w.sum() - w[index]  # zero in value; carries gradient to the other weights (as GDAS does)
            y = self.candidates[index](xin) * w[index] + rest
        else:
            y = None
            for k, (op, mod) in enumerate(zip(self.ops, self.candidates)):
                if op == "none" or (active is not None and not active[k]):
                    continue
                term = mod(xin) * w[k]
                y = term if y is None else y + term
            if y is None:
                y = self._zeros(xin)
        if self.k > 1:
            rest_ch = x[:, cp:]
            if self.stride > 1:
                rest_ch = F.max_pool2d(rest_ch, 2, 2)
            y = channel_shuffle(torch.cat([y, rest_ch], dim=1), self.k)
        return y

    @torch.no_grad()
    def widen(self, partial_channels: int, gen: torch.Generator | None = None) -> dict[int, tuple]:
        """Pass more channels through the ops (K -> smaller K): every op is rebuilt at the new width
        and keeps its old tensors, grown by copies of randomly chosen existing channels (Net2Wider).
        Returns ``{id(old param): (new param, grow)}`` (see ``grow_like``)."""
        old_part, new_part = self.channels // self.k, self.channels // partial_channels
        if self.channels % partial_channels or new_part < old_part:
            raise ValueError(f"cannot widen partial channels from {old_part} to {new_part} of {self.channels}")
        self.k = partial_channels
        changes: dict[int, tuple] = {}
        for k, (op, old) in enumerate(zip(self.ops, self.candidates)):
            new = self.make_op(op, new_part, self.stride)
            changes.update(grow_like(old, new, gen))
            self.candidates[k] = new
        return changes


def grow_like(old: nn.Module, new: nn.Module, gen: torch.Generator | None) -> dict[int, tuple]:
    """Load ``old``'s tensors into the wider ``new``: every dimension that grew from n to n' gets
    n' - n copies of randomly chosen existing entries (one choice per (n, n') pair, shared by all
    of the module's tensors).  Returns ``{id(old param): (new param, grow)}``, ``grow(t)`` widening
    a tensor of the old parameter's shape the same way (the optimiser's momentum)."""
    picks: dict[tuple[int, int], torch.Tensor] = {}

    def grow(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        for d, (a, b) in enumerate(zip(t.shape, shape)):
            if a != b:
                if (a, b) not in picks:
                    picks[(a, b)] = torch.randint(0, a, (b - a,), generator=gen)
                t = torch.cat([t, t.index_select(d, picks[(a, b)].to(t.device))], dim=d)
        return t.contiguous()

    target = new.state_dict()
    ref = next(iter(old.state_dict().values()), None)
    if ref is not None:
        new.to(ref.device)
    new.load_state_dict({name: grow(t, target[name].shape) if t.dim() else t for name, t in old.state_dict().items()})
    new_params = dict(new.named_parameters())
    return {id(p): (new_params[name], lambda t, s=new_params[name].shape: grow(t, s))
            for name, p in old.named_parameters()}


class MixedCell(nn.Module):
    """One cell of a supernet, from the space's description (``SearchSpace``) and its place in the
    macro network (``CellSlot``); it reads the α rows of its cell kind."""

    def __init__(self, space: Any, slot: Any, partial_channels: int = 1):
        super().__init__()
        n_edges = len(space.cell_edges)
        self.offset, self.n_edges = slot.kind * n_edges, n_edges
        self.n_inputs, self.concat = space.cell_inputs, space.cell_concat
        self.pre = nn.ModuleList(space.preprocess(slot))
        ops = space.edge_ops[self.offset:self.offset + n_edges]
        self.edges = nn.ModuleList(
            MixedEdge(space.make_search_op, slot.channels, space.stride(slot, j), ops[e], partial_channels)
            for e, (_, j) in enumerate(space.cell_edges))
        nodes = sorted({i for i, _ in space.cell_edges})
        self.node_edges = [[(e, j) for e, (to, j) in enumerate(space.cell_edges) if to == i] for i in nodes]

    def forward(self, *args: Any) -> torch.Tensor:
        *inputs, mix = args
        mix = as_mix(mix)
        w = mix.weights[self.offset:self.offset + self.n_edges]
        cut = slice(self.offset, self.offset + self.n_edges)
        index = mix.index[cut].tolist() if mix.index is not None else None
        active = mix.mask[cut].tolist() if mix.mask is not None else None
        scale = mix.edge_scale[cut] if mix.edge_scale is not None else None
        states = [p(x) for p, x in zip(self.pre, inputs)] if len(self.pre) else list(inputs)
        for edges in self.node_edges:
            total = None
            for e, j in edges:
                y = self.edges[e](states[j], w[e], None if index is None else index[e],
                                  None if active is None else active[e])
                if scale is not None:
                    y = y * scale[e]
                total = y if total is None else total + y
            states.append(total)
        return torch.cat(states[self.n_inputs:], dim=1) if self.concat else states[-1]

    def widen(self, partial_channels: int, gen: torch.Generator | None = None) -> dict[int, tuple]:
        changes: dict[int, tuple] = {}
        for edge in self.edges:
            changes.update(edge.widen(partial_channels, gen))
        return changes

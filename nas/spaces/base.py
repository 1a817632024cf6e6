"""The description every space gives of itself: its cells, ops, genotype codec and builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nas.utils import NasError


@dataclass(frozen=True)
class CellSlot:
    """Where the macro network puts a cell: which α block it reads (``kind``, an index into
    ``SearchSpace.cell_kinds``), the channels of its inputs, its own width, and whether it (or the
    cell before it) halves the resolution."""

    kind: int
    inputs: tuple[int, ...]
    channels: int
    reduction: bool = False
    reduction_prev: bool = False


@dataclass(frozen=True)
class SearchSpace:
    """Everything the supernet, the search loop and the stages need to know about a space.

    The cell is a DAG: nodes ``0 .. cell_inputs-1`` are its inputs, every later node sums its
    incoming edges ``cell_edges`` ((to, from), ordered node by node), and the cell's output is the
    last node or the concatenation of the intermediate nodes (``cell_concat``).  Spaces with
    several cell types (normal, reduction) stack their α blocks in ``cell_kinds`` order."""

    name: str
    edge_ops: tuple[tuple[str, ...], ...]  # candidate ops of every edge (one α row each)
    edge_names: tuple[str, ...]
    edge_groups: tuple[tuple[int, ...], ...]  # edges that enter the same node (PC-DARTS edge normalisation)
    parse_genotype: Callable[[str], Any]
    format_genotype: Callable[[Any], str]
    build_network: Callable[..., nn.Module]  # (genotype, channels, cells, num_classes, in_channels, **kw)
    select_magnitude: Callable[[torch.Tensor], Any]  # mixing weights [edges, ops] -> genotype
    random_genotype: Callable[[torch.Generator], Any]
    genotype_edges: Callable[[Any], list[tuple[int, str]]]  # genotype -> (edge row, op) pairs it uses
    # the cell template and the macro skeleton the supernet is built from
    cell_edges: tuple[tuple[int, int], ...]
    cell_inputs: int
    cell_concat: bool
    cell_kinds: tuple[str, ...]
    make_search_op: Callable[[str, int, int], nn.Module]  # (op, channels, stride): non-affine search op
    preprocess: Callable[[CellSlot], list[nn.Module]]  # one module per cell input (none: used as is)
    build_macro: Callable[..., nn.Module]  # (make_cell(CellSlot), channels, cells, num_classes, in_channels)
    search_defaults: dict[str, Any] = field(default_factory=dict)
    retrain_defaults: dict[str, Any] = field(default_factory=dict)
    pt_exclude: tuple[str, ...] = ()  # ops PT never keeps on an edge
    keep_edges_per_node: int = 0  # PT topology step: edges kept per node (0 = every edge stays)
    genotype_json: Callable[[Any], Any] | None = None
    benchmark: str | None = None  # the lookup table that scores a genotype without training, if any
    # the evaluation network's auxiliary head: the smallest image side it works on (0 = it has none)
    auxiliary_min_side: int = 0
    # the ops of the cell whose degeneration the papers count (DARTS spaces: the normal cell's
    # genes; NB201: every edge of its one cell)
    counted_ops: Callable[[Any], list[str]] = lambda geno: []

    @property
    def alpha_shape(self) -> tuple[int, int]:
        return (len(self.edge_ops), len(self.edge_ops[0]))

    @property
    def ops(self) -> tuple[str, ...]:
        """All op names of the space, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.edge_ops:
            for op in row:
                seen.setdefault(op, None)
        return tuple(seen)

    def genotype_weights(self, geno: Any) -> torch.Tensor:
        """One-hot mixing weights of a genotype; edges the genotype does not use are all-zero rows."""
        w = torch.zeros(self.alpha_shape)
        for e, op in self.genotype_edges(geno):
            if op not in self.edge_ops[e]:
                raise NasError(f"genotype: op {op!r} is not a candidate of edge {self.edge_names[e]} in space {self.name}")
            w[e, self.edge_ops[e].index(op)] = 1.0
        return w

    def stride(self, slot: CellSlot, source: int) -> int:
        """The stride of an edge leaving node ``source`` in the cell at ``slot``."""
        return 2 if slot.reduction and source < self.cell_inputs else 1

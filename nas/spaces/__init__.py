"""Search spaces as data: op lists per edge, edges, genotype formats and network builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nas.spaces import nb201
from nas.utils import NasError, clip


@dataclass(frozen=True)
class SearchSpace:
    """Everything the search loop and the stages need to know about a space."""

    name: str
    edge_ops: tuple[tuple[str, ...], ...]  # candidate ops of every edge (one α row each)
    edge_names: tuple[str, ...]
    edge_groups: tuple[tuple[int, ...], ...]  # edges that enter the same node (PC-DARTS edge normalisation)
    parse_genotype: Callable[[str], Any]
    format_genotype: Callable[[Any], str]
    build_network: Callable[..., nn.Module]  # (genotype, channels, cells, num_classes, in_channels, **kw)
    build_supernet: Callable[..., nn.Module]  # (channels, cells, num_classes, in_channels, partial_channels)
    select_magnitude: Callable[[torch.Tensor], Any]  # mixing weights [edges, ops] -> genotype
    random_genotype: Callable[[torch.Generator], Any]
    search_defaults: dict[str, Any] = field(default_factory=dict)
    retrain_defaults: dict[str, Any] = field(default_factory=dict)
    pt_exclude: tuple[str, ...] = ()  # ops PT never keeps on an edge
    keep_edges_per_node: int = 0  # PT topology step: edges kept per node (0 = every edge stays)
    genotype_json: Callable[[Any], Any] | None = None

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
        if self.name == "nb201":
            for e, op in enumerate(geno):
                w[e, self.edge_ops[e].index(op)] = 1.0
            return w
        from nas.spaces.darts import CELL_EDGES, N_CELL_EDGES

        for c, genes in enumerate((geno.normal, geno.reduce)):
            for n, (op, j) in enumerate(genes):
                e = c * N_CELL_EDGES + CELL_EDGES.index((2 + n // 2, j))
                if op not in self.edge_ops[e]:
                    raise NasError(f"genotype: op {op!r} is not a candidate of edge {self.edge_names[e]} in space {self.name}")
                w[e, self.edge_ops[e].index(op)] = 1.0
        return w


# --------------------------------------------------------------------------- NAS-Bench-201

def _nb201_supernet(channels: int, cells: int, num_classes: int, in_channels: int, partial_channels: int = 1) -> nn.Module:
    from nas.supernet import Supernet

    return Supernet(channels, cells, num_classes, in_channels, partial_channels=partial_channels)


def _nb201_magnitude(weights: torch.Tensor) -> nb201.Genotype:
    # Per-edge argmax over all ops, `none` included, as the NB201 reference code does.
    return nb201.genotype_from_indices(weights.argmax(dim=-1).tolist())


def _nb201_random(gen: torch.Generator) -> nb201.Genotype:
    return nb201.genotype_from_indices(torch.randint(0, len(nb201.OPS), (len(nb201.EDGES),), generator=gen).tolist())


def _nb201_groups() -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(e for e, (to, _) in enumerate(nb201.EDGES) if to == i) for i in range(1, nb201.NUM_NODES))


def _nb201_network(geno, channels=16, cells=5, num_classes=10, in_channels=3, **_: Any) -> nn.Module:
    return nb201.build_network(geno, channels, cells, num_classes, in_channels)


NB201 = SearchSpace(
    name="nb201",
    edge_ops=(nb201.OPS,) * len(nb201.EDGES),
    edge_names=tuple(f"{i}<-{j}" for i, j in nb201.EDGES),
    edge_groups=_nb201_groups(),
    parse_genotype=nb201.parse_genotype,
    format_genotype=nb201.format_genotype,
    build_network=_nb201_network,
    build_supernet=_nb201_supernet,
    select_magnitude=_nb201_magnitude,
    random_genotype=_nb201_random,
    search_defaults={"channels": 16, "cells": 5},
    retrain_defaults={"channels": 16, "cells": 5, "epochs": 200, "batch_size": 256, "lr": 0.1, "nesterov": True,
                      "weight_decay": 5e-4, "grad_clip": 0.0, "auxiliary_weight": 0.0, "drop_path": 0.0,
                      "cutout": 0},
)


# --------------------------------------------------------------------------- DARTS and S1-S4

def _darts_space(name: str) -> SearchSpace:
    from nas.spaces import darts

    edge_ops = darts.space_edge_ops(name)
    n = darts.N_CELL_EDGES
    names = tuple(f"{cell} {i}<-{j}" for cell in ("normal", "reduce") for i, j in darts.CELL_EDGES)
    groups = []
    for c in range(2):
        for i in range(2, 2 + darts.STEPS):
            groups.append(tuple(c * n + e for e, (to, _) in enumerate(darts.CELL_EDGES) if to == i))
    ops_all = tuple(sorted({op for row in edge_ops for op in row}))

    def supernet(channels, cells, num_classes, in_channels, partial_channels=1):
        return darts.DartsSupernet(edge_ops, channels, cells, num_classes, in_channels, partial_channels)

    def random_genotype(gen: torch.Generator):
        # per node: 2 distinct inputs, each with a uniformly drawn non-none op of its edge
        w = torch.zeros(len(edge_ops), len(edge_ops[0]))
        offset = 0
        for c in range(2):
            base = c * n
            e0 = 0
            for i in range(darts.STEPS):
                n_in = i + 2
                picks = torch.randperm(n_in, generator=gen)[:2].tolist()
                for j in picks:
                    e = base + e0 + j
                    cands = [k for k, op in enumerate(edge_ops[e]) if op != "none"]
                    k = cands[int(torch.randint(0, len(cands), (1,), generator=gen))]
                    w[e, k] = 1.0
                e0 += n_in
            offset += n
        return darts.select_magnitude(w, edge_ops)

    def network(geno, channels=36, cells=20, num_classes=10, in_channels=3, auxiliary=False, **_: Any):
        return darts.build_network(geno, channels, cells, num_classes, in_channels, auxiliary)

    return SearchSpace(
        name=name,
        edge_ops=edge_ops,
        edge_names=names,
        edge_groups=tuple(groups),
        parse_genotype=lambda text: darts.parse_genotype(text, ops_all),
        format_genotype=darts.format_genotype,
        build_network=network,
        build_supernet=supernet,
        select_magnitude=lambda w: darts.select_magnitude(w, edge_ops),
        random_genotype=random_genotype,
        search_defaults={"channels": 16, "cells": 8},
        retrain_defaults={"channels": 36, "cells": 20, "epochs": 600, "batch_size": 96, "lr": 0.025,
                          "nesterov": False, "weight_decay": 3e-4, "grad_clip": 5.0, "auxiliary_weight": 0.4,
                          "drop_path": 0.2, "cutout": 16},
        pt_exclude=("none",),
        keep_edges_per_node=2,
        genotype_json=lambda g: g.to_json(),
    )


SPACE_NAMES = ("nb201", "darts", "s1", "s2", "s3", "s4")
_CACHE: dict[str, SearchSpace] = {"nb201": NB201}


def get_space(name: str) -> SearchSpace:
    if name not in SPACE_NAMES:
        raise NasError(f"space: unknown {clip(name, 60)} (expected one of {', '.join(SPACE_NAMES)})")
    if name not in _CACHE:
        _CACHE[name] = _darts_space(name)
    return _CACHE[name]


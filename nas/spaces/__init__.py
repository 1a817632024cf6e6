"""Search spaces as data: op lists per edge, edges, genotype formats and network builders."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from nas.spaces import darts, nb201
from nas.spaces.base import CellSlot, SearchSpace
from nas.spaces.ops import make_op
from nas.utils import NasError, clip

# --------------------------------------------------------------------------- NAS-Bench-201

def _nb201_search_op(name: str, channels: int, stride: int = 1) -> nn.Module:
    if stride != 1:
        raise ValueError(f"NB201 cells have stride-1 edges only, got stride {stride}")
    return make_op(name, channels, affine=False, track_running_stats=False)


def _nb201_macro(make_cell: Callable[[CellSlot], nn.Module], channels: int, cells: int, num_classes: int,
                 in_channels: int) -> nn.Module:
    return nb201.MacroNetwork(lambda c: make_cell(CellSlot(0, (c,), c)), channels, cells, num_classes, in_channels)


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
    select_magnitude=_nb201_magnitude,
    random_genotype=_nb201_random,
    genotype_edges=lambda geno: list(enumerate(geno)),
    cell_edges=nb201.EDGES,
    cell_inputs=1,
    cell_concat=False,
    cell_kinds=("cell",),
    make_search_op=_nb201_search_op,
    preprocess=lambda slot: [],
    build_macro=_nb201_macro,
    benchmark="nb201",
    counted_ops=lambda geno: list(geno),
    search_defaults={"channels": 16, "cells": 5},
    retrain_defaults={"channels": 16, "cells": 5, "epochs": 200, "batch_size": 256, "lr": 0.1, "nesterov": True,
                      "weight_decay": 5e-4, "grad_clip": 0.0, "auxiliary_weight": 0.0, "drop_path": 0.0,
                      "cutout": 0},
)


# --------------------------------------------------------------------------- DARTS and S1-S4

def _darts_genotype_edges(name: str, geno: Any) -> list[tuple[int, str]]:
    """The (α row, op) pairs a DARTS-space genotype uses, normal edges first."""
    n = darts.N_CELL_EDGES
    for genes in (geno.normal, geno.reduce):
        if len(genes) != 2 * darts.STEPS:
            raise NasError(f"genotype: a cell with {len(genes) // 2} intermediate nodes is not in space {name} "
                           f"({darts.STEPS} per cell)")
    return [(c * n + darts.CELL_EDGES.index((2 + k // 2, j)), op)
            for c, genes in enumerate((geno.normal, geno.reduce)) for k, (op, j) in enumerate(genes)]


def _darts_random_genotype(edge_ops: tuple[tuple[str, ...], ...], gen: torch.Generator) -> Any:
    """Per node: 2 distinct inputs, each with a uniformly drawn non-none op of its edge."""
    n = darts.N_CELL_EDGES
    w = torch.zeros(len(edge_ops), len(edge_ops[0]))
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
    return darts.select_magnitude(w, edge_ops)


def _darts_space(name: str) -> SearchSpace:
    edge_ops = darts.space_edge_ops(name)
    n = darts.N_CELL_EDGES
    names = tuple(f"{cell} {i}<-{j}" for cell in ("normal", "reduce") for i, j in darts.CELL_EDGES)
    groups = []
    for c in range(2):
        for i in range(2, 2 + darts.STEPS):
            groups.append(tuple(c * n + e for e, (to, _) in enumerate(darts.CELL_EDGES) if to == i))

    genotype_edges = partial(_darts_genotype_edges, name)
    random_genotype = partial(_darts_random_genotype, edge_ops)

    def network(geno, channels=36, cells=20, num_classes=10, in_channels=3, auxiliary=False, **_: Any):
        return darts.build_network(geno, channels, cells, num_classes, in_channels, auxiliary)

    return SearchSpace(
        name=name,
        edge_ops=edge_ops,
        edge_names=names,
        edge_groups=tuple(groups),
        parse_genotype=darts.parse_genotype,  # every op the evaluation network builds
        format_genotype=darts.format_genotype,
        build_network=network,
        select_magnitude=lambda w: darts.select_magnitude(w, edge_ops),
        random_genotype=random_genotype,
        genotype_edges=genotype_edges,
        cell_edges=darts.CELL_EDGES,
        cell_inputs=2,
        cell_concat=True,
        cell_kinds=("normal", "reduce"),
        make_search_op=lambda op, c, stride: darts.make_darts_op(op, c, stride, affine=False, search=True),
        preprocess=darts.search_preprocess,
        build_macro=darts.SearchMacro,
        search_defaults={"channels": 16, "cells": 8},
        retrain_defaults={"channels": 36, "cells": 20, "epochs": 600, "batch_size": 96, "lr": 0.025,
                          "nesterov": False, "weight_decay": 3e-4, "grad_clip": 5.0, "auxiliary_weight": 0.4,
                          "drop_path": 0.2, "cutout": 16},
        pt_exclude=("none",),
        keep_edges_per_node=2,
        genotype_json=lambda g: g.to_json(),
        # 8x8 features after the second reduction, where the head sits (2/3 of the depth)
        auxiliary_min_side=32,
        counted_ops=lambda g: [op for op, _ in g.normal],
    )


SPACE_NAMES = ("nb201", "darts", "s1", "s2", "s3", "s4")
_CACHE: dict[str, SearchSpace] = {"nb201": NB201}


def get_space(name: str) -> SearchSpace:
    if name not in SPACE_NAMES:
        raise NasError(f"space: unknown {clip(name, 60)} (expected one of {', '.join(SPACE_NAMES)})")
    if name not in _CACHE:
        _CACHE[name] = _darts_space(name)
    return _CACHE[name]


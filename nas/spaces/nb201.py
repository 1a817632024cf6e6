"""NAS-Bench-201: 5 ops on the 6 edges of a 4-node cell; node 3 is the cell's output.

Edges are ordered as in the benchmark's genotype string (and in its reference code, which
keys them ``'{i}<-{j}'``): 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from nas.spaces.ops import ResNetBasicBlock, make_op
from nas.utils import NasError, clip

NAME = "nb201"
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NUM_NODES = 4
EDGES = tuple((i, j) for i in range(1, NUM_NODES) for j in range(i))  # (to, from)
EDGE_INDEX = {e: k for k, e in enumerate(EDGES)}

Genotype = tuple[str, ...]  # one op name per edge, in EDGES order


def parse_genotype(text: str) -> Genotype:
    """Parse ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` strictly; errors name the bad token."""
    if not isinstance(text, str):
        raise NasError(f"genotype: expected a string, got {type(text).__name__}")
    s = text.strip()
    if len(s) > 1000:  # the longest valid genotype has about 120 characters
        raise NasError(f"genotype {clip(s, 60)}: {len(s)} characters, longer than any NAS-Bench-201 genotype")
    groups = s.split("+")
    if len(groups) != NUM_NODES - 1:
        raise NasError(f"genotype {clip(text, 100)}: expected {NUM_NODES - 1} '+'-separated node groups, got {len(groups)}")
    ops: list[str] = []
    for i, group in enumerate(groups, start=1):
        if len(group) < 2 or not group.startswith("|") or not group.endswith("|"):
            raise NasError(f"genotype {clip(text, 100)}: node group {clip(group, 60)} must start and end with '|'")
        tokens = group[1:-1].split("|")
        if len(tokens) != i:
            raise NasError(f"genotype {clip(text, 100)}: node {i} group {clip(group, 60)} needs {i} edges, got {len(tokens)}")
        for j, token in enumerate(tokens):
            if token.count("~") != 1:
                raise NasError(f"genotype {clip(text, 100)}: bad token {clip(token, 40)} (expected op~{j})")
            op, src = token.split("~")
            if op not in OPS:
                raise NasError(f"genotype {clip(text, 100)}: unknown op {clip(op, 40)} (expected one of {', '.join(OPS)})")
            if src != str(j):
                raise NasError(f"genotype {clip(text, 100)}: token {clip(token, 40)} should read from node {j}")
            ops.append(op)
    return tuple(ops)


def format_genotype(geno: Genotype) -> str:
    if len(geno) != len(EDGES) or any(op not in OPS for op in geno):
        raise NasError(f"genotype {geno!r}: expected {len(EDGES)} ops from {', '.join(OPS)}")
    groups = []
    for i in range(1, NUM_NODES):
        groups.append("|" + "|".join(f"{geno[EDGE_INDEX[(i, j)]]}~{j}" for j in range(i)) + "|")
    return "+".join(groups)


_OP = "(?:" + "|".join(re.escape(op) for op in OPS) + ")"
_VALID = re.compile(r"\+".join(r"\|" + r"\|".join(f"{_OP}~{j}" for j in range(i)) + r"\|" for i in range(1, NUM_NODES)))


def canonical_genotype(text: str) -> str:
    """``text`` in the benchmark's canonical form (``format_genotype(parse_genotype(text))``), with
    a fast path for a string already in that form: the table's 15,625 keys load in milliseconds."""
    if isinstance(text, str) and _VALID.fullmatch(text.strip()):
        return text.strip()
    return format_genotype(parse_genotype(text))


def genotype_from_indices(indices: list[int] | torch.Tensor) -> Genotype:
    return tuple(OPS[int(k)] for k in indices)


class InferCell(nn.Module):
    """The discrete cell: node i = sum over j < i of op_(i,j)(node j)."""

    def __init__(self, geno: Genotype, channels: int):
        super().__init__()
        self.geno = geno
        self.edges = nn.ModuleList(make_op(op, channels) for op in geno)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, NUM_NODES):
            acc = None
            for j in range(i):
                k = EDGE_INDEX[(i, j)]
                if self.geno[k] == "none":
                    continue
                y = self.edges[k](nodes[j])
                acc = y if acc is None else acc + y
            nodes.append(acc if acc is not None else torch.zeros_like(x))
        return nodes[-1]


class MacroNetwork(nn.Module):
    """Stem, three stages of ``cells`` cells at C, 2C, 4C, ResNet blocks between, BN-ReLU-pool-linear.

    ``make_cell(C)`` builds one cell; extra forward arguments (the mixing weights of a supernet)
    are passed through to every cell, so the search and the discrete network share this code.
    """

    def __init__(self, make_cell: Callable[[int], nn.Module], channels: int, cells: int,
                 num_classes: int, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        self.is_cell: list[bool] = []
        c_prev = channels
        for stage, c in enumerate((channels, channels * 2, channels * 4)):
            if stage > 0:
                layers.append(ResNetBasicBlock(c_prev, c, 2))
                self.is_cell.append(False)
            for _ in range(cells):
                layers.append(make_cell(c))
                self.is_cell.append(True)
            c_prev = c
        self.layers = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def features(self, x: torch.Tensor, *cell_args) -> torch.Tensor:
        h = self.stem(x)
        for layer, is_cell in zip(self.layers, self.is_cell):
            h = layer(h, *cell_args) if is_cell else layer(h)
        return self.pool(self.lastact(h)).flatten(1)

    def forward(self, x: torch.Tensor, *cell_args) -> torch.Tensor:
        return self.classifier(self.features(x, *cell_args))


def build_network(geno: Genotype, channels: int = 16, cells: int = 5, num_classes: int = 10,
                  in_channels: int = 3) -> MacroNetwork:
    return MacroNetwork(lambda c: InferCell(geno, c), channels, cells, num_classes, in_channels)

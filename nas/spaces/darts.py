"""The DARTS CNN space (Liu et al. 2019) and the RobustDARTS subspaces S1-S4 (Zela et al. 2020).

A cell has two input nodes (the outputs of the two previous cells, preprocessed), four
intermediate nodes and 14 edges: node i (2..5) reads from every earlier node.  The output is the
concatenation of the four intermediate nodes.  Normal and reduction cells have their own α; the
search space stacks them as one ``[28, ops]`` matrix, normal edges first.  Edges are ordered
node by node: (2<-0), (2<-1), (3<-0), (3<-1), (3<-2), (4<-0) ... (5<-4).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nas.spaces.base import CellSlot
from nas.spaces.darts_ops import FactorizedReduce, ReLUConvBN, make_darts_op
from nas.utils import NasError, clip

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5")
STEPS = 4
CELL_EDGES = tuple((i, j) for i in range(2, 2 + STEPS) for j in range(i))  # (to, from), 14 edges
N_CELL_EDGES = len(CELL_EDGES)
CONCAT = [2, 3, 4, 5]
MAX_STEPS = 16  # the most intermediate nodes a genotype may have (NASNet and AmoebaNet have 5)
# ops the evaluation network builds: the search ops, S4's noise, and the ops of the NASNet and
# AmoebaNet cells of the DARTS code's genotypes
EVAL_OPS = PRIMITIVES + ("noise", "sep_conv_7x7", "conv_7x1_1x7")

_SHORT = {"skip": "skip_connect", "max": "max_pool_3x3", "avg": "avg_pool_3x3", "sep3": "sep_conv_3x3",
          "dil3": "dil_conv_3x3", "dil5": "dil_conv_5x5"}


def _s1() -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]:
    normal = ["skip dil3", "skip dil5", "skip dil5", "skip sep3", "skip dil3", "max skip", "skip sep3", "skip sep3",
              "skip dil3", "skip sep3", "max skip", "skip dil3", "dil3 dil5", "dil3 dil5"]
    reduce = ["max avg", "max dil3", "max avg", "max avg", "skip dil5", "max avg", "max sep3", "skip dil3",
              "skip dil5", "max avg", "max avg", "skip dil5", "skip dil5", "skip dil5"]

    def expand(rows):
        return tuple(tuple(_SHORT[t] for t in r.split()) for r in rows)

    return expand(normal), expand(reduce)


def space_edge_ops(name: str) -> tuple[tuple[str, ...], ...]:
    """Candidate ops of each of the 28 edges (14 normal, then 14 reduction)."""
    if name == "darts":
        per = PRIMITIVES
    elif name == "s2":
        per = ("skip_connect", "sep_conv_3x3")
    elif name == "s3":
        per = ("none", "skip_connect", "sep_conv_3x3")
    elif name == "s4":
        per = ("noise", "sep_conv_3x3")
    elif name == "s1":
        normal, reduce = _s1()
        return normal + reduce
    else:
        raise NasError(f"space: unknown {name!r}")
    return (per,) * (2 * N_CELL_EDGES)


# --------------------------------------------------------------------------- genotypes

@dataclass(frozen=True)
class DartsGenotype:
    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"normal": [list(g) for g in self.normal], "normal_concat": list(self.normal_concat),
                "reduce": [list(g) for g in self.reduce], "reduce_concat": list(self.reduce_concat)}


def format_genotype(g: DartsGenotype) -> str:
    def cell(genes):
        return "[" + ", ".join(f"({op!r}, {j})" for op, j in genes) + "]"

    return (f"Genotype(normal={cell(g.normal)}, normal_concat={list(g.normal_concat)}, "
            f"reduce={cell(g.reduce)}, reduce_concat={list(g.reduce_concat)})")


MAX_GENOTYPE_CHARS = 100_000


def _validate(fields: dict[str, Any], text: str, ops: set[str]) -> DartsGenotype:
    out = {}
    for key in ("normal", "reduce"):
        if key not in fields:
            raise NasError(f"genotype {clip(text, 60)}: missing {key!r}")
        genes = fields[key]
        if (not isinstance(genes, (list, tuple)) or not genes or len(genes) % 2
                or len(genes) > 2 * MAX_STEPS):
            raise NasError(f"genotype: {key!r} needs an even number (2 to {2 * MAX_STEPS}) of (op, input) pairs, "
                           f"two per intermediate node, got {clip(genes)}")
        parsed = []
        for n, gene in enumerate(genes):
            if not isinstance(gene, (list, tuple)) or len(gene) != 2:
                raise NasError(f"genotype: {key}[{n}] = {clip(gene)} is not an (op, input) pair")
            op, j = gene
            if not isinstance(op, str) or op not in ops or op == "none":
                raise NasError(f"genotype: {key}[{n}] has unknown op {clip(op, 60)} (expected one of "
                               f"{', '.join(sorted(ops - {'none'}))})")
            node = 2 + n // 2
            if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < node:
                raise NasError(f"genotype: {key}[{n}] = {clip(gene)}: input {clip(j, 40)} must be in 0..{node - 1} "
                               f"for node {node}")
            parsed.append((op, j))
        out[key] = tuple(parsed)
        nodes = 2 + len(genes) // 2
        concat = fields.get(f"{key}_concat", list(range(2, nodes)))
        if (not isinstance(concat, (list, tuple)) or not concat
                or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < nodes for c in concat)
                or len(set(concat)) != len(concat)):
            raise NasError(f"genotype: {key}_concat must list distinct nodes of 0..{nodes - 1} (the cell has "
                           f"{nodes - 2} intermediate nodes), got {clip(concat)}")
        out[f"{key}_concat"] = tuple(concat)
    return DartsGenotype(out["normal"], out["normal_concat"], out["reduce"], out["reduce_concat"])


def _range(node: ast.Call, field: str) -> list[int]:
    """``range(2, 6)`` in a genotype's concat field, without building a huge list."""
    args = node.args
    if node.keywords or not 1 <= len(args) <= 3 or not all(
            isinstance(a, ast.Constant) and type(a.value) is int for a in args):
        raise NasError(f"genotype: field {field!r}: range() takes 1 to 3 integer literals")
    values = [a.value for a in args]
    if len(values) == 3 and values[2] == 0:
        raise NasError(f"genotype: field {field!r}: range() step must not be zero")
    r = range(*values)
    if len(r) > 2 + MAX_STEPS:
        raise NasError(f"genotype: field {field!r}: range of {len(r)} nodes, more than a cell has")
    return list(r)


def parse_genotype(text: str, ops: tuple[str, ...] = EVAL_OPS) -> DartsGenotype:
    """Parse ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], reduce=[...],
    reduce_concat=[2, 3, 4, 5])`` or the JSON form ``{"normal": [["sep_conv_3x3", 0], ...], ...}``."""
    if not isinstance(text, str):
        raise NasError(f"genotype: expected a string, got {type(text).__name__}")
    if len(text) > MAX_GENOTYPE_CHARS:
        raise NasError(f"genotype: {len(text)} characters, longer than any genotype ({clip(text, 60)})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise NasError(f"genotype: not UTF-8 text ({clip(text, 60)})") from None
    s = text.strip()
    if s.startswith("{"):
        try:
            fields = json.loads(s)
        except json.JSONDecodeError as exc:
            raise NasError(f"genotype: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise NasError("genotype: not valid JSON (nested too deeply)") from None
        if not isinstance(fields, dict):
            raise NasError("genotype: JSON form must be an object")
        return _validate(fields, s, set(ops))
    try:
        tree = ast.parse(s, mode="eval").body
    except SyntaxError as exc:
        raise NasError(f"genotype: cannot parse {clip(s, 60)} ({exc.msg})") from None
    except (RecursionError, MemoryError, ValueError):
        raise NasError(f"genotype: cannot parse {clip(s, 60)} (nested too deeply or not text)") from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "Genotype"
            and not tree.args):
        raise NasError(f"genotype: expected Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...), "
                       f"got {clip(s, 60)}")
    fields = {}
    for kw in tree.keywords:
        if kw.arg not in ("normal", "normal_concat", "reduce", "reduce_concat"):
            raise NasError(f"genotype: unknown field {clip(kw.arg, 60)}")
        node = kw.value
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
            fields[kw.arg] = _range(node, kw.arg)  # normal_concat=range(2, 6)
            continue
        try:
            fields[kw.arg] = ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise NasError(f"genotype: field {kw.arg!r} is not a literal") from None
    return _validate(fields, s, set(ops))


def select_magnitude(weights: torch.Tensor, edge_ops: tuple[tuple[str, ...], ...]) -> DartsGenotype:
    """The DARTS rule: per node, the 2 incoming edges with the strongest non-``none`` op, and on each
    the argmax non-``none`` op."""
    cells = []
    for c in range(2):
        genes = []
        start = c * N_CELL_EDGES
        offset = 0
        for i in range(STEPS):
            n_in = i + 2
            rows = range(start + offset, start + offset + n_in)

            def best(e):
                cands = [(float(weights[e, k]), -k, k) for k, op in enumerate(edge_ops[e]) if op != "none"]
                return max(cands)

            chosen = sorted(rows, key=lambda e: -best(e)[0])[:2]
            for e in sorted(chosen, key=lambda e: CELL_EDGES[e - start][1]):
                genes.append((edge_ops[e][best(e)[2]], CELL_EDGES[e - start][1]))
            offset += n_in
        cells.append(tuple(genes))
    return DartsGenotype(cells[0], tuple(CONCAT), cells[1], tuple(CONCAT))


# --------------------------------------------------------------------------- the search skeleton

def search_preprocess(slot: Any) -> list[nn.Module]:
    """The search cell's input preprocessing (non-affine): the older input is halved when the
    previous cell reduced; both are mapped to the cell's width by ReLU-1x1 conv-BN."""
    c_pp, c_p = slot.inputs
    c = slot.channels
    pre0 = FactorizedReduce(c_pp, c, affine=False) if slot.reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0, False)
    return [pre0, ReLUConvBN(c_p, c, 1, 1, 0, False)]


class SearchMacro(nn.Module):
    """The DARTS search network around its cells: stem conv to 3C, ``cells`` cells with reductions
    at 1/3 and 2/3 of the depth, global pooling, linear classifier.  ``make_cell(slot)`` builds a
    cell; extra forward arguments (the mixing weights) are passed through to every cell."""

    def __init__(self, make_cell: Any, channels: int = 16, cells: int = 8, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        c_curr = 3 * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(cells):
            reduction = i in (cells // 3, 2 * cells // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(make_cell(CellSlot(int(reduction), (c_pp, c_p), c_curr, reduction, reduction_prev)))
            reduction_prev = reduction
            c_pp, c_p = c_p, STEPS * c_curr
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor, *cell_args: Any) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, *cell_args)
        return self.classifier(self.pool(s1).flatten(1))


# --------------------------------------------------------------------------- the evaluation network

def drop_path(x: torch.Tensor, prob: float) -> torch.Tensor:
    keep = 1.0 - prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class EvalCell(nn.Module):
    def __init__(self, genes, concat, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0)
        self.indices = [j for _, j in genes]
        self.concat = list(concat)
        self.multiplier = len(self.concat)
        self.ops = nn.ModuleList(make_darts_op(op, c, 2 if reduction and j < 2 else 1) for op, j in genes)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for i in range(len(self.ops) // 2):
            hs = []
            for t in (2 * i, 2 * i + 1):
                op = self.ops[t]
                h = op(states[self.indices[t]])
                if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The DARTS CIFAR auxiliary head, on the 8x8 features after the second reduction."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class DartsNetwork(nn.Module):
    """The evaluation network (DARTS's NetworkCIFAR).  In training mode with an auxiliary head it
    returns ``(logits, aux_logits)``; otherwise logits."""

    def __init__(self, genotype: DartsGenotype, channels: int = 36, cells: int = 20, num_classes: int = 10,
                 in_channels: int = 3, auxiliary: bool = False):
        super().__init__()
        self.drop_path_prob = 0.0
        c_curr = 3 * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        self.aux_after = -1
        c_aux = None
        for i in range(cells):
            reduction = i in (cells // 3, 2 * cells // 3)
            if reduction:
                c_curr *= 2
            genes, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
            cell = EvalCell(genes, concat, c_pp, c_p, c_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_curr
            if i == 2 * cells // 3:
                c_aux, self.aux_after = c_p, i
        self.auxiliary = AuxiliaryHead(c_aux, num_classes) if auxiliary and c_aux is not None else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor):
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_after and self.auxiliary is not None and self.training:
                aux = self.auxiliary(s1)
        logits = self.classifier(self.pool(s1).flatten(1))
        return (logits, aux) if aux is not None else logits


def build_network(genotype: DartsGenotype, channels: int = 36, cells: int = 20, num_classes: int = 10,
                  in_channels: int = 3, auxiliary: bool = False) -> DartsNetwork:
    return DartsNetwork(genotype, channels, cells, num_classes, in_channels, auxiliary)

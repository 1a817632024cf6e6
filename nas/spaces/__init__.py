"""Search spaces as data: op lists, edges, genotype formats and network builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nas.spaces import nb201
from nas.utils import NasError


@dataclass(frozen=True)
class SearchSpace:
    """Everything the search loop and the stages need to know about a space."""

    name: str
    ops: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    parse_genotype: Callable[[str], Any]
    format_genotype: Callable[[Any], str]
    build_network: Callable[..., nn.Module]  # (genotype, channels, cells, num_classes, in_channels)
    build_supernet: Callable[..., nn.Module]  # (channels, cells, num_classes, in_channels)
    select_magnitude: Callable[[torch.Tensor], Any]  # mixing weights [edges, ops] -> genotype

    @property
    def alpha_shape(self) -> tuple[int, int]:
        return (len(self.edges), len(self.ops))


def _nb201_supernet(channels: int, cells: int, num_classes: int, in_channels: int) -> nn.Module:
    from nas.supernet import Supernet

    return Supernet(channels, cells, num_classes, in_channels)


def _nb201_magnitude(weights: torch.Tensor) -> nb201.Genotype:
    # Per-edge argmax over all ops, `none` included, as the NB201 reference code does.
    return nb201.genotype_from_indices(weights.argmax(dim=-1).tolist())


SPACES: dict[str, SearchSpace] = {
    "nb201": SearchSpace(
        name="nb201",
        ops=nb201.OPS,
        edges=nb201.EDGES,
        parse_genotype=nb201.parse_genotype,
        format_genotype=nb201.format_genotype,
        build_network=nb201.build_network,
        build_supernet=_nb201_supernet,
        select_magnitude=_nb201_magnitude,
    ),
}


def get_space(name: str) -> SearchSpace:
    try:
        return SPACES[name]
    except KeyError:
        raise NasError(f"space: unknown {name!r} (expected one of {', '.join(SPACES)})") from None

"""What a method is: the seams it fills in the one search loop.

- ``mixing``: how the mixing weights come from α (``nas.methods.mixing``);
- ``perturbation``: how the weights the w step trains on are perturbed (``nas.methods.perturb``);
- partial channels with edge normalisation (PC-DARTS), on or off;
- ``stages``: the schedule: how many epochs, the first ones with α frozen (warm-up), and what
  changes on entering a stage (DrNAS's progressive pruning and widening);
- ``train_alpha``, ``second_order``, ``a_weight_decay``: the α step;
- ``select``: the final selection at the end of the search (magnitude by default);
- ``run``: a whole search of its own instead of the loop (a baseline that trains no supernet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nas.methods.mixing import Mixing
from nas.methods.perturb import NoPerturbation, Perturbation


@dataclass(frozen=True)
class Stage:
    """A stretch of the search: ``epochs`` epochs, the first ``warmup`` of them with α frozen.
    On entering it (not the first stage), each edge keeps its ``keep_ops`` strongest ops and the
    mixed ops pass C/``partial_channels`` channels, where set."""

    epochs: int
    warmup: int = 0
    partial_channels: int | None = None
    keep_ops: int | None = None


def magnitude(engine: Any, state: Any, a_stream: Any) -> tuple[Any, dict[str, Any]]:
    """The DARTS selection: the space's rule on the final expected mixing weights."""
    return engine.space.select_magnitude(engine.expected(state)), {}


@dataclass
class Method:
    """A named combination of the seams, built from a search config by its method module."""

    name: str
    mixing: Mixing
    perturbation: Perturbation = field(default_factory=NoPerturbation)
    partial_channels: int = 1
    edge_norm: bool = False
    train_alpha: bool = True
    second_order: bool = False
    a_weight_decay: float = 1e-3
    stages: tuple[Stage, ...] = ()
    progressive: bool = False
    selection: str = "magnitude"
    select: Callable[[Any, Any, Any], tuple[Any, dict[str, Any]]] = magnitude
    run: Callable[..., dict[str, Any]] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def trains_supernet(self) -> bool:
        return self.run is None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mixing": self.mixing.name, "perturbation": self.perturbation.name,
                "partial_channels": self.partial_channels, "edge_norm": self.edge_norm,
                "train_alpha": self.train_alpha, "second_order": self.second_order,
                "progressive": self.progressive, **self.options}

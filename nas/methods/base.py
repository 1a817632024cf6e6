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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

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


class Engine(Protocol):
    """What a method's hooks may use of the search engine (``nas.search.Search``)."""

    cfg: Any
    space: Any
    device: Any
    bundle: Any

    def expected(self, state: Any) -> Any: ...


class Select(Protocol):
    """The selection seam: the final architecture of a finished search, and what to record about
    how it was chosen (merged into ``result.json``)."""

    def __call__(self, engine: Engine, state: Any, a_stream: Any) -> tuple[Any, dict[str, Any]]: ...


class OwnSearch(Protocol):
    """A whole search of the method's own instead of the loop (a baseline that trains no
    supernet); returns the run's result, as ``Search.run`` does."""

    def __call__(self, search: Engine, resume: bool = False) -> dict[str, Any]: ...


def magnitude(engine: Engine, state: Any, a_stream: Any) -> tuple[Any, dict[str, Any]]:
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
    select: Select = magnitude
    run: OwnSearch | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def trains_supernet(self) -> bool:
        return self.run is None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mixing": self.mixing.name, "perturbation": self.perturbation.name,
                "partial_channels": self.partial_channels, "edge_norm": self.edge_norm,
                "train_alpha": self.train_alpha, "second_order": self.second_order,
                "progressive": self.progressive, **self.options}


@dataclass(frozen=True)
class MethodSpec:
    """A method as the registry (``nas.methods.REGISTRY``) knows it: its name, how it is built
    from a search config, and what the rest of the package asks of it.

    - ``build(cfg, seams)``: the ``Method`` for a config, given the shared seams already resolved;
    - ``defaults``: its defaults for the shared seams (``perturb``, ``partial_channels``,
      ``edge_norm``, ``a_weight_decay``), used where the config says ``auto``/``null``;
    - ``tuned``: the regularisation strength a sweep tunes, ``(key, low, high)``, sampled
      log-uniformly; None when it has none;
    - ``trains_alpha``: False when the architecture is chosen by a selection of its own (PT and
      verified selection then have no supernet to work on);
    - ``progressive``: whether it has DrNAS's progressive schedule (``progressive: true``);
    - ``settings``: the settings that are its own, a ``nas.settings.Settings`` subclass (types,
      defaults, ranges, help); the search config composes them, so they are keys like any other;
    - ``supernet``: False for a method that trains no supernet (its own search): the supernet's
      settings (``SUPERNET_SETTINGS``) then mean nothing to it."""

    name: str
    build: Callable[[Any, dict[str, Any]], Method]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    tuned: tuple[str, float, float] | None = None
    trains_alpha: bool = True
    progressive: bool = False
    settings: type | None = None
    supernet: bool = True

    @property
    def setting_names(self) -> tuple[str, ...]:
        return tuple(self.settings.model_fields) if self.settings is not None else ()

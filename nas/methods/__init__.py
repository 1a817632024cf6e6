"""Search methods as small pieces plugged into the one search loop.

A method is the combination of three seams:
- ``Mixing``: how the mixing weights ``[edges, ops]`` come from α (softmax for DARTS);
- ``Perturbation``: how the mixing weights used by the w step are perturbed (none for DARTS);
- the α-gradient order (first or second, DARTS only).
Selection (magnitude, PT) is a separate stage that reads a finished run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nas.utils import NasError


class Mixing(ABC):
    """Turns α into mixing weights.  ``sample`` is used in training forward passes and may be
    stochastic; ``expected`` is deterministic and used for evaluation and selection."""

    name = "base"

    def sample(self, alpha: torch.Tensor, epoch: int, epochs: int,
               gen: torch.Generator | None = None) -> torch.Tensor:
        return self.expected(alpha)

    @abstractmethod
    def expected(self, alpha: torch.Tensor) -> torch.Tensor:
        """Deterministic mixing weights for evaluation and selection."""


class Softmax(Mixing):
    name = "softmax"

    def expected(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.softmax(alpha, dim=-1)


class Perturbation:
    """Perturbs the (detached) mixing weights the w step trains on.  Identity by default."""

    name = "none"

    def __call__(self, weights: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                 epoch: int, epochs: int, gen: torch.Generator | None = None) -> torch.Tensor:
        return weights


@dataclass
class Method:
    name: str
    mixing: Mixing
    perturbation: Perturbation = field(default_factory=Perturbation)
    supports_second_order: bool = True


def _darts() -> Method:
    return Method("darts", Softmax())


METHODS: dict[str, Callable[[], Method]] = {
    "darts": _darts,
}


def get_method(name: str, order: int = 1) -> Method:
    if name not in METHODS:
        raise NasError(f"method: unknown {name!r} (expected one of {', '.join(METHODS)})")
    method = METHODS[name]()
    if order == 2 and not method.supports_second_order:
        raise NasError(f"method {name!r} does not combine with order=2 (second order is DARTS-only)")
    return method

"""Perturbations of the mixing weights the w step trains on (SDARTS, Chen & Hsieh 2020).

Both keep the perturbed weights a valid architecture: each edge's weights stay on the simplex
and within the ε-ball (L∞) of the unperturbed weights.  That is an exact Euclidean projection
onto {x : Σx = 1, max(0, w-ε) ≤ x ≤ min(1, w+ε)}, solved per edge by bisection on the shift.
ε ramps linearly from ``eps_start`` (0.03) at the first epoch to its maximum at the last, as in
the reference code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field

from nas.mix import Mix
from nas.settings import Settings


def project_capped_simplex(y: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, iters: int = 60) -> torch.Tensor:
    """Euclidean projection of each row of ``y`` onto {x : Σx = 1, lo ≤ x ≤ hi} (non-empty)."""
    a = (y - hi).min(dim=-1, keepdim=True).values  # shift where every x = hi  -> sum >= 1
    b = (y - lo).max(dim=-1, keepdim=True).values  # shift where every x = lo  -> sum <= 1
    for _ in range(iters):
        mid = 0.5 * (a + b)
        s = (y - mid).clamp(min=lo, max=hi).sum(-1, keepdim=True)
        a = torch.where(s > 1, mid, a)
        b = torch.where(s > 1, b, mid)
    x = (y - 0.5 * (a + b)).clamp(min=lo, max=hi)
    return x / x.sum(-1, keepdim=True)  # removes the last bisection rounding


def ramp(eps_max: float, eps_start: float, epoch: int, epochs: int) -> float:
    return eps_start + (eps_max - eps_start) * min(epoch, epochs) / max(epochs, 1)


def _ball(w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return (w - eps).clamp(min=0.0), (w + eps).clamp(max=1.0)


class RampSettings(Settings):
    """The ramp both perturbations share: their size grows linearly from ``eps_start``."""

    eps_start: float = Field(0.03, ge=0.0, le=1e3, description="both ramp linearly from this value")


class RandomSmoothingSettings(RampSettings):
    """SDARTS-RS: uniform noise on α of amplitude up to ``rs_sigma``."""

    rs_sigma: float = Field(0.3, ge=0.0, le=1e3, description="SDARTS-RS noise amplitude at the end of the ramp")


class AdversarialSettings(RampSettings):
    """SDARTS-ADV: a PGD attack on α within ``adv_epsilon``."""

    adv_epsilon: float = Field(0.3, ge=0.0, le=1e3, description="SDARTS-ADV attack radius at the end of the ramp")
    adv_steps: int = Field(7, ge=1, le=1000, description="SDARTS-ADV PGD steps per w step")


class Perturbation:
    """Perturbs the (detached) mixing weights of the w step.  Identity by default."""

    name = "none"

    def __call__(self, mix: Mix, loss_fn: Callable[[Mix], torch.Tensor], epoch: int, epochs: int,
                 gen: torch.Generator | None = None) -> Mix:
        return mix

    def epsilon(self, epoch: int, epochs: int) -> float:
        return 0.0


class NoPerturbation(Perturbation):
    """The w step trains on the unperturbed weights (DARTS and every method without SDARTS)."""


class RandomSmoothing(Perturbation):
    """SDARTS-RS: uniform noise in [-σ, σ] on the mixing weights, projected onto the simplex."""

    name = "rs"

    def __init__(self, sigma: float = 0.3, eps_start: float = 0.03):
        self.sigma, self.eps_start = sigma, eps_start

    def epsilon(self, epoch, epochs):
        return ramp(self.sigma, self.eps_start, epoch, epochs)

    def __call__(self, mix, loss_fn, epoch, epochs, gen=None):
        w = mix.weights.detach()
        eps = self.epsilon(epoch, epochs)
        noise = (torch.rand(w.shape, generator=gen, device=w.device, dtype=w.dtype) * 2 - 1) * eps
        lo, hi = _ball(w, eps)
        return mix.with_weights(project_capped_simplex(w + noise, lo, hi))


class AdversarialPerturbation(Perturbation):
    """SDARTS-ADV: an L∞ PGD attack on the mixing weights that maximises the training loss,
    ``steps`` steps of size 2ε/steps from a random start in the ε-ball."""

    name = "adv"

    def __init__(self, epsilon: float = 0.3, eps_start: float = 0.03, steps: int = 7):
        self.eps_max, self.eps_start, self.steps = epsilon, eps_start, steps

    def epsilon(self, epoch, epochs):
        return ramp(self.eps_max, self.eps_start, epoch, epochs)

    def __call__(self, mix, loss_fn, epoch, epochs, gen=None):
        w = mix.weights.detach()
        eps = self.epsilon(epoch, epochs)
        lo, hi = _ball(w, eps)
        step = 2 * eps / self.steps
        noise = (torch.rand(w.shape, generator=gen, device=w.device, dtype=w.dtype) * 2 - 1) * eps
        x = project_capped_simplex(w + noise, lo, hi)
        for _ in range(self.steps):
            x.requires_grad_(True)
            (g,) = torch.autograd.grad(loss_fn(mix.with_weights(x)), [x])
            with torch.no_grad():
                x = project_capped_simplex(x + step * g.sign(), lo, hi)
        return mix.with_weights(x.detach())

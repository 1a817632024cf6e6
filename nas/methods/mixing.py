"""How the mixing weights come from α: the first seam of a method.

Softmax (DARTS), relaxed Gumbel-softmax (SNAS), hard Gumbel-max with straight-through gradients
(GDAS), a Dirichlet sample (DrNAS), or a uniformly random path (RSPS).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from pydantic import Field

from nas.mix import Mix
from nas.settings import Settings
from nas.utils import NasError


def _masked(weights: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero pruned ops and renormalise each edge (DrNAS progressive pruning)."""
    if mask is None:
        return weights
    w = weights * mask
    return w / w.sum(-1, keepdim=True)


def linear_schedule(start: float, end: float, epoch: int, epochs: int) -> float:
    """``start`` at the first epoch, ``end`` at the last (xautodl's GDAS temperature rule)."""
    if epochs <= 1:
        return end
    epoch = min(epoch, epochs - 1)  # epochs past the search (PT fine-tuning) keep the final value
    return start - (start - end) * epoch / (epochs - 1)


class GumbelSettings(Settings):
    """The Gumbel-softmax temperature schedule of SNAS and GDAS: linear from ``tau_max`` to ``tau_min``."""

    tau_max: float | None = Field(None, gt=0.0, le=1e6, description="Gumbel temperature start; None = 10 (snas, gdas)")
    tau_min: float | None = Field(None, gt=0.0, le=1e6,
                                  description="Gumbel temperature end; None = 1 (snas), 0.1 (gdas)")

class Mixing(ABC):
    """Turns α into mixing weights.  ``sample`` is used in training forward passes and may be
    stochastic; ``expected`` is deterministic and used for evaluation and selection."""

    name = "base"
    stochastic = False
    hard = False  # one-hot paths: a forward pass computes one op per edge

    def sample(self, alpha: torch.Tensor, mask: torch.Tensor | None, epoch: int, epochs: int,
               gen: torch.Generator | None) -> Mix:
        return Mix(self.expected(alpha, mask), mask=mask)

    @abstractmethod
    def expected(self, alpha: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic mixing weights for evaluation and selection."""

    def penalty(self, alpha: torch.Tensor) -> torch.Tensor | None:
        """A regulariser added to the α loss (DrNAS); none by default."""
        return None

    def describe(self, epoch: int, epochs: int) -> dict[str, float]:
        return {}


class Softmax(Mixing):
    name = "softmax"

    def expected(self, alpha, mask=None):
        return _masked(torch.softmax(alpha, dim=-1), mask)


def _gumbel(alpha: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Gumbel(0, 1) noise as -log(Exp(1)), redrawn where it would be infinite."""
    while True:
        g = -torch.empty_like(alpha).exponential_(generator=gen).log()
        if torch.isfinite(g).all():
            return g


class _Tempered(Softmax):
    """Gumbel mixings: a temperature linear from ``tau_max`` to ``tau_min``; softmax(α) for
    evaluation and selection."""

    stochastic = True
    default_tau_min = 1.0

    def __init__(self, tau_max: float = 10.0, tau_min: float | None = None):
        self.tau_max = tau_max
        self.tau_min = self.default_tau_min if tau_min is None else tau_min

    def tau(self, epoch: int, epochs: int) -> float:
        return linear_schedule(self.tau_max, self.tau_min, epoch, epochs)

    def describe(self, epoch, epochs):
        return {"tau": self.tau(epoch, epochs)}


class GumbelSoftmax(_Tempered):
    """SNAS: relaxed Gumbel-softmax weights, temperature linear from 10 to 1 by default."""

    name = "gumbel-soft"

    def sample(self, alpha, mask, epoch, epochs, gen):
        w = torch.softmax((alpha + _gumbel(alpha, gen)) / self.tau(epoch, epochs), dim=-1)
        return Mix(_masked(w, mask), mask=mask)


class GumbelHard(_Tempered):
    """GDAS: a one-hot Gumbel-max sample forward, straight-through Gumbel-softmax gradients.

    As in the reference code, the logits are ``(log_softmax(α) + g) / τ`` and the weights are
    ``one_hot - p.detach() + p``: exactly one-hot in value, ``p``'s gradient backward.
    """

    name = "gumbel-hard"
    hard = True
    default_tau_min = 0.1

    def sample(self, alpha, mask, epoch, epochs, gen):
        logits = alpha.log_softmax(dim=-1)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        probs = torch.softmax((logits + _gumbel(alpha, gen)) / self.tau(epoch, epochs), dim=-1)
        index = probs.argmax(dim=-1)
        one_hot = torch.zeros_like(probs).scatter_(-1, index[:, None], 1.0)
        return Mix(one_hot - probs.detach() + probs, index=index, mask=mask)


class Dirichlet(Mixing):
    """DrNAS: weights ~ Dirichlet(β), β = ELU(α) + 1, with pathwise (implicit) gradients.

    Regulariser of strength λ: ``kl`` adds λ Σ_edges KL(Dir(β) ‖ Dir(anchor)) to the α loss;
    ``l2`` adds (λ/2)‖α‖², which is what the reference code's Adam weight decay λ amounts to.
    """

    name = "dirichlet"
    stochastic = True

    def __init__(self, reg: str = "l2", lam: float = 1e-3, anchor: float = 1.0):
        if reg not in ("l2", "kl", "none"):
            raise NasError(f"drnas_reg: unknown {reg!r} (expected l2, kl or none)")
        self.reg, self.lam, self.anchor = reg, lam, anchor

    @staticmethod
    def concentration(alpha: torch.Tensor) -> torch.Tensor:
        return F.elu(alpha) + 1.0

    def sample(self, alpha, mask, epoch, epochs, gen):
        # Dirichlet.rsample draws from the global generator, which the loop seeds per epoch.
        w = torch.distributions.Dirichlet(self.concentration(alpha)).rsample()
        return Mix(_masked(w, mask), mask=mask)

    def expected(self, alpha, mask=None):
        beta = self.concentration(alpha)
        return _masked(beta / beta.sum(-1, keepdim=True), mask)

    def penalty(self, alpha):
        if self.reg == "none" or self.lam == 0:
            return None
        if self.reg == "l2":
            return 0.5 * self.lam * alpha.square().sum()
        q = torch.distributions.Dirichlet(self.concentration(alpha))
        p = torch.distributions.Dirichlet(torch.full_like(alpha, self.anchor))
        return self.lam * torch.distributions.kl_divergence(q, p).sum()


class UniformPath(Softmax):
    """RSPS: one uniformly sampled op per edge, α untouched (random sampling, parameter sharing)."""

    name = "uniform-path"
    stochastic = True
    hard = True

    def sample(self, alpha, mask, epoch, epochs, gen):
        probs = torch.ones_like(alpha) if mask is None else mask.to(alpha.dtype)
        index = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        one_hot = torch.zeros_like(alpha).scatter_(-1, index[:, None], 1.0)
        return Mix(one_hot, index=index, mask=mask)

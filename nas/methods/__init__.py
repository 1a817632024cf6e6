"""Search methods as small pieces plugged into the one search loop.

A method is a combination of orthogonal seams:
- ``Mixing``: how the mixing weights ``[edges, ops]`` come from α: softmax (DARTS), relaxed
  Gumbel-softmax (SNAS), hard Gumbel-max with straight-through gradients (GDAS), a Dirichlet
  sample (DrNAS), or a uniformly random path (RSPS);
- ``Perturbation``: how the weights the w step trains on are perturbed: none, random smoothing
  (SDARTS-RS) or an adversarial PGD attack (SDARTS-ADV);
- partial channels (PC-DARTS) with edge normalisation, on or off.
Selection (magnitude, PT) is a separate stage that reads a finished run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from nas.methods.perturb import AdversarialPerturbation, NoPerturbation, Perturbation, RandomSmoothing
from nas.supernet import Mix
from nas.utils import NasError, clip

__all__ = ["Mixing", "Softmax", "GumbelSoftmax", "GumbelHard", "Dirichlet", "UniformPath", "Method",
           "build_method", "METHOD_NAMES", "Perturbation"]


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



@dataclass
class Method:
    """A named combination of the seams, built from a search config by ``build_method``."""

    name: str
    mixing: Mixing
    perturbation: Perturbation = field(default_factory=NoPerturbation)
    partial_channels: int = 1
    edge_norm: bool = False
    train_alpha: bool = True
    second_order: bool = False
    a_weight_decay: float = 1e-3
    progressive: bool = False
    selection: str = "magnitude"
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mixing": self.mixing.name, "perturbation": self.perturbation.name,
                "partial_channels": self.partial_channels, "edge_norm": self.edge_norm,
                "train_alpha": self.train_alpha, "second_order": self.second_order,
                "progressive": self.progressive, **self.options}


METHOD_NAMES = ("darts", "snas", "gdas", "drnas", "sdarts-rs", "sdarts-adv", "pc-darts", "random", "rsps")

_DEFAULT_PERTURB = {"sdarts-rs": "rs", "sdarts-adv": "adv"}


def build_method(cfg: Any) -> Method:
    """The method named by ``cfg.method`` with the seams the config asks for, or a one-line error
    for a combination that makes no sense."""
    name = cfg.method
    if name not in METHOD_NAMES:
        raise NasError(f"method: unknown {clip(name, 60)} (expected one of {', '.join(METHOD_NAMES)})")
    perturb = cfg.perturb if cfg.perturb != "auto" else _DEFAULT_PERTURB.get(name, "none")
    if perturb not in ("none", "rs", "adv"):
        raise NasError(f"perturb: unknown {clip(perturb, 60)} (expected auto, none, rs or adv)")
    k = cfg.partial_channels or (4 if name == "pc-darts" else 1)
    edge_norm = cfg.edge_norm if cfg.edge_norm is not None else name == "pc-darts"

    mixing: Mixing
    if name in ("darts", "sdarts-rs", "sdarts-adv", "pc-darts", "random"):
        mixing = Softmax()
    elif name == "snas":
        mixing = GumbelSoftmax(cfg.tau_max if cfg.tau_max is not None else 10.0, cfg.tau_min)
    elif name == "gdas":
        mixing = GumbelHard(cfg.tau_max if cfg.tau_max is not None else 10.0, cfg.tau_min)
    elif name == "drnas":
        mixing = Dirichlet(cfg.drnas_reg, cfg.drnas_lambda)
    else:  # rsps
        mixing = UniformPath()

    if name in ("random", "rsps") and perturb != "none":
        raise NasError(f"method {name!r} does not combine with perturb={perturb!r} (it trains no α)")
    if name == "random" and (k > 1 or edge_norm):
        raise NasError("method 'random' trains no supernet, so partial_channels and edge_norm do not apply")
    if mixing.hard and perturb != "none":
        raise NasError(f"method {name!r} samples one-hot paths; perturb={perturb!r} needs continuous mixing weights")
    if cfg.order == 2 and (mixing.stochastic or name in ("random",)):
        raise NasError(f"method {name!r} does not combine with order=2 (second order needs deterministic softmax weights)")
    if cfg.order == 2 and perturb != "none":
        raise NasError(f"order=2 does not combine with perturb={perturb!r} (SDARTS is first order)")
    from nas.spaces import get_space

    channels = cfg.channels or get_space(cfg.space).search_defaults["channels"]
    if channels % k:
        raise NasError(f"partial_channels {k} must divide channels {channels}")
    if cfg.progressive and name != "drnas":
        raise NasError(f"progressive is the DrNAS schedule; it does not apply to method {name!r}")

    perturbation: Perturbation
    if perturb == "rs":
        perturbation = RandomSmoothing(cfg.rs_sigma, cfg.eps_start)
    elif perturb == "adv":
        perturbation = AdversarialPerturbation(cfg.adv_epsilon, cfg.eps_start, cfg.adv_steps)
    else:
        perturbation = NoPerturbation()

    a_wd = cfg.a_weight_decay if cfg.a_weight_decay is not None else (0.0 if name == "drnas" else 1e-3)
    options: dict[str, Any] = {}
    if name == "drnas":
        options.update(drnas_reg=cfg.drnas_reg, drnas_lambda=cfg.drnas_lambda)
    if cfg.progressive:
        k = cfg.progressive_k1
        options.update(progressive_k1=cfg.progressive_k1, progressive_k2=cfg.progressive_k2,
                       progressive_keep=cfg.progressive_keep)
        if channels % cfg.progressive_k1 or channels % cfg.progressive_k2:
            raise NasError(f"progressive_k1/k2 must divide channels {channels}")
    return Method(
        name=name, mixing=mixing, perturbation=perturbation, partial_channels=k, edge_norm=edge_norm,
        train_alpha=name not in ("rsps", "random"), second_order=cfg.order == 2, a_weight_decay=a_wd,
        progressive=cfg.progressive, selection="rsps" if name == "rsps" else "magnitude", options=options)

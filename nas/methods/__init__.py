"""Search methods as plug-ins of the one search loop.

Each method is one module here that declares its ``SPEC``, a ``MethodSpec`` (``nas.methods.base``):
its name, ``build(cfg, seams)`` returning its ``Method``, its defaults for the shared seams, the
strength a sweep tunes, whether it trains α, whether it has the progressive schedule and the settings
that are its own (a ``nas.settings.Settings`` subclass: types, defaults, help).  ``REGISTRY`` lists
the specs; the search config (``nas.config``) composes the shared keys with every registered
method's and plug-in's settings; ``build_method`` resolves the shared seams from the config and
refuses combinations that make no sense.  Adding a method is one module and one line in
``REGISTRY`` (or ``register(SPEC)`` from anywhere, e.g. a module of one's own).
"""

from __future__ import annotations

from typing import Any

from nas.methods import darts, drnas, gdas, naswot, pcdarts, random, rsps, sdarts_adv, sdarts_rs, snas
from nas.methods.base import Method, MethodSpec, Stage
from nas.methods.mixing import Dirichlet, GumbelHard, GumbelSoftmax, Mixing, Softmax, UniformPath
from nas.methods.perturb import (
    AdversarialPerturbation,
    AdversarialSettings,
    NoPerturbation,
    Perturbation,
    RandomSmoothing,
    RandomSmoothingSettings,
)
from nas.spaces import get_space
from nas.utils import NasError, clip

__all__ = ["Mixing", "Softmax", "GumbelSoftmax", "GumbelHard", "Dirichlet", "UniformPath", "Method", "Stage",
           "build_method", "effective_perturb", "register", "settings_models", "foreign_settings", "owners", "METHOD_NAMES", "MethodSpec", "REGISTRY", "Perturbation", "trains_alpha", "tuned_strengths"]

REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in (
    darts.SPEC, snas.SPEC, gdas.SPEC, drnas.SPEC, sdarts_rs.SPEC, sdarts_adv.SPEC, pcdarts.SPEC, random.SPEC,
    rsps.SPEC, naswot.SPEC)}
METHOD_NAMES = tuple(REGISTRY)
# settings of the plug-ins any method may switch on (the perturbations: ``perturb: rs | adv``)
PLUGIN_SETTINGS: tuple[type, ...] = (RandomSmoothingSettings, AdversarialSettings)


def register(spec: MethodSpec) -> None:
    """Add a method (its module's ``SPEC``) to the registry: from then on ``method: <name>`` builds it
    and its settings are keys of the search config (``--set``, params files, ``--list-keys``)."""
    global METHOD_NAMES
    if spec.name in REGISTRY and REGISTRY[spec.name] is not spec:
        raise NasError(f"method: {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    METHOD_NAMES = tuple(REGISTRY)


def settings_models() -> list[type]:
    """Every registered method's and plug-in's settings, each once, in registry order."""
    out: list[type] = []
    for model in [*(spec.settings for spec in REGISTRY.values()), *PLUGIN_SETTINGS]:
        if model is not None and model not in out:
            out.append(model)
    return out


def tuned_strengths() -> dict[str, tuple[str, float, float]]:
    """Method -> the regularisation strength `python -m flows.sweep` tunes: (config key, low, high)."""
    return {name: spec.tuned for name, spec in REGISTRY.items() if spec.tuned is not None}


def trains_alpha(name: str) -> bool:
    """Whether the method's architecture is read from a trained α (not by a selection of its own)."""
    return REGISTRY[name].trains_alpha


# the keys of the shared seams: every method reads them (its defaults fill in ``auto``/``null``)
SHARED_SETTINGS = ("perturb", "partial_channels", "edge_norm", "a_weight_decay")
PERTURB_SETTINGS = {"rs": tuple(RandomSmoothingSettings.model_fields), "adv": tuple(AdversarialSettings.model_fields)}
# what only a supernet search reads (a method with a search of its own ignores them)
SUPERNET_SETTINGS = ("hessian_every", "hessian_topk", "early_stop", "keep_every", "arch_warmup")


def owners(key: str) -> list[str]:
    """The methods that declare ``key`` as their own setting (empty for a setting all methods share)."""
    if key in SHARED_SETTINGS:
        return []
    if key in SUPERNET_SETTINGS:
        return [name for name, spec in REGISTRY.items() if spec.supernet]
    return [name for name, spec in REGISTRY.items() if key in spec.setting_names]


def foreign_settings(cfg: Any, keys: Any) -> list[tuple[str, list[str]]]:
    """Of ``keys`` (settings a user gave explicitly), those the config's method never reads, each
    with the methods it belongs to.  A perturbation's keys count as read wherever ``perturb``
    switches that perturbation on."""
    spec = REGISTRY.get(cfg.method)
    if spec is None:
        return []
    perturb = effective_perturb(cfg)
    read = set(spec.setting_names) | set(PERTURB_SETTINGS.get(perturb, ())) | (set(SUPERNET_SETTINGS) if spec.supernet else set())
    return [(k, owners(k)) for k in keys if owners(k) and k not in read]


def effective_perturb(cfg: Any) -> str:
    """The perturbation a search config switches on: its ``perturb``, or the method's default."""
    spec = REGISTRY.get(cfg.method)
    default = spec.defaults.get("perturb", "none") if spec else "none"
    return cfg.perturb if cfg.perturb != "auto" else default


def build_method(cfg: Any) -> Method:
    """The method named by ``cfg.method`` with the seams the config asks for, or a one-line error
    for a combination that makes no sense."""
    name = cfg.method
    if name not in REGISTRY:
        raise NasError(f"method: unknown {clip(name, 60)} (expected one of {', '.join(METHOD_NAMES)})")
    spec = REGISTRY[name]
    defaults = spec.defaults
    perturb = cfg.perturb if cfg.perturb != "auto" else defaults.get("perturb", "none")
    if perturb not in ("none", "rs", "adv"):
        raise NasError(f"perturb: unknown {clip(perturb, 60)} (expected auto, none, rs or adv)")
    k = cfg.partial_channels or defaults.get("partial_channels", 1)
    edge_norm = cfg.edge_norm if cfg.edge_norm is not None else defaults.get("edge_norm", False)
    perturbation: Perturbation
    if perturb == "rs":
        perturbation = RandomSmoothing(cfg.rs_sigma, cfg.eps_start)
    elif perturb == "adv":
        perturbation = AdversarialPerturbation(cfg.adv_epsilon, cfg.eps_start, cfg.adv_steps)
    else:
        perturbation = NoPerturbation()
    a_wd = cfg.a_weight_decay if cfg.a_weight_decay is not None else defaults.get("a_weight_decay", 1e-3)
    channels = cfg.channels or get_space(cfg.space).search_defaults["channels"]
    if cfg.progressive and not spec.progressive:
        raise NasError(f"progressive is the DrNAS schedule; it does not apply to method {name!r}")
    if cfg.progressive and (channels % cfg.progressive_k1 or channels % cfg.progressive_k2):
        raise NasError(f"progressive_k1/k2 must divide channels {channels}")
    seams = {"perturbation": perturbation, "partial_channels": k, "edge_norm": edge_norm,
             "second_order": cfg.order == 2, "a_weight_decay": a_wd,
             "stages": (Stage(cfg.epochs, cfg.arch_warmup or 0),)}
    method = spec.build(cfg, seams)

    if not method.train_alpha and perturb != "none":
        raise NasError(f"method {name!r} does not combine with perturb={perturb!r} (it trains no α)")
    if not method.trains_supernet and (k > 1 or edge_norm):
        raise NasError(f"method {name!r} trains no supernet, so partial_channels and edge_norm do not apply")
    if method.mixing.hard and perturb != "none":
        raise NasError(f"method {name!r} samples one-hot paths; perturb={perturb!r} needs continuous mixing weights")
    if cfg.order == 2 and (method.mixing.stochastic or not method.train_alpha):
        raise NasError(f"method {name!r} does not combine with order=2 (second order needs deterministic softmax weights)")
    if cfg.order == 2 and perturb != "none":
        raise NasError(f"order=2 does not combine with perturb={perturb!r} (SDARTS is first order)")
    if channels % k:
        raise NasError(f"partial_channels {k} must divide channels {channels}")
    return method

"""SNAS (Xie et al. 2019): relaxed Gumbel-softmax weights, temperature linear from 10 to 1."""

from nas.methods.base import Method, MethodSpec
from nas.methods.mixing import GumbelSettings, GumbelSoftmax


def build(cfg, seams: dict) -> Method:
    return Method(name="snas", mixing=GumbelSoftmax(cfg.tau_max if cfg.tau_max is not None else 10.0, cfg.tau_min),
                  **seams)


SPEC = MethodSpec(
    name="snas",
    build=build,
    settings=GumbelSettings,
)

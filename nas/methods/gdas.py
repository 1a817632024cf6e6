"""GDAS (Dong & Yang 2019): one Gumbel-max path per edge forward, straight-through gradients,
temperature linear from 10 to 0.1."""

from nas.methods.base import Method, MethodSpec
from nas.methods.mixing import GumbelHard, GumbelSettings


def build(cfg, seams: dict) -> Method:
    return Method(name="gdas", mixing=GumbelHard(cfg.tau_max if cfg.tau_max is not None else 10.0, cfg.tau_min),
                  **seams)


SPEC = MethodSpec(
    name="gdas",
    build=build,
    settings=GumbelSettings,
)

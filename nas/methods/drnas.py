"""DrNAS (Chen et al. 2021): mixing weights sampled from Dirichlet(ELU(α) + 1), an L2 (or KL)
regulariser on α, and optionally the progressive schedule: a first stage on C/k1 partial channels,
then each edge pruned to its ``progressive_keep`` strongest ops and C/k2 channels for the second
stage; each stage starts with 20% of its epochs of w-only warm-up unless ``arch_warmup`` is set."""

from nas.methods.base import Method, MethodSpec, Stage
from nas.methods.mixing import Dirichlet
from nas.utils import NasError


def build(cfg, seams: dict) -> Method:
    options = {"drnas_reg": cfg.drnas_reg, "drnas_lambda": cfg.drnas_lambda}
    if cfg.progressive:
        first, second = cfg.epochs // 2, cfg.epochs - cfg.epochs // 2
        if first < 1:
            raise NasError("progressive search needs epochs >= 2 (two stages)")
        warmup = cfg.arch_warmup if cfg.arch_warmup is not None else int(0.2 * first)
        seams = {**seams, "partial_channels": cfg.progressive_k1,
                 "stages": (Stage(first, warmup), Stage(second, warmup, cfg.progressive_k2, cfg.progressive_keep))}
        options.update(progressive_k1=cfg.progressive_k1, progressive_k2=cfg.progressive_k2,
                       progressive_keep=cfg.progressive_keep)
    return Method(name="drnas", mixing=Dirichlet(cfg.drnas_reg, cfg.drnas_lambda), progressive=cfg.progressive,
                  options=options, **seams)


SPEC = MethodSpec(
    name="drnas",
    build=build,
    defaults={"a_weight_decay": 0.0},
    tuned=("drnas_lambda", 1e-4, 1e-1),
    progressive=True,
    settings=("drnas_reg", "drnas_lambda", "progressive", "progressive_k1", "progressive_k2", "progressive_keep"),
)

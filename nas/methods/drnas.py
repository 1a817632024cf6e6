"""DrNAS (Chen et al. 2021): mixing weights sampled from Dirichlet(ELU(α) + 1), an L2 (or KL)
regulariser on α, and optionally the progressive schedule: a first stage on C/k1 partial channels,
then each edge pruned to its ``progressive_keep`` strongest ops (3 as in the paper, or all an edge
has where it has fewer) and C/k2 channels for the second stage; each stage starts with 20% of its
epochs of w-only warm-up unless ``arch_warmup`` is set."""

from typing import Any, Literal

from pydantic import Field

from nas.methods.base import Method, MethodSpec, Stage
from nas.methods.mixing import Dirichlet
from nas.settings import Settings
from nas.spaces import get_space
from nas.utils import NasError


class DrNASSettings(Settings):
    """DrNAS's regulariser on α and its progressive schedule."""

    drnas_reg: Literal["l2", "kl", "none"] = Field("l2", description="l2 | kl | none")
    drnas_lambda: float = Field(1e-3, ge=0.0, le=1e6, description="strength of the DrNAS regulariser")
    progressive: bool = Field(False, description="DrNAS progressive: two stages, K k1 -> k2, ops pruned to `keep`")
    progressive_k1: int = Field(4, ge=1, le=4096, description="DrNAS progressive: partial-channel K of the first stage")
    progressive_k2: int = Field(2, ge=1, le=4096, description="... and of the second stage")
    progressive_keep: int | None = Field(None, ge=1, le=5, description="ops kept per edge between the stages "
                                         "(auto: 3, or all of an edge's ops where it has fewer, as S1, S2 and S4)")

    @classmethod
    def resolved(cls, cfg: Any, space: Any) -> dict[str, Any]:
        """Auto ``progressive_keep``: the paper's 3, or every op of an edge where an edge has fewer
        (S1, S2, S4); 3 when the schedule is off, as configs saved before the key was auto hold."""
        if cfg.progressive_keep is not None:
            return {}
        fewest = min(len(ops) for ops in space.edge_ops)
        return {"progressive_keep": min(3, fewest) if cfg.progressive else 3}


def build(cfg, seams: dict) -> Method:
    options = {"drnas_reg": cfg.drnas_reg, "drnas_lambda": cfg.drnas_lambda}
    if cfg.progressive:
        first, second = cfg.epochs // 2, cfg.epochs - cfg.epochs // 2
        if first < 1:
            raise NasError("progressive search needs epochs >= 2 (two stages)")
        warmup = cfg.arch_warmup if cfg.arch_warmup is not None else int(0.2 * first)
        keep = cfg.progressive_keep or DrNASSettings.resolved(cfg, get_space(cfg.space))["progressive_keep"]
        seams = {**seams, "partial_channels": cfg.progressive_k1,
                 "stages": (Stage(first, warmup), Stage(second, warmup, cfg.progressive_k2, keep))}
        options.update(progressive_k1=cfg.progressive_k1, progressive_k2=cfg.progressive_k2, progressive_keep=keep)
    return Method(name="drnas", mixing=Dirichlet(cfg.drnas_reg, cfg.drnas_lambda), progressive=cfg.progressive,
                  options=options, **seams)


SPEC = MethodSpec(
    name="drnas",
    build=build,
    defaults={"a_weight_decay": 0.0},
    tuned=("drnas_lambda", 1e-4, 1e-1),
    progressive=True,
    settings=DrNASSettings,
)

"""PC-DARTS (Xu et al. 2020): DARTS on C/4 partial channels with edge normalisation (the
defaults of ``partial_channels`` and ``edge_norm`` for this method)."""

from nas.methods.base import Method, MethodSpec
from nas.methods.mixing import Softmax


def build(cfg, seams: dict) -> Method:
    return Method(name="pc-darts", mixing=Softmax(), **seams)


SPEC = MethodSpec(
    name="pc-darts",
    build=build,
    defaults={"partial_channels": 4, "edge_norm": True},
)

"""DARTS (Liu et al. 2019): softmax over α, first or second order (``order``)."""

from nas.methods.base import Method, MethodSpec
from nas.methods.mixing import Softmax


def build(cfg, seams: dict) -> Method:
    return Method(name="darts", mixing=Softmax(), **seams)


SPEC = MethodSpec(
    name="darts",
    build=build,
)

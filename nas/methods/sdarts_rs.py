"""SDARTS-RS (Chen & Hsieh 2020): DARTS whose w step trains on randomly perturbed mixing
weights (uniform noise of amplitude ``rs_sigma``, see ``nas.methods.perturb``)."""

from nas.methods.base import Method, MethodSpec
from nas.methods.mixing import Softmax
from nas.methods.perturb import RandomSmoothingSettings


def build(cfg, seams: dict) -> Method:
    return Method(name="sdarts-rs", mixing=Softmax(), **seams)


SPEC = MethodSpec(
    name="sdarts-rs",
    build=build,
    defaults={"perturb": "rs"},
    tuned=("rs_sigma", 0.03, 1.0),
    settings=RandomSmoothingSettings,
)

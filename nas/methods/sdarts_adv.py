"""SDARTS-ADV (Chen & Hsieh 2020): DARTS whose w step trains on adversarially perturbed mixing
weights (a PGD attack of radius ``adv_epsilon``, see ``nas.methods.perturb``)."""

from nas.methods.base import Method, MethodSpec
from nas.methods.mixing import Softmax
from nas.methods.perturb import AdversarialSettings


def build(cfg, seams: dict) -> Method:
    return Method(name="sdarts-adv", mixing=Softmax(), **seams)


SPEC = MethodSpec(
    name="sdarts-adv",
    build=build,
    defaults={"perturb": "adv"},
    tuned=("adv_epsilon", 0.03, 1.0),
    settings=AdversarialSettings,
)

"""SDARTS-ADV (Chen & Hsieh 2020): DARTS whose w step trains on adversarially perturbed mixing
weights (a PGD attack of radius ``adv_epsilon``, see ``nas.methods.perturb``)."""

from nas.methods.base import Method
from nas.methods.mixing import Softmax

DEFAULTS = {"perturb": "adv"}
TUNED = ("adv_epsilon", 0.03, 1.0)  # the strength `python -m flows.sweep` tunes: (key, low, high), sampled log-uniformly


def build(cfg, seams: dict) -> Method:
    return Method(name="sdarts-adv", mixing=Softmax(), **seams)

"""SDARTS-RS (Chen & Hsieh 2020): DARTS whose w step trains on randomly perturbed mixing
weights (uniform noise of amplitude ``rs_sigma``, see ``nas.methods.perturb``)."""

from nas.methods.base import Method
from nas.methods.mixing import Softmax

DEFAULTS = {"perturb": "rs"}
TUNED = ("rs_sigma", 0.03, 1.0)  # the strength `python -m flows.sweep` tunes: (key, low, high), sampled log-uniformly


def build(cfg, seams: dict) -> Method:
    return Method(name="sdarts-rs", mixing=Softmax(), **seams)

"""NASWOT (Mellor et al. 2021), a training-free baseline: ``naswot_samples`` uniformly sampled
cells, each scored untrained by how distinct the ReLU codes of one batch of ``naswot_batch``
images are (``nas.baselines.naswot_score``); the highest score is kept.  It takes seconds."""

from nas.baselines import naswot_search
from nas.methods.base import Method, MethodSpec
from nas.methods.mixing import Softmax

TRAINS_ALPHA = False  # its architecture is chosen by its own selection, not read from α


def build(cfg, seams: dict) -> Method:
    return Method(name="naswot", mixing=Softmax(), train_alpha=TRAINS_ALPHA, selection="naswot", run=naswot_search,
                  **seams)


SPEC = MethodSpec(
    name="naswot",
    build=build,
    trains_alpha=TRAINS_ALPHA,
    settings=("naswot_samples", "naswot_batch"),
    supernet=False,
)

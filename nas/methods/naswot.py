"""NASWOT (Mellor et al. 2021), a training-free baseline: ``naswot_samples`` uniformly sampled
cells, each scored untrained by how distinct the ReLU codes of one batch of ``naswot_batch``
images are (``nas.baselines.naswot_score``); the highest score is kept.  It takes seconds."""

from pydantic import Field

from nas.baselines import naswot_search
from nas.methods.base import Method, MethodSpec
from nas.methods.mixing import Softmax
from nas.settings import Settings

TRAINS_ALPHA = False  # its architecture is chosen by its own selection, not read from α


class NASWOTSettings(Settings):
    """NASWOT: how many architectures are scored, on how large a batch."""

    naswot_samples: int = Field(10, ge=1, le=10**6,
                                description="naswot: sampled architectures, the best by training-free score is kept")
    naswot_batch: int = Field(128, ge=2, le=4096, description="naswot: images of the batch the score is taken on")


def build(cfg, seams: dict) -> Method:
    return Method(name="naswot", mixing=Softmax(), train_alpha=TRAINS_ALPHA, selection="naswot", run=naswot_search,
                  **seams)


SPEC = MethodSpec(
    name="naswot",
    build=build,
    trains_alpha=TRAINS_ALPHA,
    settings=NASWOTSettings,
    supernet=False,
)

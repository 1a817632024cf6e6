"""The random-search baseline: no supernet; ``random_samples`` uniformly sampled cells, each
trained from scratch for ``random_epochs`` on the w split, the best on the α split kept
(``nas.baselines``)."""

from pydantic import Field

from nas.baselines import random_search
from nas.methods.base import Method, MethodSpec
from nas.methods.mixing import Softmax
from nas.settings import Settings

TRAINS_ALPHA = False  # its architecture is chosen by its own selection, not read from α


class RandomSettings(Settings):
    """The random baseline: how many architectures, trained how long."""

    random_samples: int = Field(10, ge=1, le=10**5, description="random baseline: architectures trained from scratch")
    random_epochs: int = Field(5, ge=1, le=100_000, description="epochs per random architecture")


def build(cfg, seams: dict) -> Method:
    return Method(name="random", mixing=Softmax(), train_alpha=TRAINS_ALPHA, selection="random", run=random_search,
                  **seams)


SPEC = MethodSpec(
    name="random",
    build=build,
    trains_alpha=TRAINS_ALPHA,
    settings=RandomSettings,
    supernet=False,
)

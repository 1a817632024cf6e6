"""The random-search baseline: no supernet; ``random_samples`` uniformly sampled cells, each
trained from scratch for ``random_epochs`` on the w split, the best on the α split kept
(``nas.baselines``)."""

from nas.baselines import random_search
from nas.methods.base import Method, MethodSpec
from nas.methods.mixing import Softmax

TRAINS_ALPHA = False  # its architecture is chosen by its own selection, not read from α


def build(cfg, seams: dict) -> Method:
    return Method(name="random", mixing=Softmax(), train_alpha=TRAINS_ALPHA, selection="random", run=random_search,
                  **seams)


SPEC = MethodSpec(
    name="random",
    build=build,
    trains_alpha=TRAINS_ALPHA,
    settings=("random_samples", "random_epochs"),
    supernet=False,
)

"""Every named random stream of the project, in one place.

Each stream is seeded from the run's seed and its id (plus an epoch or a candidate number where
one applies) through ``nas.utils.generator_for``, so that a resumed run draws exactly what an
uninterrupted one would, and two streams never share draws.  Ids are part of the results: changing
one changes every run that uses it.
"""

from __future__ import annotations

from nas.utils import NasError

STREAMS: dict[str, int] = {
    # per search epoch: generator_for(seed, epoch, id)
    "epoch-w-batches": 1,         # order and augmentation of the w split's batches
    "epoch-a-batches": 2,         # ... of the α split's
    "epoch-mixing": 3,            # Gumbel / uniform-path samples, perturbation noise
    "epoch-global": 4,            # torch's global generator (Dirichlet samples, dropout-like ops)
    "retrain-batches": 11,        # per retrain epoch: generator_for(seed, epoch, id)
    "retrain-subset": 13,         # the retrain's class-balanced subset
    "subset": 101,                # the search's class-balanced subset
    "split": 202,                 # the w / α split of the search data
    "alpha-init": 303,            # α and β initialisation
    "widen": 404,                 # channels copied when progressive stages widen the ops
    "rsps-candidates": 505,       # RSPS's sampled cells
    "rsps-batches": 506,          # ... and the batches that score them
    "random-candidates": 606,     # the random baseline's sampled cells
    "random-batches": 607,        # ... and their training batches
    "hessian-batches": 707,       # the fixed batches of the Hessian eigenvalue
    "naswot-candidates": 750,     # NASWOT's sampled cells
    "naswot-batch": 751,          # ... and the batch that scores them
    "pt-order": 808,              # the order in which PT decides the edges
    "verify-batches": 850,        # the training batches of verified selection's candidates
    "landscape-directions": 909,  # the two random directions of the loss landscape around α
}


def rng_stream(name: str) -> int:
    """The id of the named stream."""
    if name not in STREAMS:
        raise NasError(f"random stream: unknown {name!r} (known: {', '.join(STREAMS)})")
    return STREAMS[name]

"""Searches run under torchrun by tests/test_parallel.py: several searches in one process group.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dp_searches.py OUT CACHE

In one process group (one launch: each costs two fresh processes): GDAS, SNAS, DrNAS and SDARTS-RS,
twice each, with ``dist_check`` (every rank's α gathered and compared after every step); an epoch
with and without ``bn_sync``; a search whose rank 1 asks for another seed (OUT/mismatch); and the
one-process search in OUT/single continued by both ranks.  Each rank writes one JSON line per
outcome to OUT/rank-R.jsonl (printing would interleave the ranks' lines).
"""

from __future__ import annotations

import json
import os
import sys

from nas.config import build_config
from nas.search import Search
from nas.utils import NasError

METHODS = ("gdas", "snas", "drnas", "sdarts-rs")


def base(cache: str) -> dict:
    return dict(dataset="digits", epochs=2, channels=4, cells=1, batch_size=32, steps_per_epoch=3, device="cpu",
                progress=False, seed=5, dist_check=True, cache_dir=cache)


def main() -> None:
    out, cache = sys.argv[1:3]
    rank = int(os.environ["RANK"])

    def say(obj: dict) -> None:
        with open(os.path.join(out, f"rank-{rank}.jsonl"), "a") as f:
            f.write(json.dumps(obj) + "\n")

    for method in METHODS:
        for rep in (1, 2):
            cfg = build_config("search", overrides={**base(cache), "method": method, "out": f"{out}/{method}-{rep}"})
            res = Search(cfg).run()
            say({"rank": rank, "run": f"{method}-{rep}", "genotype": res["genotype"]})
    for sync in (False, True):  # each rank's batch-norm running statistics, averaged or not
        s = Search(build_config("search", overrides={**base(cache), "bn_sync": sync, "out": f"{out}/bn-{sync}"}))
        bundle, w_stream, a_stream = s.streams()
        st = s.build_state(bundle)
        s.run_epoch(st, w_stream, a_stream, 3)
        means = [b.tolist() for n, b in st.model.named_buffers() if n.endswith("running_mean")]
        say({"rank": rank, "run": f"bn-{sync}", "running_mean": means})
    for run, over, resume in (("mismatch", {"seed": 5 + rank}, False), ("single", {}, True)):
        try:
            Search(build_config("search", overrides={**base(cache), "out": f"{out}/{run}", **over})).run(resume=resume)
            say({"rank": rank, "run": run, "error": None})
        except NasError as exc:
            say({"rank": rank, "run": run, "error": str(exc)})


if __name__ == "__main__":
    main()

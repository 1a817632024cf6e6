"""Searches run under torchrun by tests/test_parallel.py: several searches in one process group.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dp_searches.py MODE OUT CACHE

MODE ``methods``: GDAS, SNAS, DrNAS and SDARTS-RS, twice each, with ``dist_check`` (every rank's α
gathered and compared after every step).  MODE ``mismatch``: rank 1 asks for another seed.  MODE
``resume``: continue the one-process search in OUT/single.  Each rank writes one JSON line per
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
    mode, out, cache = sys.argv[1:4]
    rank = int(os.environ["RANK"])

    def say(obj: dict) -> None:
        with open(os.path.join(out, f"rank-{rank}.jsonl"), "a") as f:
            f.write(json.dumps(obj) + "\n")

    if mode == "methods":
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
        return
    over = {**base(cache), "out": f"{out}/single"}
    if mode == "mismatch":
        over["seed"] = 5 + rank
    try:
        Search(build_config("search", overrides=over)).run(resume=mode == "resume")
        say({"rank": rank, "error": None})
    except NasError as exc:
        say({"rank": rank, "error": str(exc)})


if __name__ == "__main__":
    main()

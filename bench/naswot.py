"""NASWOT, the training-free baseline, over many runs: the NAS-Bench-201 test accuracy of the cell
it picks from N sampled cells, for each N, mean ± std over runs 1..R (run r = seed r: its own
class-balanced subset, batch and sampled cells).  N = 1 is the random cell, for reference.

Every run goes through the product's own path (``nas search --method naswot``) on a protocol's
search data and network; ``--set`` changes keys (e.g. ``channels=16 cells=5 resolution=32`` for
the benchmark network at full resolution).

    python bench/naswot.py --protocol params/cpu-proxy.yaml --data ../shared/data/cifar10-jpeg.tar.gz \\
        --runs 100 --samples 1,10,100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

DATASETS = ("cifar10", "cifar100", "imagenet16-120")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--protocol", default="params/cpu-proxy.yaml")
    p.add_argument("--data", default=None)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--samples", default="1,10,100", help="comma-separated N")
    p.add_argument("--set", dest="sets", action="append", default=[], help="search key=value")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from nas.benchmarks import load_table
    from nas.config import build_config, parse_set
    from nas.search import search

    if args.threads:
        torch.set_num_threads(args.threads)
    table = load_table()
    sets = dict(parse_set(s) for s in args.sets)
    print(f"protocol {args.protocol}, runs 1..{args.runs}, torch threads {torch.get_num_threads()}"
          + (f", set {' '.join(args.sets)}" if args.sets else ""))
    print(f"{'N':>5} {'runs':>5} | " + " | ".join(f"{d:>16}" for d in DATASETS) + " | s per run | distinct cells")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(v) for v in args.samples.split(",")):
            accs: dict[str, list[float]] = {d: [] for d in DATASETS}
            cells, seconds = set(), []
            for r in range(1, args.runs + 1):
                over = {**sets, "method": "naswot", "seed": r, "naswot_samples": n, "out": f"{tmp}/n{n}-r{r}",
                        "progress": False, **({"data": args.data} if args.data else {})}
                t0 = time.perf_counter()
                res = search(build_config("search", args.protocol, over))
                seconds.append(time.perf_counter() - t0)
                cells.add(res["genotype"])
                for d in DATASETS:
                    accs[d].append(table.accuracy(res["genotype"], d))
            cols = [f"{statistics.fmean(v):6.2f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:5.2f}"
                    for v in accs.values()]
            print(f"{n:>5} {args.runs:>5} | " + " | ".join(f"{c:>16}" for c in cols)
                  + f" | {statistics.median(seconds):9.2f} | {len(cells):>5}", flush=True)
    oracle = " | ".join(f"{table.oracle(d)[1]:>16.2f}" for d in DATASETS)
    print(f"{'best':>5} {'-':>5} | {oracle} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main())

"""One search over several processes: step time and throughput for 1, 2, ... ranks, side by side.

    python bench/data_parallel.py --data PATH/cifar10.tar.gz                 # CPU: 1 and 2 ranks (gloo)
    python bench/data_parallel.py --data PATH --device cuda --ranks 1,8      # a GPU machine: 1 and all 8 cards

Each row runs the real search loop (``Search.run_epoch``, first-order DARTS) under torchrun with
the given number of ranks, the global batch fixed (64 images of the w split and 64 of the α split
per step, cut between the ranks), and reports the median milliseconds per step over timed chunks
after warm-up, the w-split images per second, and the speed-up over one rank.  On a CPU the cores
are shared: every row uses all of them (threads per rank = cores / ranks), so the rows compare
ways of spending the same machine.  On GPUs each rank has its own card (NCCL).

Configurations: ``proxy`` (params/cpu-proxy-c16.yaml: C=16, one cell per stage, 16x16) and
``reference`` (the NAS-Bench-201 search: C=16, N=5, 32x32).  Without ``--data`` the embedded
digits stand in (one channel, upsampled), which times the same network on other pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "proxy": ["resolution=16", "cells=1"],
    "reference": ["resolution=32", "cells=5"],
}


def worker(args: argparse.Namespace) -> None:
    """One rank: build the search, warm up, then time ``--steps`` steps in ``--repeats`` chunks."""
    import torch

    from nas.config import build_config
    from nas.search import Search

    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world) if args.device == "cpu" else 1)
    sets = ["channels=16", "batch_size=64", "epochs=1", "progress=false", "method=darts", *CONFIGS[args.config]]
    if not args.data:
        sets += ["dataset=digits"]
    # the ranks' configs must agree, "out" included (nothing is written there: the loop runs bare)
    cfg = build_config("search", REPO / "params" / "cpu-proxy-c16.yaml",
                       {"data": args.data, "device": args.device, "out": str(Path(args.cache) / "unused-run"),
                        "cache_dir": args.cache}, sets)
    s = Search(cfg)
    bundle, w_stream, a_stream = s.streams()
    st = s.build_state(bundle)
    s.run_epoch(st, w_stream, a_stream, 2)  # warm-up
    times = []
    for _ in range(args.repeats):
        if world > 1:
            torch.distributed.barrier()
        t0 = time.perf_counter()
        s.run_epoch(st, w_stream, a_stream, args.steps)  # ends on a sync (the epoch's sums)
        times.append((time.perf_counter() - t0) / args.steps)
    if s.shards.main:
        print(json.dumps({"ms_per_step": 1000 * statistics.median(times), "batch": cfg.batch_size,
                          "threads": torch.get_num_threads()}), flush=True)


def measure(args: argparse.Namespace, config: str, ranks: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", __file__,
           "--worker", "--config", config, "--device", args.device, "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--cache", args.cache, *(["--data", args.data] if args.data else [])]
    env = {**os.environ, "NAS_MLFLOW": "0", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"bench/data_parallel.py: {config} with {ranks} ranks failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="proxy,reference", help="comma-separated: proxy, reference")
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts (GPUs: up to the cards)")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one card per rank)")
    p.add_argument("--data", help="CIFAR-10 archive or folder (default: the embedded digits)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed chunk")
    p.add_argument("--repeats", type=int, default=3, help="timed chunks (median)")
    p.add_argument("--cache", default=None, help="where decoded data are kept (default: a temporary folder)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    args.cache = args.cache or tempfile.mkdtemp(prefix="nas-bench-dist-")
    import torch

    print(f"device {args.device}, torch {torch.__version__}, {os.cpu_count()} cores; global batch 64 (w) + 64 (α), "
          f"first-order DARTS, data {'CIFAR-10' if args.data else 'digits'}")
    print(f"{'config':<10}{'ranks':>6}{'threads/rank':>14}{'ms/step':>10}{'w images/s':>12}{'x 1 rank':>10}")
    for config in args.configs.split(","):
        base = None
        for ranks in [int(r) for r in args.ranks.split(",")]:
            r = measure(args, config, ranks)
            base = base or r["ms_per_step"]
            print(f"{config:<10}{ranks:>6}{r['threads']:>14}{r['ms_per_step']:>10.1f}"
                  f"{1000 * r['batch'] / r['ms_per_step']:>12.1f}{base / r['ms_per_step']:>10.2f}", flush=True)


if __name__ == "__main__":
    main()

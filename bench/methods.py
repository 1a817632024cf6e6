"""Per-method cost of a search step, side by side in one run.

For each method (each in its own subprocess, so that peak memory is its own) this times search
steps of the real loop (one α step and one w step each, or what the method does instead) and
reports, relative to first-order DARTS:
- milliseconds per step (median over timed chunks after warm-up) and the implied seconds/epoch;
- peak resident memory growth during the steps (Linux VmHWM, reset after the data are loaded);
- bytes of activations saved for backward in one w step (deterministic).

    python bench/methods.py                                  # digits, tiny supernet
    python bench/methods.py --config params/cpu-proxy.yaml --data PATH/cifar-10-python.tar.gz
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import reset_peak_rss, vm  # noqa: E402

VARIANTS = [
    ("darts-1st", ["method=darts"]),
    ("darts-2nd", ["method=darts", "order=2"]),
    ("snas", ["method=snas"]),
    ("gdas", ["method=gdas"]),
    ("drnas", ["method=drnas"]),
    ("sdarts-rs", ["method=sdarts-rs"]),
    ("sdarts-adv", ["method=sdarts-adv"]),
    ("pc-darts", ["method=pc-darts"]),
    ("rsps", ["method=rsps"]),
]




def measure(args: argparse.Namespace, sets: list[str]) -> dict:
    import torch
    import torch.nn.functional as F

    from nas.config import build_config
    from nas.search import Search

    cfg = build_config("search", args.config, {"data": args.data, "dataset": args.dataset, "device": args.device,
                                               "out": "/tmp/nas-bench-methods", "progress": False},
                       [*args.set, *sets])
    s = Search(cfg)
    bundle, w_stream, a_stream = s._data()
    st = s._state(bundle)
    steps_full = len(w_stream)
    rss0 = reset_peak_rss()  # from here on: activations, gradients, optimiser state
    s._epoch(st, w_stream, a_stream, args.warmup, None)  # warm-up
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        st.epoch = r + 1
        s._epoch(st, w_stream, a_stream, args.steps, None)
        times.append((time.perf_counter() - t0) / args.steps)
    peak = (vm("VmHWM") - rss0) if rss0 is not None else float("nan")
    # saved activations of one w step
    x, y = next(iter(w_stream.epoch(None)))
    from nas.train import saved_tensor_bytes

    total = saved_tensor_bytes(lambda: F.cross_entropy(st.model(x, s.mix(st, 0, None).detach()), y).backward())
    ms = 1000 * statistics.median(times)
    return {"ms_per_step": ms, "s_per_epoch": ms * steps_full / 1000, "steps_per_epoch": steps_full,
            "peak_rss_mb": peak / 2**20, "activations_mb": total / 2**20, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    p.add_argument("--data")
    p.add_argument("--dataset")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--only", help="comma-separated variant names")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args, dict(VARIANTS)[args.one])))
        return
    names = args.only.split(",") if args.only else [n for n, _ in VARIANTS]
    rows = {}
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--repeats", str(args.repeats),
               "--warmup", str(args.warmup), "--device", args.device]
        for flag in ("config", "data", "dataset"):
            if getattr(args, flag):
                cmd += [f"--{flag}", getattr(args, flag)]
        for item in args.set:
            cmd += ["--set", item]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"measured {name}", file=sys.stderr)
    base = rows.get("darts-1st")
    print(f"{'method':<12} {'ms/step':>9} {'s/epoch':>9} {'x darts':>8} {'peak MB':>9} {'x darts':>8} "
          f"{'activ. MB':>10} {'x darts':>8}")
    for name, r in rows.items():
        rel_t = r["ms_per_step"] / base["ms_per_step"] if base else float("nan")
        rel_m = r["peak_rss_mb"] / base["peak_rss_mb"] if base and base["peak_rss_mb"] > 0 else float("nan")
        rel_a = r["activations_mb"] / base["activations_mb"] if base else float("nan")
        print(f"{name:<12} {r['ms_per_step']:>9.1f} {r['s_per_epoch']:>9.2f} {rel_t:>8.2f} {r['peak_rss_mb']:>9.1f} "
              f"{rel_m:>8.2f} {r['activations_mb']:>10.2f} {rel_a:>8.2f}")
    if rows:
        r0 = next(iter(rows.values()))
        print(f"(torch threads {r0['threads']}, {r0['steps_per_epoch']} steps per epoch)")


if __name__ == "__main__":
    main()

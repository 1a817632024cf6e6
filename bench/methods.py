"""Per-method cost of a search step, side by side in one run.

For each method (each in its own subprocess, so that peak memory is its own) this times search
steps of the real loop (one α step and one w step each, or what the method does instead) and
reports, relative to first-order DARTS:
- milliseconds per step (median over timed chunks after warm-up) and the implied seconds/epoch;
- peak resident memory growth during the steps (Linux VmHWM, reset after the data are loaded);
- bytes of activations saved for backward in one w step (deterministic).

Each method runs once per precision/compile setting (``--settings``, default fp32,bf16,fp16; add
``fp32+compile`` or ``bf16+compile`` for torch.compile, whose first compilation takes minutes per
method on a small CPU and is timed separately), and each row is also given relative to the same
method in fp32.

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
    bundle, w_stream, a_stream = s.streams()
    st = s.build_state(bundle)
    steps_full = len(w_stream)
    t0 = time.perf_counter()
    if cfg.compile:  # compile outside the measured memory (the compiler's own memory is not the step's)
        s.run_epoch(st, w_stream, a_stream, args.warmup, None)
    warmup_s = time.perf_counter() - t0
    rss0 = reset_peak_rss()  # from here on: activations, gradients, optimiser state
    s.run_epoch(st, w_stream, a_stream, args.warmup, None)  # warm-up
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        st.epoch = r + 1
        s.run_epoch(st, w_stream, a_stream, args.steps, None)
        times.append((time.perf_counter() - t0) / args.steps)
    peak = (vm("VmHWM") - rss0) if rss0 is not None else float("nan")
    # saved activations of one w step
    x, y = next(iter(w_stream.epoch(None)))
    from nas.loops import saved_tensor_bytes

    total = saved_tensor_bytes(lambda: F.cross_entropy(st.forward(x, s.mix(st, 0, None).detach()), y).backward())
    ms = 1000 * statistics.median(times)
    return {"ms_per_step": ms, "s_per_epoch": ms * steps_full / 1000, "steps_per_epoch": steps_full,
            "compile_s": warmup_s,
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
    p.add_argument("--settings", default="fp32,bf16,fp16",
                   help="precision[+compile] settings, comma-separated (fp32, bf16, fp16, fp32+compile, ...)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        name, setting = args.one.split(":")
        prec = setting.split("+")[0]
        print(json.dumps(measure(args, [*dict(VARIANTS)[name], f"precision={prec}",
                                        f"compile={'true' if 'compile' in setting else 'false'}"])))
        return
    names = args.only.split(",") if args.only else [n for n, _ in VARIANTS]
    settings = args.settings.split(",")
    rows = {}
    for name, setting in [(n, s) for n in names for s in settings]:
        cmd = [sys.executable, __file__, "--one", f"{name}:{setting}", "--steps", str(args.steps),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--device", args.device]
        for flag in ("config", "data", "dataset"):
            if getattr(args, flag):
                cmd += [f"--{flag}", getattr(args, flag)]
        for item in args.set:
            cmd += ["--set", item]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if out.returncode != 0:
            print(f"{name} {setting}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows[(name, setting)] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"measured {name} {setting}", file=sys.stderr)
    base = rows.get(("darts-1st", "fp32"))
    print(f"{'method':<12} {'setting':<13} {'ms/step':>9} {'s/epoch':>9} {'x darts':>8} {'x fp32':>7} {'peak MB':>9} "
          f"{'x darts':>8} {'activ. MB':>10} {'x darts':>8} {'compile s':>10}")
    for (name, setting), r in rows.items():
        own = rows.get((name, "fp32"))
        rel_t = r["ms_per_step"] / base["ms_per_step"] if base else float("nan")
        rel_p = r["ms_per_step"] / own["ms_per_step"] if own else float("nan")
        rel_m = r["peak_rss_mb"] / base["peak_rss_mb"] if base and base["peak_rss_mb"] > 0 else float("nan")
        rel_a = r["activations_mb"] / base["activations_mb"] if base else float("nan")
        comp = f"{r['compile_s']:>10.1f}" if "compile" in setting else f"{'-':>10}"
        print(f"{name:<12} {setting:<13} {r['ms_per_step']:>9.1f} {r['s_per_epoch']:>9.2f} {rel_t:>8.2f} {rel_p:>7.2f} "
              f"{r['peak_rss_mb']:>9.1f} {rel_m:>8.2f} {r['activations_mb']:>10.2f} {rel_a:>8.2f}{comp}")
    if rows:
        r0 = next(iter(rows.values()))
        print(f"(torch threads {r0['threads']}, {r0['steps_per_epoch']} steps per epoch)")


if __name__ == "__main__":
    main()

"""The NB201 DARTS search step against the NAS-Bench-201 authors' implementation (xautodl),
measured side by side in one run, plus the supernet/discrete ratio and the distance to the
machine's convolution FLOP rate.

Needs ``pip install xautodl --no-deps`` (its TinyNetworkDarts is the reference supernet).

    python bench/supernet.py                      # CPU, reference and proxy configs
    python bench/supernet.py --device cuda        # the same table on a GPU

The project runs in channels-last format, as its search does by default
(``NAS_BENCH_CHANNELS_LAST=0`` measures the contiguous format instead).

A step is one first-order α step (Adam on L_val) plus one w step (SGD on L_train), with the
reference NB201 optimisers, on random CIFAR-shaped data.  The project's step runs through
``nas.precision.Runner`` as the search does, once per setting: fp32, bf16 and fp16 autocast, and
``torch.compile`` in fp32 and bf16 (``--settings`` picks them; compiled settings are timed after
their compilation, which the first run on a machine pays once and the inductor cache keeps).  Times are medians over interleaved
repeats (project, xautodl, project, ...) after warm-up.  Peak memory is measured per
(implementation, setting) in fresh processes, the median of ``--memory-repeats`` (3) of them (CPU:
growth of peak RSS; CUDA: max allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import reset_peak_rss, vm  # noqa: E402

CHANNELS_LAST = os.environ.get("NAS_BENCH_CHANNELS_LAST", "1") == "1"
CONFIGS = {
    "reference": dict(C=16, N=5, batch=64, size=32),
    "cpu-proxy": dict(C=8, N=1, batch=64, size=16),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


SETTINGS = ("fp32", "bf16", "fp16", "fp32+compile", "bf16+compile", "fp32+cudagraphs", "bf16+cudagraphs")
# "+cudagraphs": torch.compile's "reduce-overhead" mode, which replays the step's kernels as CUDA
# graphs (the benchmark's shapes are static); on a CPU it is plain compilation


def build(impl: str, cfg: dict, device: str, setting: str = "fp32"):
    """(step function, network) for one implementation (the project's in one precision/compile setting)."""
    torch.manual_seed(0)
    x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"], device=device)
    y = torch.randint(0, 10, (cfg["batch"],), device=device)
    xa = torch.randn_like(x)
    ya = torch.randint(0, 10, (cfg["batch"],), device=device)
    if impl == "xautodl":
        from xautodl.models.cell_operations import SearchSpaceNames
        from xautodl.models.cell_searchs.search_model_darts import TinyNetworkDarts

        net = TinyNetworkDarts(cfg["C"], cfg["N"], 4, 10, SearchSpaceNames["nas-bench-201"], False, False).to(device)
        w_params, a_params = net.get_weights(), net.get_alphas()

        def fwd(inp):
            return net(inp)[1]
    elif impl == "discrete":
        from nas.spaces import nb201

        geno = nb201.parse_genotype("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|")
        net = nb201.build_network(geno, cfg["C"], cfg["N"], 10).to(device)
        w_params, a_params = list(net.parameters()), []
    else:
        from nas.spaces import NB201 as nb201_space
        from nas.supernet import Supernet

        net = Supernet(nb201_space, cfg["C"], cfg["N"], 10, 3).to(device)
        alpha = torch.nn.Parameter(1e-3 * torch.randn(6, 5, device=device))
        w_params, a_params = list(net.parameters()), [alpha]
    if impl != "xautodl" and CHANNELS_LAST:  # the project's search and retrain default
        net.to(memory_format=torch.channels_last)
        x, xa = (t.contiguous(memory_format=torch.channels_last) for t in (x, xa))
    if impl != "xautodl":  # the project's forward: precision and compilation as in the search
        from nas.precision import Precision, Runner

        precision = Precision(setting.split("+")[0], device)
        run = Runner(net, precision, "compile" in setting, "benchmark network")
        if "cudagraphs" in setting:
            run._compiled = torch.compile(net, mode="reduce-overhead")
        scaler_w, scaler_a = precision.scaler(), precision.scaler()
        if impl == "discrete":
            def fwd(inp, detach=False):
                return run(inp)
        else:
            def fwd(inp, detach=False):
                w = alpha.softmax(-1)
                return run(inp, w.detach() if detach else w)
    else:
        scaler_w = scaler_a = torch.amp.GradScaler(torch.device(device).type, enabled=False)
    w_opt = torch.optim.SGD(w_params, lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(a_params, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3) if a_params else None

    graphs = "cudagraphs" in setting

    def step():
        if graphs:  # a new step: the previous step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        if a_opt is not None:
            # α step: gradients for α only
            loss_a = F.cross_entropy(fwd(xa), ya)
            grads = torch.autograd.grad(scaler_a.scale(loss_a), a_params)
            for p, g in zip(a_params, grads):
                p.grad = g
            scaler_a.step(a_opt)
            scaler_a.update()
        w_opt.zero_grad(set_to_none=True)
        out = fwd(x, True) if impl == "project" else fwd(x)
        scaler_w.scale(F.cross_entropy(out, y)).backward()
        scaler_w.unscale_(w_opt)
        torch.nn.utils.clip_grad_norm_(w_params, 5.0)
        scaler_w.step(w_opt)
        scaler_w.update()

    return step, net


def time_steps(step, n: int, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n




def memory(impl: str, cfg: dict, device: str, setting: str = "fp32") -> float:
    """Peak memory of a few steps, in MB (run in a fresh process)."""
    step, _ = build(impl, cfg, device, setting)
    # measured from just after the model and data exist: activations, gradients, optimiser state
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            step()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = reset_peak_rss()
    for _ in range(2):
        step()
    return (vm("VmHWM") - base) / 2**20


def step_flops(impl: str, cfg: dict, device: str) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    step, _ = build(impl, cfg, device)
    with FlopCounterMode(display=False) as fc:
        step()
    return fc.get_total_flops()


def conv_rate(device: str, seconds: float = 1.0) -> float:
    """FLOP/s of a large dense 3x3 convolution (forward + backward) on this machine."""
    x = torch.randn(32, 64, 32, 32, device=device, requires_grad=True)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device)
    flops = 3 * 2 * 32 * 64 * 64 * 9 * 32 * 32  # forward + two backward convolutions

    def once():
        conv(x).sum().backward()

    once()
    n = 0
    _sync(device)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        once()
        n += 1
    _sync(device)
    return flops * n / (time.perf_counter() - t0)


def fresh_memory(impl: str, name: str, setting: str, device: str, repeats: int) -> float:
    """Peak memory of one (implementation, setting): the median of ``repeats`` fresh processes,
    interleaved with nothing else, so that no setting inherits another's allocator state."""
    values = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--memory", f"{impl}:{name}:{setting}", "--device", device],
                             capture_output=True, text=True, env=dict(os.environ))
        if out.returncode != 0:
            return float("nan")
        values.append(json.loads(out.stdout.strip().splitlines()[-1])["mb"])
    return statistics.median(values)


def require_reference() -> None:
    """The reference supernet comes from the NAS-Bench-201 authors' package, installed apart from
    the project's extras (its declared numpy pin conflicts with the project's)."""
    try:
        import xautodl  # noqa: F401
    except ImportError:
        raise SystemExit("bench/supernet.py: the reference implementation (xautodl) is not installed; install it "
                         "with: .venv/bin/pip install xautodl --no-deps") from None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per timed chunk")
    p.add_argument("--configs", default="reference,cpu-proxy")
    p.add_argument("--settings", default=",".join(SETTINGS[:5]), help="the project's precision/compile settings")
    p.add_argument("--memory-repeats", dest="memory_repeats", type=int, default=3,
                   help="fresh processes per peak-memory figure (median)")
    p.add_argument("--memory", help=argparse.SUPPRESS)
    args = p.parse_args()
    require_reference()
    if args.memory:
        impl, name, setting = args.memory.split(":")
        print(json.dumps({"mb": memory(impl, CONFIGS[name], args.device, setting)}))
        return
    settings = args.settings.split(",")
    for s in settings:
        if s not in SETTINGS:
            raise SystemExit(f"--settings: unknown setting {s!r} (expected some of {', '.join(SETTINGS)})")
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"project in {'channels-last' if CHANNELS_LAST else 'contiguous'} format")
    rate = conv_rate(args.device)
    print(f"dense 3x3 convolution: {rate / 1e9:.1f} GFLOP/s")
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        # (implementation, setting): the project's supernet and the discrete network in every setting
        runs = [("xautodl", "fp32")] + [(i, s) for s in settings for i in ("project", "discrete")]
        steps, t_compile = {}, {}
        for key in runs:
            steps[key] = build(key[0], cfg, args.device, key[1])[0]
            t0 = time.perf_counter()
            time_steps(steps[key], 2, args.device)  # warm-up (and compilation)
            t_compile[key] = time.perf_counter() - t0
        times: dict[tuple, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):  # interleaved
            for k in runs:
                times[k].append(time_steps(steps[k], args.steps, args.device))
        med = {k: 1000 * statistics.median(t) for k, t in times.items()}
        mem = {}
        for impl, setting in runs:
            if "compile" in setting or "cudagraphs" in setting:
                continue  # the compiler's own memory would be counted
            mem[(impl, setting)] = fresh_memory(impl, name, setting, args.device, args.memory_repeats)
        ref = ("xautodl", "fp32")
        print(f"\n[{name}] C={cfg['C']} N={cfg['N']} batch={cfg['batch']} {cfg['size']}x{cfg['size']}; "
              f"xautodl (fp32): {med[ref]:.1f} ms per search step, {mem[ref]:.0f} MB peak")
        print(f"  {'project setting':<16}{'step ms':>9}{'x xautodl':>11}{'x fp32':>8}{'peak MB':>9}{'x xautodl':>11}"
              f"{'discrete ms':>13}{'super/disc':>12}{'warm-up s':>11}")
        base = med.get(("project", "fp32"))
        for s in settings:
            k, d = ("project", s), ("discrete", s)
            m = mem.get(k)
            mem_txt = f"{m:>9.0f}{m / mem[ref]:>11.2f}" if m is not None else f"{'-':>9}{'-':>11}"
            rel = f"{med[k] / base:>8.2f}" if base else f"{'-':>8}"
            print(f"  {s:<16}{med[k]:>9.1f}{med[k] / med[ref]:>11.2f}{rel}{mem_txt}"
                  f"{med[d]:>13.1f}{med[k] / med[d]:>12.2f}{t_compile[k]:>11.1f}")
        if "fp32" in settings:
            flops = step_flops("project", cfg, args.device)
            flops_discrete = step_flops("discrete", cfg, args.device)
            achieved = flops / (med[("project", "fp32")] / 1000)
            print(f"  fp32 search step: {flops / 1e9:.2f} GFLOP, {achieved / 1e9:.1f} GFLOP/s = "
                  f"{100 * achieved / rate:.0f}% of the dense-convolution rate; supernet/discrete in FLOPs "
                  f"{flops / flops_discrete:.2f} (the bound K = 5)")


if __name__ == "__main__":
    main()

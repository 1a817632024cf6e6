"""The NB201 DARTS search step against the NAS-Bench-201 authors' implementation (xautodl),
measured side by side in one run, plus the supernet/discrete ratio and the distance to the
machine's convolution FLOP rate.

Needs ``pip install xautodl --no-deps`` (its TinyNetworkDarts is the reference supernet).

    python bench/supernet.py                      # CPU, reference and proxy configs
    python bench/supernet.py --device cuda        # the same table on a GPU

The project runs in channels-last format, as its search does by default
(``NAS_BENCH_CHANNELS_LAST=0`` measures the contiguous format instead).

A step is one first-order α step (Adam on L_val) plus one w step (SGD on L_train), with the
reference NB201 optimisers, on random CIFAR-shaped data.  Times are medians over interleaved
repeats (project, xautodl, project, ...) after warm-up.  Peak memory is measured per
implementation in its own process (CPU: growth of peak RSS; CUDA: max allocated).
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


def build(impl: str, cfg: dict, device: str):
    """(step function, w parameters) for one implementation."""
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

        def fwd(inp):
            return net(inp)
    else:
        from nas.supernet import Supernet

        net = Supernet(cfg["C"], cfg["N"], 10, 3).to(device)
        alpha = torch.nn.Parameter(1e-3 * torch.randn(6, 5, device=device))
        w_params, a_params = list(net.parameters()), [alpha]

        def fwd(inp, detach=False):
            w = alpha.softmax(-1)
            return net(inp, w.detach() if detach else w)
    if impl != "xautodl" and CHANNELS_LAST:  # the project's search and retrain default
        net.to(memory_format=torch.channels_last)
        x, xa = (t.contiguous(memory_format=torch.channels_last) for t in (x, xa))
    w_opt = torch.optim.SGD(w_params, lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(a_params, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3) if a_params else None

    def step():
        if a_opt is not None:
            # α step: gradients for α only
            loss_a = F.cross_entropy(fwd(xa), ya)
            grads = torch.autograd.grad(loss_a, a_params)
            for p, g in zip(a_params, grads):
                p.grad = g
            a_opt.step()
        w_opt.zero_grad(set_to_none=True)
        out = fwd(x, True) if impl == "project" else fwd(x)
        F.cross_entropy(out, y).backward()
        torch.nn.utils.clip_grad_norm_(w_params, 5.0)
        w_opt.step()

    return step, net


def time_steps(step, n: int, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n




def memory(impl: str, cfg: dict, device: str) -> float:
    """Peak memory of a few steps, in MB (run in a fresh process)."""
    step, _ = build(impl, cfg, device)
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per timed chunk")
    p.add_argument("--configs", default="reference,cpu-proxy")
    p.add_argument("--memory", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory:
        impl, name = args.memory.split(":")
        print(json.dumps({"mb": memory(impl, CONFIGS[name], args.device)}))
        return
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"project in {'channels-last' if CHANNELS_LAST else 'contiguous'} format")
    rate = conv_rate(args.device)
    print(f"dense 3x3 convolution: {rate / 1e9:.1f} GFLOP/s")
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        impls = ["project", "xautodl", "discrete"]
        steps = {i: build(i, cfg, args.device)[0] for i in impls}
        for i in impls:  # warm-up
            time_steps(steps[i], 2, args.device)
        times: dict[str, list[float]] = {i: [] for i in impls}
        for _ in range(args.repeats):
            for i in impls:
                times[i].append(time_steps(steps[i], args.steps, args.device))
        med = {i: 1000 * statistics.median(t) for i, t in times.items()}
        mem = {}
        for i in impls:
            out = subprocess.run([sys.executable, __file__, "--memory", f"{i}:{name}", "--device", args.device],
                                 capture_output=True, text=True, env=dict(os.environ))
            mem[i] = json.loads(out.stdout.strip().splitlines()[-1])["mb"] if out.returncode == 0 else float("nan")
        flops = step_flops("project", cfg, args.device)
        flops_discrete = step_flops("discrete", cfg, args.device)
        print(f"\n[{name}] C={cfg['C']} N={cfg['N']} batch={cfg['batch']} {cfg['size']}x{cfg['size']}")
        print(f"  {'':<28}{'project':>10}{'xautodl':>10}{'ratio':>8}")
        print(f"  {'search step (ms, median)':<28}{med['project']:>10.1f}{med['xautodl']:>10.1f}"
              f"{med['project'] / med['xautodl']:>8.2f}")
        print(f"  {'peak memory (MB)':<28}{mem['project']:>10.1f}{mem['xautodl']:>10.1f}"
              f"{mem['project'] / mem['xautodl']:>8.2f}")
        print(f"  discrete network train step: {med['discrete']:.1f} ms; supernet step / discrete step = "
              f"{med['project'] / med['discrete']:.2f} (lecture bound K = 5); in FLOPs {flops / flops_discrete:.2f}")
        achieved = flops / (med["project"] / 1000)
        print(f"  search step: {flops / 1e9:.2f} GFLOP, {achieved / 1e9:.1f} GFLOP/s = "
              f"{100 * achieved / rate:.0f}% of the dense-convolution rate")


if __name__ == "__main__":
    main()

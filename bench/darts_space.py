"""What a paper-scale DARTS-space search and a 600-epoch evaluation cost, from a few measured steps.

Measures, on random CIFAR-shaped data: one first-order search step (α step + w step) of the DARTS
search network (C=16, 8 cells, batch 64, 32x32) and one training step of the evaluation network
(C=36, 20 cells, batch 96, auxiliary head, drop path) of the DARTS (2nd order) genotype; counts
their FLOPs; and scales both to the full runs (50 search epochs of 25,000 images; 600 epochs of
50,000 images), in hours on this device and, from the FLOPs, at an assumed sustained GPU rate.

    python bench/darts_space.py [--device cuda] [--steps 3] [--gpu-tflops 10]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def search_step(device: str):
    from nas.spaces import get_space
    from nas.supernet import Supernet

    space = get_space("darts")
    net = Supernet(space, 16, 8, 10, 3, 1).to(device).to(memory_format=torch.channels_last)
    alpha = torch.nn.Parameter(1e-3 * torch.randn(space.alpha_shape, device=device))
    w_opt = torch.optim.SGD(net.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam([alpha], 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    x = torch.randn(64, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device=device)

    def step():
        (g,) = torch.autograd.grad(F.cross_entropy(net(x, alpha.softmax(-1)), y), [alpha])
        alpha.grad = g
        a_opt.step()
        w_opt.zero_grad()
        F.cross_entropy(net(x, alpha.softmax(-1).detach()), y).backward()
        w_opt.step()

    return step


def eval_step(device: str):
    from nas.spaces import get_space

    space = get_space("darts")
    net = space.build_network(space.parse_genotype(DARTS_V2), 36, 20, 10, 3, auxiliary=True).to(device)
    net = net.to(memory_format=torch.channels_last)
    net.drop_path_prob = 0.2
    opt = torch.optim.SGD(net.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    x = torch.randn(96, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (96,), device=device)

    def step():
        logits, aux = net(x)
        loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def measure(step, n: int, device: str) -> tuple[float, int]:
    step()
    with FlopCounterMode(display=False) as fc:
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n, fc.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--gpu-tflops", type=float, default=10.0, help="assumed sustained fp32 rate of a GPU")
    args = p.parse_args()
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = [("search, C=16, 8 cells, batch 64", search_step, 25_000 // 64 + 1, 50),
            ("evaluation, C=36, 20 cells, batch 96", eval_step, 50_000 // 96 + 1, 600)]
    for name, build, steps_per_epoch, epochs in rows:
        sec, flops = measure(build(args.device), args.steps, args.device)
        total_steps = steps_per_epoch * epochs
        print(f"{name}: {sec:.2f} s/step, {flops / 1e9:.1f} GFLOP/step; {steps_per_epoch} steps/epoch -> "
              f"{sec * steps_per_epoch:.0f} s/epoch; {epochs} epochs: {sec * total_steps / 3600:.1f} h here, "
              f">= {flops * total_steps / (args.gpu_tflops * 1e12) / 3600:.1f} GPU-h (FLOP bound at {args.gpu_tflops:g} TFLOP/s)")


if __name__ == "__main__":
    main()

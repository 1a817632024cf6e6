"""The discrete training loop and measurements shared by retraining and the random baseline:
one training epoch, evaluation, parameter and multiply-accumulate counts, saved activation bytes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.data import BatchStream
from nas.precision import Runner


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...], *args: Any) -> int:
    """Multiply-accumulates of one forward pass of one image: half the FLOPs that
    ``torch.utils.flop_counter`` counts (convolutions and matrix products; it counts a
    multiply-add as two FLOPs).  Batch norm, activations and pooling are not counted, as in the
    papers' FLOP figures."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape), *args)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def saved_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs (activation memory)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@torch.no_grad()
def evaluate(model: nn.Module | Runner, stream: BatchStream, *args: Any) -> tuple[float, float]:
    """(mean loss, accuracy in [0, 1]) over a stream, without augmentation; ``model`` is a network
    or a ``Runner`` of one (its precision and compilation)."""
    net = model.module if isinstance(model, Runner) else model
    net.eval()
    loss_sum = torch.zeros((), device=stream.device)
    correct = torch.zeros((), device=stream.device)
    n = 0
    for x, y in stream.epoch(None, shuffle=False):
        logits = model(x, *args)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    net.train()
    return float(loss_sum) / max(n, 1), float(correct) / max(n, 1)


@dataclass
class Training:
    """How ``train_epoch`` steps: gradient clipping, label smoothing, the auxiliary head's weight,
    the forward that runs the network (another precision, compiled) and the loss scaler (fp16)."""

    grad_clip: float = 0.0
    label_smoothing: float = 0.0
    aux_weight: float = 0.0
    forward: Runner | None = None
    scaler: torch.amp.GradScaler | None = None


def train_epoch(net: nn.Module, stream: BatchStream, opt: torch.optim.Optimizer, gen: torch.Generator,
                how: Training | None = None, bar: Any = None) -> tuple[float, float]:
    """One pass of plain supervised training; returns (mean loss, accuracy).  A network that
    returns ``(logits, aux_logits)`` in training adds ``how.aux_weight`` times the auxiliary loss."""
    how = how or Training()
    grad_clip, label_smoothing, aux_weight = how.grad_clip, how.label_smoothing, how.aux_weight
    forward, scaler = how.forward, how.scaler
    net.train()
    forward = forward or net
    scaler = scaler or torch.amp.GradScaler(stream.device.type, enabled=False)
    sums = torch.zeros(2, device=stream.device)
    n = 0
    for x, y in stream.epoch(gen):
        out = forward(x)
        logits, aux = out if isinstance(out, tuple) else (out, None)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        if aux is not None and aux_weight > 0:
            loss = loss + aux_weight * F.cross_entropy(aux, y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():
            sums += torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum().float()])
        n += len(y)
        if bar is not None:
            bar.update(1)
    s = sums.tolist()
    return s[0] / max(n, 1), s[1] / max(n, 1)

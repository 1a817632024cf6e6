"""The two speed options of every training stage: mixed precision and compilation.

``precision`` (search, PT selection through its search, retrain):

- ``fp32``: no autocast (the default);
- ``bf16``: the network's forward runs under ``torch.autocast`` in bfloat16 (CPUs with AVX-512
  BF16 or AMX, Ampere-class GPUs and newer); bfloat16 keeps fp32's exponent range, so no
  gradient scaling is needed;
- ``fp16``: autocast in float16 with a ``GradScaler`` on every optimiser step that backpropagates
  through the network (w, and α in a first-order search).

On a CPU, bf16 and fp16 also flush denormal numbers to zero (``torch.set_flush_denormal``), which
otherwise slow the half-precision kernels down by up to two orders of magnitude.

What always stays in fp32: the parameters (w and α) and their optimisers, the logits handed to
the loss (cast back before the cross-entropy), the losses, the second-order hypergradient (it
takes differences of gradients at w ± r·∇, which half precision would round away) and the
Hessian of L_val with respect to α.

``compile`` wraps a network's forward in ``torch.compile`` (backend ``inductor``; the environment
variable ``NAS_COMPILE_BACKEND`` picks another, e.g. ``eager`` to debug a graph).  The parameters
stay in the original module, so checkpoints, ``state_dict`` and resumption are the same as
without it.  A compilation that fails on the first call (no C++ compiler, an unsupported op)
warns once in one line and the stage continues eagerly.  The first compilation of a network
takes minutes on a small CPU; the inductor cache keeps it for later runs of the same shapes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast and gradient scaling for one precision on one device."""

    def __init__(self, name: str, device: torch.device | str):
        if name not in _DTYPES:
            raise ValueError(f"precision {name!r}: expected one of {', '.join(PRECISIONS)}")
        self.name = name
        self.device_type = torch.device(device).type
        self.dtype = _DTYPES[name]
        if self.device_type == "cpu":
            # Half-precision training on a CPU meets fp32 denormals (numbers below 1.2e-38) in the
            # convolution and batch-norm kernels, which x86 computes up to 100x slower (two GDAS
            # steps in bf16: 25 s, against 0.6 s with flushing).  Mixed precision flushes them to zero, for the whole
            # process (the backward pass runs outside the autocast block); fp32 keeps IEEE denormals.
            torch.set_flush_denormal(self.mixed)

    @property
    def mixed(self) -> bool:
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the network's forward runs in (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A loss scaler: active for fp16, a pass-through otherwise (its ``step`` is ``opt.step()``)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


class Runner:
    """Calls ``module`` in the given precision, through ``torch.compile`` when ``compile`` is set.

    The output is returned in fp32 (logits, or a tuple of them), so that losses and accuracies are
    computed as in a plain fp32 run.  ``runner.module`` is the original network: its parameters,
    ``state_dict`` and ``train()``/``eval()`` are the ones to use."""

    def __init__(self, module: nn.Module, precision: Precision, compile: bool = False, what: str = "network"):
        self.module = module
        self.precision = precision
        self.what = what
        self._compiled: Callable[..., Any] | None = None
        if compile:
            try:
                self._compiled = torch.compile(module, backend=os.environ.get("NAS_COMPILE_BACKEND", "inductor"))
            except Exception as exc:  # torch.compile refuses this Python or platform
                _warn(what, exc)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, *args: Any) -> Any:
        with self.precision.autocast():
            out = self._forward(*args)
        if self.precision.mixed:
            out = tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()
        return out

    def _forward(self, *args: Any) -> Any:
        if self._compiled is None:
            return self.module(*args)
        try:
            return self._compiled(*args)
        except Exception as exc:  # compilation failed: warn once, run eagerly from now on
            self._compiled = None
            _warn(self.what, exc)
            return self.module(*args)


def _warn(what: str, exc: BaseException) -> None:
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    print(f"warning: compile: the {what} runs eagerly, torch.compile failed ({type(exc).__name__}: {first})",
          file=sys.stderr, flush=True)

"""The one bi-level search loop: alternate an α step on the α split and a w step on the w split.

First order: ∇_α L_val(w, α).  Second order (DARTS, Liu et al. 2019, eq. 7-8): the gradient at
the virtual step w' = w - ξ (μ·m + ∇_w L_train(w, α) + λ·w), i.e. the next SGD step of the w
optimiser (ξ its current learning rate, m its momentum buffer), is

    ∇_α L_val(w', α) - ξ · [∇_α L_train(w⁺, α) - ∇_α L_train(w⁻, α)] / (2r),
    w± = w ± r ∇_w' L_val(w', α),   r = eps / ||∇_w' L_val(w', α)||.

The virtual step is taken in place on the one model and undone afterwards: no copy of the
network is built per step.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas import config as config_mod
from nas.data import DataBundle, balanced_subset, load_bundle, search_split
from nas.methods import Method, get_method
from nas.spaces import SearchSpace, get_space
from nas.utils import NasError, generator_for, resolve_device, seed_everything, torch_load, torch_save, write_json

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
# Keys that may differ between an interrupted run and its resumption.
RESUME_FREE_KEYS = {"out", "progress", "device", "cache_dir", "checkpoint_every", "data"}


@dataclass
class SearchState:
    """Everything that changes during a search; a checkpoint is exactly this."""

    model: nn.Module
    alpha: nn.Parameter
    w_opt: torch.optim.SGD
    a_opt: torch.optim.Adam
    sched: torch.optim.lr_scheduler.LRScheduler
    epoch: int  # epochs completed
    history: list[dict[str, Any]]


def unrolled_alpha_grad(model: nn.Module, alpha: torch.Tensor, mix: Callable[[torch.Tensor], torch.Tensor],
                        batch_w: tuple[torch.Tensor, torch.Tensor], batch_a: tuple[torch.Tensor, torch.Tensor],
                        w_opt: torch.optim.SGD, eps: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Second-order DARTS hypergradient; returns (grad α, L_val(w'), logits on the α batch).

    ``mix(alpha)`` gives the mixing weights.  Model parameters are restored exactly on return.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    group = w_opt.param_groups[0]
    lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
    xw, yw = batch_w
    xa, ya = batch_a
    backup = [p.detach().clone() for p in params]
    # virtual step w' = w - lr * (mu * m + g + wd * w)
    loss_t = F.cross_entropy(model(xw, mix(alpha).detach()), yw)
    grads = torch.autograd.grad(loss_t, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            d = g + wd * p
            buf = w_opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None and mu:
                d = d + mu * buf
            p.sub_(lr * d)
    try:
        logits = model(xa, mix(alpha))
        loss_v = F.cross_entropy(logits, ya)
        g_alpha, *g_w = torch.autograd.grad(loss_v, [alpha, *params])
        norm = torch.sqrt(sum((g * g).sum() for g in g_w))
        r = eps / (norm + 1e-12)
        hv = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, b, g in zip(params, backup, g_w):
                    p.copy_(b + sign * r * g)
            loss = F.cross_entropy(model(xw, mix(alpha)), yw)
            hv.append(torch.autograd.grad(loss, [alpha])[0])
        grad = g_alpha - lr * (hv[0] - hv[1]) / (2 * r)
    finally:
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)
    return grad, loss_v.detach(), logits.detach()


def _edge_stats(weights: torch.Tensor, ops: tuple[str, ...]) -> dict[str, Any]:
    ent = -(weights * weights.clamp_min(1e-12).log()).sum(-1)
    stats: dict[str, Any] = {
        "edge_entropy": ent.tolist(),
        "edge_max_weight": weights.max(-1).values.tolist(),
    }
    if "skip_connect" in ops:
        stats["skip_weight_mean"] = float(weights[:, ops.index("skip_connect")].mean())
    return stats


class Search:
    """Set up and run one search from a ``SearchConfig``."""

    def __init__(self, cfg: config_mod.SearchConfig):
        self.cfg = cfg
        self.space: SearchSpace = get_space(cfg.space)
        self.method: Method = get_method(cfg.method, cfg.order)
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.out)

    # ----------------------------------------------------------------- set-up
    def _data(self) -> tuple[DataBundle, Any, Any]:
        cfg = self.cfg
        bundle = load_bundle(cfg, self.device)
        labels = bundle.prepared.train_y
        idx = balanced_subset(labels, cfg.subset, cfg.seed) if cfg.subset else torch.arange(len(labels))
        w_idx, a_idx = search_split(idx, cfg.train_portion, cfg.seed)
        w_stream = bundle.stream(w_idx, cfg.batch_size, cfg.augment)
        a_stream = bundle.stream(a_idx, cfg.batch_size, cfg.augment)
        return bundle, w_stream, a_stream

    def _state(self, bundle: DataBundle) -> SearchState:
        cfg = self.cfg
        seed_everything(cfg.seed)
        model = self.space.build_supernet(cfg.channels, cfg.cells, bundle.num_classes, bundle.channels).to(self.device)
        g = generator_for(cfg.seed, 303)
        alpha = nn.Parameter((1e-3 * torch.randn(self.space.alpha_shape, generator=g)).to(self.device))
        w_opt = torch.optim.SGD(model.parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                                weight_decay=cfg.w_weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=cfg.epochs, eta_min=cfg.w_lr_min)
        a_opt = torch.optim.Adam([alpha], lr=cfg.a_lr, betas=(cfg.a_beta1, cfg.a_beta2),
                                 weight_decay=cfg.a_weight_decay)
        return SearchState(model, alpha, w_opt, a_opt, sched, 0, [])

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self, st: SearchState) -> None:
        torch_save(self.out / CHECKPOINT, {
            "format": "nas-search-checkpoint-v1",
            "config": config_mod.to_dict(self.cfg),
            "epoch": st.epoch,
            "model": st.model.state_dict(),
            "alpha": st.alpha.detach().cpu(),
            "w_opt": st.w_opt.state_dict(),
            "a_opt": st.a_opt.state_dict(),
            "sched": st.sched.state_dict(),
            "history": st.history,
        })

    def load_checkpoint(self, st: SearchState) -> None:
        path = self.out / CHECKPOINT
        ck = torch_load(path, map_location=self.device)
        if not isinstance(ck, dict) or ck.get("format") != "nas-search-checkpoint-v1":
            raise NasError(f"{path}: not a search checkpoint")
        saved, now = ck["config"], config_mod.to_dict(self.cfg)
        diff = sorted(k for k in now if k not in RESUME_FREE_KEYS and saved.get(k) != now[k])
        if diff:
            k = diff[0]
            raise NasError(f"{path}: cannot resume, config key {k!r} was {saved.get(k)!r}, now {now[k]!r}")
        st.model.load_state_dict(ck["model"])
        with torch.no_grad():
            st.alpha.copy_(ck["alpha"].to(self.device))
        st.w_opt.load_state_dict(ck["w_opt"])
        st.a_opt.load_state_dict(ck["a_opt"])
        st.sched.load_state_dict(ck["sched"])
        st.epoch = int(ck["epoch"])
        st.history = list(ck["history"])

    # ----------------------------------------------------------------- the loop
    def run(self, resume: bool = False, callback: Callable[[SearchState], None] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        bundle, w_stream, a_stream = self._data()
        st = self._state(bundle)
        if resume and (self.out / CHECKPOINT).is_file():
            self.load_checkpoint(st)
        elif resume:
            print(f"no checkpoint in {self.out}; starting from scratch", file=sys.stderr)
        self.out.mkdir(parents=True, exist_ok=True)
        steps = len(w_stream) if cfg.steps_per_epoch <= 0 else min(cfg.steps_per_epoch, len(w_stream))
        bar = _progress(cfg.progress, total=cfg.epochs * steps, initial=st.epoch * steps)
        try:
            while st.epoch < cfg.epochs:
                record = self._epoch(st, w_stream, a_stream, steps, bar)
                st.history.append(record)
                st.epoch += 1
                st.sched.step()
                msg = (f"epoch {st.epoch}/{cfg.epochs}  train loss {record['train_loss']:.3f} acc "
                       f"{record['train_acc']:.3f}  val loss {record['val_loss']:.3f} acc "
                       f"{record['val_acc']:.3f}  {record['genotype']}  {record['seconds']:.1f}s")
                _log(bar, msg)
                if st.epoch % cfg.checkpoint_every == 0 or st.epoch == cfg.epochs:
                    self.save_checkpoint(st)
                if callback is not None:
                    callback(st)
        finally:
            if bar is not None:
                bar.close()
        return self.finish(st, bundle)

    def _epoch(self, st: SearchState, w_stream, a_stream, steps: int, bar) -> dict[str, Any]:
        cfg, method, ops = self.cfg, self.method, self.space.ops
        t0 = time.perf_counter()
        gen_w = generator_for(cfg.seed, st.epoch, 1, device=self.device)
        gen_a = generator_for(cfg.seed, st.epoch, 2, device=self.device)
        gen_m = generator_for(cfg.seed, st.epoch, 3, device=self.device)
        a_iter = _cycle(a_stream, gen_a)
        epoch, epochs = st.epoch, cfg.epochs
        st.model.train()
        sums = torch.zeros(4, device=self.device)  # train loss, train correct, val loss, val correct
        counts = [0, 0]
        lr = st.w_opt.param_groups[0]["lr"]

        def mix(a: torch.Tensor) -> torch.Tensor:
            return method.mixing.sample(a, epoch, epochs, gen_m)

        for step, (xw, yw) in enumerate(w_stream.epoch(gen_w)):
            if step >= steps:
                break
            xa, ya = next(a_iter)
            # α step
            if cfg.order == 2:
                grad, loss_v, logits_v = unrolled_alpha_grad(st.model, st.alpha, mix, (xw, yw), (xa, ya),
                                                             st.w_opt, cfg.unrolled_eps)
            else:
                logits_v = st.model(xa, mix(st.alpha))
                loss_v = F.cross_entropy(logits_v, ya)
                (grad,) = torch.autograd.grad(loss_v, [st.alpha])
            st.a_opt.zero_grad(set_to_none=True)
            st.alpha.grad = grad
            st.a_opt.step()
            # w step on (possibly perturbed) detached mixing weights
            weights = mix(st.alpha).detach()
            weights = method.perturbation(
                weights, lambda wts, x=xw, y=yw: F.cross_entropy(st.model(x, wts), y), epoch, epochs, gen_m)
            st.w_opt.zero_grad(set_to_none=True)
            logits = st.model(xw, weights)
            loss = F.cross_entropy(logits, yw)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(st.model.parameters(), cfg.grad_clip)
            st.w_opt.step()
            with torch.no_grad():
                sums += torch.stack([loss.detach() * len(yw), (logits.argmax(1) == yw).sum(),
                                     loss_v.detach() * len(ya), (logits_v.argmax(1) == ya).sum()]).float()
            counts[0] += len(yw)
            counts[1] += len(ya)
            if bar is not None:
                bar.update(1)
        s = sums.tolist()
        with torch.no_grad():
            weights = method.mixing.expected(st.alpha).cpu()
        record = {
            "epoch": st.epoch + 1,
            "train_loss": s[0] / counts[0],
            "train_acc": s[1] / counts[0],
            "val_loss": s[2] / counts[1],
            "val_acc": s[3] / counts[1],
            "w_lr": lr,
            "alpha": st.alpha.detach().cpu().tolist(),
            "weights": weights.tolist(),
            "genotype": self.space.format_genotype(self.space.select_magnitude(weights)),
            **_edge_stats(weights, ops),
            "seconds": time.perf_counter() - t0,
        }
        for v in (record["train_loss"], record["val_loss"]):
            if not math.isfinite(v):
                raise NasError(f"search diverged at epoch {st.epoch + 1}: loss is {v} (lower w_lr or a_lr)")
        return record

    def finish(self, st: SearchState, bundle: DataBundle) -> dict[str, Any]:
        with torch.no_grad():
            weights = self.method.mixing.expected(st.alpha).cpu()
        geno = self.space.select_magnitude(weights)
        result = {
            "space": self.space.name,
            "method": self.method.name,
            "order": self.cfg.order,
            "selection": "magnitude",
            "genotype": self.space.format_genotype(geno),
            "ops": list(self.space.ops),
            "alpha": st.alpha.detach().cpu().tolist(),
            "weights": weights.tolist(),
            "dataset": {"name": self.cfg.dataset, "source": bundle.prepared.manifest["source"],
                        "num_classes": bundle.num_classes, "resolution": bundle.size,
                        "prepared": str(bundle.prepared.path)},
            "device": str(self.device),
            "seconds": sum(h["seconds"] for h in st.history),
            "config": config_mod.to_dict(self.cfg),
            "history": st.history,
        }
        write_json(self.out / RESULT, result)
        return result


def _cycle(stream, gen):
    while True:
        yield from stream.epoch(gen)


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: shown on a terminal, silent when stderr is redirected (CI, logs)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None,
                desc="search")


def _log(bar, msg: str) -> None:
    if bar is not None and not bar.disable:
        bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr, flush=True)


def search(cfg: config_mod.SearchConfig, resume: bool = False,
           callback: Callable[[SearchState], None] | None = None) -> dict[str, Any]:
    """Run a search and write ``<out>/result.json`` and ``<out>/checkpoint.pt``."""
    return Search(cfg).run(resume=resume, callback=callback)

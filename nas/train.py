"""Retrain a discrete architecture from scratch and evaluate it (``nas.loops`` holds the loop)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas import config as config_mod
from nas.data import balanced_subset, check_batch, load_bundle
from nas.loops import Training, count_params, evaluate, train_epoch
from nas.precision import Precision, Runner
from nas.progress import log_line, progress_bar, run_label
from nas.rng import rng_stream
from nas.rundir import check_resume, claim
from nas.runs.files import torch_load, torch_save, write_json
from nas.runs.resolve import resolve
from nas.spaces import get_space
from nas.utils import NasError, generator_for, resolve_device, seed_everything, torch_threads

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
MODEL = "model.pt"
# Keys that may change when a retrain resumes (``data`` may move: its content is checked by digest).
RESUME_FREE_KEYS = {"out", "progress", "device", "cache_dir", "checkpoint_every", "data", "eval_every",
                    "eval_batch_size", "threads"}
RUN_FILES = (CHECKPOINT, RESULT, MODEL)


def retrain(cfg: config_mod.RetrainConfig, resume: bool = False,
            callback: Callable[[int, dict], None] | None = None, force: bool = False) -> dict[str, Any]:
    """Train the discrete network of ``cfg.genotype`` and report its test accuracy.

    Writes ``<out>/checkpoint.pt`` (every ``checkpoint_every`` epochs), ``<out>/model.pt`` and
    ``<out>/result.json``.  A folder that already holds a retrain is continued with ``resume``,
    started over with ``force``, and otherwise refused.
    """
    if not cfg.genotype:
        raise NasError("retrain: key 'genotype' is required (a genotype string)")
    get_space(cfg.space).parse_genotype(cfg.genotype)  # a bad genotype is named before the folder is touched
    with claim(cfg.out, resume, force, RUN_FILES, "retrain"), torch_threads(cfg.threads):
        return _retrain(cfg, resume, callback)


def _retrain(cfg: config_mod.RetrainConfig, resume: bool,
             callback: Callable[[int, dict], None] | None) -> dict[str, Any]:
    space = get_space(cfg.space)
    cfg = resolve("retrain", cfg)  # the space's defaults, as a job of the run layer is keyed
    t = _Trainer(cfg, space)
    if resume and t.ck_path.is_file():
        t.resume()
    t.out.mkdir(parents=True, exist_ok=True)
    steps = len(t.train)
    start = t.start
    bar = progress_bar(cfg.progress, cfg.epochs * steps, start * steps,
                       f"retrain epoch {min(start + 1, cfg.epochs)}/{cfg.epochs}")
    try:
        for epoch in range(start, cfg.epochs):
            rec = t.epoch(epoch, bar)
            _show(rec, cfg.epochs, bar, run_label(cfg.out))
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                t.save_checkpoint(epoch + 1)
            if callback is not None:
                callback(epoch + 1, rec)
    finally:
        if bar is not None:
            bar.close()
    return t.finish()


def _check_auxiliary(cfg: config_mod.RetrainConfig, space: Any, side: int) -> None:
    if cfg.auxiliary_weight > 0 and not space.auxiliary_min_side:
        raise NasError(f"retrain: key 'auxiliary_weight' is {cfg.auxiliary_weight}, but the evaluation network of "
                       f"space {space.name} has no auxiliary head (set auxiliary_weight=0)")
    if cfg.auxiliary_weight > 0 and side < space.auxiliary_min_side:
        raise NasError(f"retrain: key 'auxiliary_weight' is {cfg.auxiliary_weight}, but the auxiliary head needs 8x8 "
                       f"features after the second reduction, i.e. images of at least 32x32; these are "
                       f"{side}x{side} (set auxiliary_weight=0)")


def _show(rec: dict[str, Any], epochs: int, bar: Any, label: str | None) -> None:
    """One line per epoch: above the progress bar on a terminal, else on stderr after ``[label]``."""
    msg = f"epoch {rec['epoch']}/{epochs}  train loss {rec['train_loss']:.3f} acc {100 * rec['train_acc']:.1f}%"
    if "test_acc" in rec:
        msg += f"  test acc {100 * rec['test_acc']:.2f}%"
    log_line(bar, msg + f"  {rec['seconds']:.1f}s", label)
    if bar is not None and not bar.disable:
        bar.set_description(f"retrain epoch {min(rec['epoch'] + 1, epochs)}/{epochs}", refresh=False)
        bar.set_postfix_str(f"train acc {100 * rec['train_acc']:.1f}%"
                            + (f" test acc {100 * rec['test_acc']:.2f}%" if "test_acc" in rec else ""))


class _Trainer:
    """One retrain: its data splits, network, optimiser, schedule and history."""

    def __init__(self, cfg: config_mod.RetrainConfig, space: Any):
        self.cfg, self.space = cfg, space
        self.geno = space.parse_genotype(cfg.genotype)
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.out)
        self.ck_path = self.out / CHECKPOINT
        seed_everything(cfg.seed)
        self.bundle = load_bundle(cfg, self.device)
        _check_auxiliary(cfg, space, self.bundle.size)
        self._splits()
        net = space.build_network(self.geno, cfg.channels, cfg.cells, self.bundle.num_classes, self.bundle.channels,
                                  auxiliary=cfg.auxiliary_weight > 0).to(self.device)
        if cfg.channels_last and cfg.channels >= 4:  # see Search: tiny convolutions stay in the plain format
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                   weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.epochs, eta_min=cfg.lr_min)
        precision = Precision(cfg.precision, self.device)
        self.run, self.scaler = Runner(net, precision, cfg.compile, "network"), precision.scaler()
        self.history: list[dict[str, Any]] = []
        self.start = 0

    def _splits(self) -> None:
        """The training images (a class-balanced ``subset``, less a seeded ``holdout``), the
        held-out validation split (None without a holdout) and the test split."""
        cfg, bundle = self.cfg, self.bundle
        labels = bundle.prepared.train_y
        idx = balanced_subset(labels, cfg.subset, cfg.seed) if cfg.subset else torch.arange(len(labels))
        self.val = None
        if cfg.holdout > 0:  # a seeded validation split held out of training (the sweep's objective)
            perm = idx[torch.randperm(len(idx), generator=generator_for(cfg.seed, rng_stream("retrain-subset")))]
            n_val = max(1, int(round(cfg.holdout * len(perm))))
            idx, val_idx = perm[n_val:], perm[:n_val]
            self.val = bundle.stream(val_idx, cfg.eval_batch_size, False)
        check_batch(cfg.batch_size, len(idx), f"the training split ({len(idx)} images"
                    + (f" after holding out {cfg.holdout} for validation)" if cfg.holdout > 0 else ")"))
        self.train = bundle.stream(idx, cfg.batch_size, cfg.augment, cutout=cfg.cutout)
        self.test = bundle.stream(torch.arange(len(bundle.prepared.test_y)), cfg.eval_batch_size, False, test=True)

    def resume(self) -> None:
        ck = torch_load(self.ck_path, map_location=self.device)
        if not isinstance(ck, dict) or ck.get("format") != "nas-retrain-checkpoint-v1":
            raise NasError(f"{self.ck_path}: not a retrain checkpoint")
        check_resume(self.ck_path, ck.get("config", {}), config_mod.to_dict(self.cfg),
                     config_mod.to_dict(type(self.cfg)()), RESUME_FREE_KEYS, ck.get("data_sha256"),
                     self.bundle.prepared.manifest["sha256"])
        self.net.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        if "scaler" in ck:
            self.scaler.load_state_dict(ck["scaler"])
        self.start, self.history = int(ck["epoch"]), list(ck["history"])

    def evaluated(self, rec: dict[str, Any]) -> dict[str, Any]:
        rec["test_loss"], rec["test_acc"] = evaluate(self.run, self.test)
        if self.val is not None:
            rec["val_loss"], rec["val_acc"] = evaluate(self.run, self.val)
        return rec

    def epoch(self, epoch: int, bar: Any) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        gen = generator_for(cfg.seed, epoch, rng_stream("retrain-batches"), device=self.device)
        lr = self.opt.param_groups[0]["lr"]
        if hasattr(self.net, "drop_path_prob"):
            self.net.drop_path_prob = cfg.drop_path * epoch / cfg.epochs  # DARTS ramps it linearly
        how = Training(cfg.grad_clip, cfg.label_smoothing, cfg.auxiliary_weight, self.run, self.scaler)
        loss, acc = train_epoch(self.net, self.train, self.opt, gen, how, bar)
        self.sched.step()
        rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss, "train_acc": acc, "lr": lr}
        if (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0) or epoch + 1 == cfg.epochs:
            self.evaluated(rec)
        rec["seconds"] = time.perf_counter() - t0
        self.history.append(rec)
        return rec

    def save_checkpoint(self, epochs_done: int) -> None:
        torch_save(self.ck_path, {
            "format": "nas-retrain-checkpoint-v1", "config": config_mod.to_dict(self.cfg),
            "data_sha256": self.bundle.prepared.manifest["sha256"], "epoch": epochs_done,
            "model": self.net.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
            "history": self.history, **({"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {})})

    def finish(self) -> dict[str, Any]:
        """``model.pt`` and ``result.json``: the final test (and validation) numbers."""
        cfg, history, net = self.cfg, self.history, self.net
        final = history[-1] if history else {}
        if "test_acc" not in final:
            final = self.evaluated(dict(final))
        torch_save(self.out / MODEL, net.state_dict(), digest=False)  # plain format: loads with torch.load
        result = {
            "space": self.space.name,
            "genotype": self.space.format_genotype(self.geno),
            "params": count_params(net) - count_params(getattr(net, "auxiliary", None) or nn.Module()),
            "test_acc": final["test_acc"],
            "test_loss": final["test_loss"],
            **({"val_acc": final["val_acc"], "val_loss": final["val_loss"], "holdout": cfg.holdout}
               if self.val is not None else {}),
            "epochs": cfg.epochs,
            "dataset": self.bundle.describe(cfg.dataset),
            "device": str(self.device),
            "seconds": sum(h.get("seconds", 0.0) for h in history),
            "config": config_mod.to_dict(cfg),
            "history": history,
        }
        write_json(self.out / RESULT, result)
        return result


def load_model(folder: str | Path) -> nn.Module:
    """The trained network of a finished ``nas retrain`` folder (``result.json`` + ``model.pt``),
    in eval mode on the CPU."""
    from nas.runs.files import read_json

    folder = Path(folder)
    res_path = folder / RESULT
    if not res_path.is_file():
        raise NasError(f"{res_path}: retrain result not found (expected the output of 'nas retrain')")
    res = read_json(res_path)
    cfg, data = res.get("config", {}), res.get("dataset", {})
    space = get_space(res["space"])
    net = space.build_network(space.parse_genotype(res["genotype"]), cfg["channels"], cfg["cells"],
                              data["num_classes"], data["channels"], auxiliary=(cfg.get("auxiliary_weight") or 0) > 0)
    state = torch_load(folder / MODEL)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise NasError(f"{folder / MODEL}: weights do not fit the network of {res_path} "
                       f"({str(exc).splitlines()[0][:150]})") from None
    return net.eval()

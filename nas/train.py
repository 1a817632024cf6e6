"""Retrain a discrete architecture from scratch and evaluate it (``nas.loops`` holds the loop)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas import config as config_mod
from nas.data import balanced_subset, check_batch, load_bundle
from nas.loops import count_params, evaluate, train_epoch
from nas.precision import Precision, Runner
from nas.progress import progress_bar
from nas.rng import rng_stream
from nas.rundir import check_resume, claim
from nas.spaces import get_space
from nas.timings import torch_load, torch_save, write_json
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
    if not cfg.genotype:
        raise NasError("retrain: key 'genotype' is required (a genotype string)")
    space = get_space(cfg.space)
    cfg = config_mod.resolve_defaults(cfg, space.retrain_defaults)
    geno = space.parse_genotype(cfg.genotype)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    seed_everything(cfg.seed)
    bundle = load_bundle(cfg, device)
    if cfg.auxiliary_weight > 0 and not space.auxiliary_min_side:
        raise NasError(f"retrain: key 'auxiliary_weight' is {cfg.auxiliary_weight}, but the evaluation network of "
                       f"space {space.name} has no auxiliary head (set auxiliary_weight=0)")
    if cfg.auxiliary_weight > 0 and bundle.size < space.auxiliary_min_side:
        raise NasError(f"retrain: key 'auxiliary_weight' is {cfg.auxiliary_weight}, but the auxiliary head needs 8x8 "
                       f"features after the second reduction, i.e. images of at least 32x32; these are "
                       f"{bundle.size}x{bundle.size} (set auxiliary_weight=0)")
    labels = bundle.prepared.train_y
    idx = balanced_subset(labels, cfg.subset, cfg.seed) if cfg.subset else torch.arange(len(labels))
    val = None
    if cfg.holdout > 0:  # a seeded validation split held out of training (the sweep's objective)
        perm = idx[torch.randperm(len(idx), generator=generator_for(cfg.seed, rng_stream("retrain-subset")))]
        n_val = max(1, int(round(cfg.holdout * len(perm))))
        idx, val_idx = perm[n_val:], perm[:n_val]
        val = bundle.stream(val_idx, cfg.eval_batch_size, False)
    check_batch(cfg.batch_size, len(idx), f"the training split ({len(idx)} images"
                + (f" after holding out {cfg.holdout} for validation)" if cfg.holdout > 0 else ")"))
    train = bundle.stream(idx, cfg.batch_size, cfg.augment, cutout=cfg.cutout)
    test = bundle.stream(torch.arange(len(bundle.prepared.test_y)), cfg.eval_batch_size, False, test=True)
    net = space.build_network(geno, cfg.channels, cfg.cells, bundle.num_classes, bundle.channels,
                              auxiliary=cfg.auxiliary_weight > 0).to(device)
    if cfg.channels_last and cfg.channels >= 4:  # see Search: tiny convolutions stay in the plain format
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr_min)
    precision = Precision(cfg.precision, device)
    run, scaler = Runner(net, precision, cfg.compile, "network"), precision.scaler()
    history: list[dict[str, Any]] = []
    start = 0
    ck_path = out / CHECKPOINT
    if resume and ck_path.is_file():
        ck = torch_load(ck_path, map_location=device)
        if not isinstance(ck, dict) or ck.get("format") != "nas-retrain-checkpoint-v1":
            raise NasError(f"{ck_path}: not a retrain checkpoint")
        check_resume(ck_path, ck.get("config", {}), config_mod.to_dict(cfg), config_mod.to_dict(type(cfg)()),
                     RESUME_FREE_KEYS, ck.get("data_sha256"), bundle.prepared.manifest["sha256"])
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        if "scaler" in ck:
            scaler.load_state_dict(ck["scaler"])
        start, history = int(ck["epoch"]), list(ck["history"])
    out.mkdir(parents=True, exist_ok=True)
    steps = len(train)
    bar = progress_bar(cfg.progress, cfg.epochs * steps, start * steps, f"retrain epoch {min(start + 1, cfg.epochs)}/{cfg.epochs}")
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            gen = generator_for(cfg.seed, epoch, rng_stream("retrain-batches"), device=device)
            lr = opt.param_groups[0]["lr"]
            if hasattr(net, "drop_path_prob"):
                net.drop_path_prob = cfg.drop_path * epoch / cfg.epochs  # DARTS ramps it linearly
            loss, acc = train_epoch(net, train, opt, gen, cfg.grad_clip, cfg.label_smoothing, bar,
                                    aux_weight=cfg.auxiliary_weight, forward=run, scaler=scaler)
            sched.step()
            rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss, "train_acc": acc, "lr": lr}
            if (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0) or epoch + 1 == cfg.epochs:
                rec["test_loss"], rec["test_acc"] = evaluate(run, test)
                if val is not None:
                    rec["val_loss"], rec["val_acc"] = evaluate(run, val)
            rec["seconds"] = time.perf_counter() - t0
            history.append(rec)
            msg = f"epoch {epoch + 1}/{cfg.epochs}  train loss {rec['train_loss']:.3f} acc {rec['train_acc']:.3f}"
            if "test_acc" in rec:
                msg += f"  test acc {rec['test_acc']:.4f}"
            if bar is not None and not bar.disable:
                bar.write(msg, file=sys.stderr)
                bar.set_description(f"retrain epoch {min(epoch + 2, cfg.epochs)}/{cfg.epochs}", refresh=False)
                bar.set_postfix_str(f"train acc {acc:.3f}" + (f" test acc {rec['test_acc']:.3f}" if "test_acc" in rec else ""))
            else:
                print(msg, file=sys.stderr, flush=True)
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                torch_save(ck_path, {"format": "nas-retrain-checkpoint-v1", "config": config_mod.to_dict(cfg),
                                     "data_sha256": bundle.prepared.manifest["sha256"], "epoch": epoch + 1, "model": net.state_dict(), "opt": opt.state_dict(),
                                     "sched": sched.state_dict(), "history": history,
                                     **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {})})
            if callback is not None:
                callback(epoch + 1, rec)
    finally:
        if bar is not None:
            bar.close()
    final = history[-1] if history else {}
    if "test_acc" not in final:
        final = dict(final)
        final["test_loss"], final["test_acc"] = evaluate(run, test)
        if val is not None:
            final["val_loss"], final["val_acc"] = evaluate(run, val)
    torch_save(out / MODEL, net.state_dict(), digest=False)  # plain format: loads with torch.load
    result = {
        "space": space.name,
        "genotype": space.format_genotype(geno),
        "params": count_params(net) - count_params(getattr(net, "auxiliary", None) or nn.Module()),
        "test_acc": final["test_acc"],
        "test_loss": final["test_loss"],
        **({"val_acc": final["val_acc"], "val_loss": final["val_loss"], "holdout": cfg.holdout}
           if val is not None else {}),
        "epochs": cfg.epochs,
        "dataset": bundle.describe(cfg.dataset),
        "device": str(device),
        "seconds": sum(h.get("seconds", 0.0) for h in history),
        "config": config_mod.to_dict(cfg),
        "history": history,
    }
    write_json(out / RESULT, result)
    return result


def load_model(folder: str | Path) -> nn.Module:
    """The trained network of a finished ``nas retrain`` folder (``result.json`` + ``model.pt``),
    in eval mode on the CPU."""
    from nas.timings import read_json

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

"""Typed, validated configuration for every stage.

Each stage has a flat dataclass.  Values come, in increasing precedence, from the
defaults, a YAML file (``--config``), explicit CLI flags and ``--set key=value``.
Unknown keys and wrong types are rejected with a one-line error naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from nas.utils import NasError, clip, cut


@dataclass
class DataConfig:
    """Where the images come from and how batches are drawn."""

    dataset: str = "digits"  # digits (embedded) | cifar10 | cifar100 | svhn | imagefolder | prepared
    data: str | None = None  # archive, folder or prepared .pt file; None = embedded default
    cache_dir: str = "data/prepared"  # where decoded datasets are kept
    subset: int = 0  # images per class kept from the training set (0 = all), class-balanced
    resolution: int = 0  # resize images to this side length (0 = native)
    batch_size: int = 64  # images per step (each of the w and the α step in a search)
    augment: bool = True  # random crop with padding (+ flip where it fits the data)
    crop_padding: int = -1  # -1 = 4 pixels at 32x32, scaled with the resolution
    flip: bool | None = None  # None = decided by the dataset (no flips for digits)
    eval_batch_size: int = 512  # images per forward pass when only evaluating
    channels_last: bool = True  # NHWC memory format for batches and convolutions (about 1.4x faster on CPU)


@dataclass
class SearchConfig(DataConfig):
    """Supernet search: a space, a method, the bi-level optimisation."""

    space: str = "nb201"  # nb201 | darts | s1 | s2 | s3 | s4
    method: str = "darts"  # darts | snas | gdas | drnas | sdarts-rs | sdarts-adv | pc-darts | random | rsps
    order: int = 1  # DARTS: 1 = first order, 2 = second order (unrolled)
    epochs: int = 50  # search epochs
    seed: int = 0  # seeds the data split, the subset, the supernet, the batches and the samples
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    out: str = "runs/search"  # run directory (result.json, checkpoint.pt)
    train_portion: float = 0.5  # share of the training set that trains w; the rest trains alpha
    channels: int | None = None  # C; None = the space's default (16)
    cells: int | None = None  # NB201: cells per stage (5); DARTS spaces: cells in all (8)
    # w optimiser (NB201 reference search settings)
    w_lr: float = 0.025  # SGD learning rate of the supernet weights w, cosine-annealed per epoch
    w_lr_min: float = 0.001  # end of the cosine schedule
    w_momentum: float = 0.9  # SGD momentum on w
    w_weight_decay: float = 3e-4  # SGD weight decay on w
    grad_clip: float = 5.0  # gradient-norm clip of the w step (0 = none)
    # alpha optimiser
    a_lr: float = 3e-4  # Adam learning rate of α
    a_beta1: float = 0.5  # Adam beta1 of α
    a_beta2: float = 0.999  # Adam beta2 of α
    a_weight_decay: float | None = None  # None = method default: 1e-3, 0 for drnas (its regulariser)
    unrolled_eps: float = 0.01  # finite-difference step (scaled by 1/||dL_val/dw'||), DARTS paper
    # method seams (see nas/methods): perturbation, partial channels, temperatures, regularisers
    perturb: str = "auto"  # auto (method default) | none | rs | adv
    partial_channels: int = 0  # K of PC-DARTS; 0 = method default (4 for pc-darts, else 1)
    edge_norm: bool | None = None  # PC-DARTS edge normalisation; None = on for pc-darts only
    tau_max: float | None = None  # Gumbel temperature start; None = 10 (snas, gdas)
    tau_min: float | None = None  # Gumbel temperature end; None = 1 (snas), 0.1 (gdas)
    drnas_reg: str = "l2"  # l2 | kl | none
    drnas_lambda: float = 1e-3  # strength of the DrNAS regulariser
    rs_sigma: float = 0.3  # SDARTS-RS noise amplitude at the end of the ramp
    adv_epsilon: float = 0.3  # SDARTS-ADV attack radius at the end of the ramp
    eps_start: float = 0.03  # both ramp linearly from this value
    adv_steps: int = 7  # SDARTS-ADV PGD steps per w step
    progressive: bool = False  # DrNAS progressive: two stages, K k1 -> k2, ops pruned to `keep`
    progressive_k1: int = 4  # DrNAS progressive: partial-channel K of the first stage
    progressive_k2: int = 2  # ... and of the second stage
    progressive_keep: int = 3  # ops kept per edge between the stages
    arch_warmup: int | None = None  # epochs of frozen α at the start of each stage; None = 0, or 20% of a stage when progressive
    rsps_candidates: int = 100  # RSPS: sampled architectures ranked by supernet validation accuracy
    rsps_eval_batches: int = 1  # α-split batches per candidate
    random_samples: int = 10  # random baseline: architectures trained from scratch
    random_epochs: int = 5  # epochs per random architecture
    fix_alpha: bool = False  # keep α at zero (uniform weights) and train w only: the "fix α" supernet for PT
    # sharpness: the top eigenvalue of the Hessian of L_val w.r.t. α
    hessian_every: int = 0  # compute it every k epochs (0 = off)
    hessian_batches: int = 1  # fixed, seeded α-split batches the loss is evaluated on
    hessian_tol: float = 1e-3  # relative tolerance of the eigenvalue
    hessian_method: str = "lanczos"  # lanczos | power
    hessian_topk: int = 1  # eigenvalues kept per evaluation (lanczos)
    # early stopping on the eigenvalue (RobustDARTS DARTS-ES); needs hessian_every = 1
    early_stop: bool = False  # stop when the eigenvalue grows (DARTS-ES)
    es_window: int = 5  # epochs in the local average
    es_lookback: int = 5  # compare with the local average this many epochs earlier
    es_factor: float = 1.3  # stop when the local average grew by more than this factor
    es_start: int = 10  # first epoch at which stopping is considered
    steps_per_epoch: int = 0  # 0 = one pass over the w split; >0 caps it (CPU budgets)
    checkpoint_every: int = 1  # epochs between checkpoints
    progress: bool = True  # a progress bar on a terminal


@dataclass
class RetrainConfig(DataConfig):
    """Train a discrete architecture from scratch and evaluate it on the test split."""

    space: str = "nb201"  # nb201 | darts | s1 | s2 | s3 | s4
    genotype: str = ""  # the architecture to train (the space's genotype string)
    epochs: int | None = None  # 200 (NB201) | 600 (DARTS)
    seed: int = 0  # seeds the initialisation, the subset, the holdout split and the batches
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    out: str = "runs/retrain"  # run directory (result.json, model.pt, checkpoint.pt)
    # None = the space's default: NB201's benchmark recipe, or the DARTS evaluation recipe
    channels: int | None = None  # 16 | 36
    cells: int | None = None  # 5 per stage | 20
    batch_size: int | None = None  # 256 | 96
    lr: float | None = None  # 0.1 | 0.025, cosine-annealed to lr_min
    lr_min: float = 0.0  # end of the cosine schedule
    momentum: float = 0.9  # SGD momentum
    nesterov: bool | None = None  # True | False
    weight_decay: float | None = None  # 5e-4 | 3e-4
    grad_clip: float | None = None  # 0 (none) | 5
    auxiliary_weight: float | None = None  # 0 | 0.4 (DARTS auxiliary head at 2/3 depth)
    drop_path: float | None = None  # 0 | 0.2, ramped linearly over the epochs
    cutout: int | None = None  # 0 | 16 pixels
    label_smoothing: float = 0.0  # label smoothing of the cross-entropy
    eval_every: int = 0  # evaluate on the test split every k epochs (0 = only at the end)
    holdout: float = 0.0  # share of the training images held out as a validation split (0 = none)
    checkpoint_every: int = 1  # epochs between checkpoints
    progress: bool = True  # a progress bar on a terminal


@dataclass
class SelectConfig:
    """Selection of the final architecture from a finished search run."""

    method: str = "magnitude"  # magnitude | pt
    run: str = ""  # the search run directory
    out: str | None = None  # where selection.json goes (none = not written)
    seed: int = 0  # PT edge order
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    pt_tune_epochs: int = 5  # w-only fine-tuning epochs between PT decisions (the reference uses 5)
    pt_batches: int = 0  # α-split batches per accuracy measurement (0 = the whole split)
    pt_lr_factor: float = 0.1  # fine-tuning learning rate = w_lr * this
    progress: bool = True  # a progress bar on a terminal


@dataclass
class PrepareConfig:
    """Decode a dataset once into a tensor file with a manifest."""

    dataset: str = "digits"  # digits (embedded) | cifar10 | cifar100 | svhn | imagefolder | prepared
    data: str | None = None  # archive, folder or prepared .pt file; None = embedded default
    cache_dir: str = "data/prepared"  # where decoded datasets are kept


CONFIGS: dict[str, type] = {
    "search": SearchConfig,
    "retrain": RetrainConfig,
    "prepare": PrepareConfig,
    "select": SelectConfig,
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(key: str, value: Any, tp: Any, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg, source)
            except NasError as exc:
                errors.append(exc)
        names = " or ".join(_type_name(a) for a in args)
        raise NasError(f"{source}: key {key!r} expects {names}, got {clip(value, 100)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int too large for a float
                raise NasError(f"{source}: key {key!r} expects a finite number, got {clip(value, 100)}") from None
            if not math.isfinite(number):
                raise NasError(f"{source}: key {key!r} expects a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:  # pragma: no cover - only the types above are used in configs
        return value
    raise NasError(f"{source}: key {key!r} expects {_type_name(tp)}, got {clip(value, 100)}")


def _suggest(key: Any, known: Any) -> str:
    """`` (did you mean 'epochs'?)`` for a misspelt key, else a pointer to the list of keys."""
    import difflib

    close = difflib.get_close_matches(str(key)[:100], sorted(known), n=3)
    if close:
        return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
    return " (`nas search --list-keys` lists every key)"


def parse_set(item: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (numbers, booleans, null, strings)."""
    if "=" not in item:
        raise NasError(f"--set: expected key=value, got {clip(item)}")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.load(raw, Loader=StrictLoader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


MAX_YAML_BYTES = 1 << 20


class StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {clip(key)} given twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file holding a mapping, or a one-line error naming the file.  Keys given twice and
    files over 1 MiB are refused."""
    path = Path(path)
    if not path.is_file():
        raise NasError(f"{path}: {what} not found")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise NasError(f"{path}: {path.stat().st_size} bytes, more than a {what} may hold (1 MiB)")
    try:
        loaded = yaml.load(path.read_bytes().decode("utf-8"), Loader=StrictLoader) or {}
    except UnicodeDecodeError:
        raise NasError(f"{path}: not valid YAML (not UTF-8 text)") from None
    except RecursionError:
        raise NasError(f"{path}: not valid YAML (nested too deeply)") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None)
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        text = problem or str(exc).splitlines()[0]
        raise NasError(f"{path}: not valid YAML ({text[:200]}{where})") from None
    if not isinstance(loaded, dict):
        raise NasError(f"{path}: expected a mapping of key: value at the top level")
    return loaded


def build_config(
    kind: str,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> Any:
    """Defaults < YAML file < explicit ``overrides`` < ``--set`` items, all validated."""
    cls = CONFIGS[kind]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}

    def apply(items: dict[str, Any], source: str) -> None:
        for key, value in items.items():
            if key not in hints:
                raise NasError(f"{source}: unknown key {clip(key, 60)} for '{kind}'{_suggest(key, hints)}")
            values[key] = _coerce(key, value, hints[key], source)

    if config_file is not None:
        path = Path(config_file)
        loaded = load_yaml(path)
        # A file may hold one section per stage (as params files do); take ours if present.
        if kind in loaded and isinstance(loaded[kind], dict):
            loaded = loaded[kind]
        else:
            loaded = {k: v for k, v in loaded.items() if not (k in CONFIGS and isinstance(v, dict))}
        apply(loaded, str(path))
    if overrides:
        apply({k: v for k, v in overrides.items() if v is not None}, "command line")
    for item in sets or []:
        key, value = parse_set(item)
        apply({key: value}, f"--set {cut(item)}")
    cfg = cls(**values)
    validate(cfg)
    return cfg


# Range of each numeric key: (low, high, low included, high included); None = unbounded.  A key
# that is None in a config means "the default of the space or method" and is not checked here.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "subset": (0, 10**7, True, True),
    "resolution": (0, 1024, True, True),
    "crop_padding": (-1, 128, True, True),
    "batch_size": (1, 65536, True, True),
    "eval_batch_size": (1, 65536, True, True),
    "epochs": (1, 100_000, True, True),
    "seed": (0, 2**63 - 1, True, True),
    "train_portion": (0.0, 1.0, False, False),
    "channels": (1, 4096, True, True),
    "cells": (1, 256, True, True),
    "w_lr": (0.0, 100.0, False, True),
    "w_lr_min": (0.0, 100.0, True, True),
    "w_momentum": (0.0, 1.0, True, False),
    "w_weight_decay": (0.0, 1.0, True, True),
    "grad_clip": (0.0, None, True, True),
    "a_lr": (0.0, 100.0, True, True),
    "a_beta1": (0.0, 1.0, True, False),
    "a_beta2": (0.0, 1.0, True, False),
    "a_weight_decay": (0.0, 1.0, True, True),
    "unrolled_eps": (0.0, 100.0, False, True),
    "partial_channels": (0, 4096, True, True),
    "tau_max": (0.0, 1e6, False, True),
    "tau_min": (0.0, 1e6, False, True),
    "drnas_lambda": (0.0, 1e6, True, True),
    "rs_sigma": (0.0, 1e3, True, True),
    "adv_epsilon": (0.0, 1e3, True, True),
    "eps_start": (0.0, 1e3, True, True),
    "adv_steps": (1, 1000, True, True),
    "progressive_k1": (1, 4096, True, True),
    "progressive_k2": (1, 4096, True, True),
    "progressive_keep": (1, 5, True, True),
    "arch_warmup": (0, 100_000, True, True),
    "rsps_candidates": (1, 10**6, True, True),
    "rsps_eval_batches": (1, 10**6, True, True),
    "random_samples": (1, 10**5, True, True),
    "random_epochs": (1, 100_000, True, True),
    "hessian_every": (0, 100_000, True, True),
    "hessian_batches": (1, 10**5, True, True),
    "hessian_tol": (0.0, 1.0, False, True),
    "hessian_topk": (1, 10**6, True, True),
    "es_window": (1, 100_000, True, True),
    "es_lookback": (1, 100_000, True, True),
    "es_factor": (0.0, 1e6, False, True),
    "es_start": (0, 100_000, True, True),
    "steps_per_epoch": (0, 10**8, True, True),
    "checkpoint_every": (1, 100_000, True, True),
    # retrain
    "lr": (0.0, 100.0, False, True),
    "lr_min": (0.0, 100.0, True, True),
    "momentum": (0.0, 1.0, True, False),
    "weight_decay": (0.0, 1.0, True, True),
    "auxiliary_weight": (0.0, 100.0, True, True),
    "drop_path": (0.0, 1.0, True, False),
    "cutout": (0, 1024, True, True),
    "label_smoothing": (0.0, 1.0, True, False),
    "eval_every": (0, 100_000, True, True),
    "holdout": (0.0, 1.0, True, False),
    # select
    "pt_tune_epochs": (0, 100_000, True, True),
    "pt_batches": (0, 10**8, True, True),
    "pt_lr_factor": (0.0, 100.0, False, True),
}
CHOICES: dict[str, tuple[Any, ...]] = {
    "order": (1, 2),
    "perturb": ("auto", "none", "rs", "adv"),
    "drnas_reg": ("l2", "kl", "none"),
    "hessian_method": ("lanczos", "power"),
}


def _range_text(lo: float | None, hi: float | None, lo_in: bool, hi_in: bool) -> str:
    left = "[" if lo_in else "("
    right = "]" if hi_in else ")"
    if hi is None:
        return f">= {lo}" if lo_in else f"> {lo}"
    return f"in {left}{lo}, {hi}{right}"


def validate(cfg: Any) -> None:
    """Range checks that a type check cannot express, for every key, before any work starts."""
    def need(cond: bool, key: str, what: str) -> None:
        if not cond:
            raise NasError(f"config: key {key!r} {what}, got {clip(getattr(cfg, key), 80)}")

    values = dataclasses.asdict(cfg)
    for key, value in values.items():
        if value is None or isinstance(value, bool):
            continue
        if key in RANGES and isinstance(value, (int, float)):
            lo, hi, lo_in, hi_in = RANGES[key]
            ok = (value >= lo if lo_in else value > lo) if lo is not None else True
            ok = ok and ((value <= hi if hi_in else value < hi) if hi is not None else True)
            need(ok, key, "must be " + _range_text(lo, hi, lo_in, hi_in))
        if key in CHOICES:
            need(value in CHOICES[key], key, "must be one of " + ", ".join(map(str, CHOICES[key])))
    if hasattr(cfg, "out") and cfg.out is not None:
        need(str(cfg.out).strip() != "", "out", "must name a folder (an empty path would write into the current folder)")
    if hasattr(cfg, "cache_dir"):
        need(str(cfg.cache_dir).strip() != "", "cache_dir", "must name a folder")
    if isinstance(cfg, (DataConfig, PrepareConfig)):
        from nas.data import DATASETS

        need(cfg.dataset in DATASETS, "dataset", "must be one of " + ", ".join(DATASETS))
    if isinstance(cfg, SearchConfig):
        from nas.methods import build_method
        from nas.spaces import get_space

        need(cfg.w_lr_min <= cfg.w_lr, "w_lr_min", f"must be <= w_lr ({cfg.w_lr})")
        need(cfg.tau_min is None or cfg.tau_max is None or cfg.tau_min <= cfg.tau_max, "tau_min",
             f"must be <= tau_max ({cfg.tau_max})")
        need(not cfg.early_stop or cfg.hessian_every == 1, "hessian_every", "must be 1 when early_stop is on")
        space = get_space(cfg.space)
        n_alpha = space.alpha_shape[0] * space.alpha_shape[1]
        need(cfg.hessian_topk <= n_alpha, "hessian_topk", f"must be <= the {n_alpha} entries of alpha in space {space.name}")
        build_method(cfg)  # combinations of method keys that make no sense
    if isinstance(cfg, RetrainConfig):
        need(cfg.lr is None or cfg.lr_min <= cfg.lr, "lr_min", f"must be <= lr ({cfg.lr})")
        if cfg.space:
            from nas.spaces import get_space

            get_space(cfg.space)
    if isinstance(cfg, SelectConfig):
        need(cfg.method in ("magnitude", "pt"), "method", "must be magnitude or pt")


def key_help(kind: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every key of a stage, the meaning taken from the comment
    beside the key in this file (one source for the code and the help)."""
    import inspect
    import re

    meanings: dict[str, str] = {}
    for cls in reversed(CONFIGS[kind].__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        for line in inspect.getsource(cls).splitlines():
            m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
            if m:
                meanings[m.group(1)] = m.group(2).strip()
    hints = typing.get_type_hints(CONFIGS[kind])
    rows = []
    for f in dataclasses.fields(CONFIGS[kind]):
        default = f.default
        shown = "auto" if default is None and f.name in _SPACE_DEFAULTS else \
            ("null" if default is None else str(default).lower() if isinstance(default, bool) else repr(default)
             if isinstance(default, str) else str(default))
        rows.append((f.name, _type_name(hints[f.name]).replace(" | ", "|"), shown, meanings.get(f.name, "")))
    return rows


# Keys whose None means "the space's or the method's default".
_SPACE_DEFAULTS = {"channels", "cells", "epochs", "batch_size", "lr", "nesterov", "weight_decay", "grad_clip",
                   "auxiliary_weight", "drop_path", "cutout", "a_weight_decay", "edge_norm", "tau_max", "tau_min",
                   "arch_warmup", "flip"}


def format_key_help(kind: str) -> str:
    rows = key_help(kind)
    w0 = max(len(r[0]) for r in rows)
    w2 = min(24, max(len(r[2]) for r in rows))
    lines = [f"keys of '{kind}' (set with --set KEY=VALUE or in a --config YAML file):", ""]
    for name, _, default, meaning in rows:
        lines.append(f"  {name:<{w0}}  {default:<{w2}}  {meaning}".rstrip())
    return "\n".join(lines)


def resolve_defaults(cfg: Any, defaults: dict[str, Any]) -> Any:
    """A copy of ``cfg`` whose ``None`` keys take the space's defaults."""
    fill = {k: v for k, v in defaults.items() if hasattr(cfg, k) and getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **fill) if fill else cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_fields(kind: str) -> list[dataclasses.Field]:
    return list(dataclasses.fields(CONFIGS[kind]))


__all__ = ["DataConfig", "SearchConfig", "RetrainConfig", "PrepareConfig", "build_config",
           "to_dict", "field"]


def from_dict(kind: str, values: dict[str, Any], source: str = "config") -> Any:
    """A validated config of ``kind`` from a plain dict (as flows pass them); unknown keys are named."""
    cls = CONFIGS[kind]
    hints = typing.get_type_hints(cls)
    clean = {}
    for key, value in values.items():
        if key not in hints:
            raise NasError(f"{source}: unknown key {clip(key, 60)} for '{kind}'{_suggest(key, hints)}")
        clean[key] = _coerce(key, value, hints[key], source)
    cfg = cls(**clean)
    validate(cfg)
    return cfg


def pipeline_configs(params_file: str | Path, out: str | Path, sets: list[str] | None = None,
                     **overrides: Any) -> dict[str, Any]:
    """The four stage configs of one pipeline run from a params file with ``prepare``, ``search``,
    ``select`` and ``retrain`` sections.  ``sets`` items are ``section.key=value``; ``overrides``
    are the common knobs: ``method`` (search), ``selection`` (select), ``seed`` (all),
    ``epochs`` (search).  Run directories go under ``out``."""
    out = Path(out)
    per: dict[str, list[str]] = {k: [] for k in ("prepare", "search", "select", "retrain")}
    for item in sets or []:
        key, _, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not dot or section not in per or not _:
            raise NasError(f"--set {clip(item, 80)}: expected section.key=value with section one of {', '.join(per)}")
        per[section].append(f"{name}={value}")
    seed = overrides.get("seed")
    search = build_config("search", params_file, {"method": overrides.get("method"), "seed": seed,
                                                  "epochs": overrides.get("epochs"), "out": str(out / "search"),
                                                  "progress": False}, per["search"])
    if isinstance(load_yaml(params_file).get("prepare"), dict):
        prepare = build_config("prepare", params_file, None, per["prepare"])
    else:  # no prepare section (a protocol file): prepare what the search reads
        prepare = build_config("prepare", None, {"dataset": search.dataset, "data": search.data,
                                                 "cache_dir": search.cache_dir}, per["prepare"])
    for key in ("dataset", "data", "cache_dir"):
        if getattr(prepare, key) != getattr(search, key):
            raise NasError(f"{params_file}: prepare.{key} is {getattr(prepare, key)!r} but search.{key} is "
                           f"{getattr(search, key)!r}; the search must read what prepare wrote")
    select = build_config("select", params_file, {"method": overrides.get("selection"), "seed": seed,
                                                  "run": str(out / "search"), "out": str(out / "select"),
                                                  "progress": False}, per["select"])
    retrain = build_config("retrain", params_file, {"seed": seed, "out": str(out / "retrain"), "progress": False},
                           per["retrain"])
    return {"prepare": prepare, "search": search, "select": select, "retrain": retrain}

"""Typed, validated configuration for every stage.

Each stage has a flat dataclass.  Values come, in increasing precedence, from the
defaults, a YAML file (``--config``), explicit CLI flags and ``--set key=value``.
Unknown keys and wrong types are rejected with a one-line error naming the key.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from nas.settings import Settings as _Config
from nas.utils import NasError, clip, cut


class DataConfig(_Config):
    """Where the images come from and how batches are drawn."""

    dataset: str = Field("digits", description="digits (embedded) | cifar10 | cifar100 | svhn | imagefolder | prepared")
    data: str | None = Field(None, description="archive, folder or prepared .pt file; None = embedded default")
    cache_dir: str = Field("data/prepared", description="where decoded datasets are kept")
    subset: int = Field(0, ge=0, le=10**7,
                        description="images per class kept from the training set (0 = all), class-balanced")
    resolution: int = Field(0, ge=0, le=1024, description="resize images to this side length (0 = native)")
    batch_size: int = Field(64, ge=1, le=65536,
                            description="images per step (each of the w and the α step in a search)")
    augment: bool = Field(True, description="random crop with padding (+ flip where it fits the data)")
    crop_padding: int = Field(-1, ge=-1, le=128, description="-1 = 4 pixels at 32x32, scaled with the resolution")
    flip: bool | None = Field(None, description="None = decided by the dataset (no flips for digits)")
    eval_batch_size: int = Field(512, ge=1, le=65536, description="images per forward pass when only evaluating")
    channels_last: bool = Field(True,
                                description="NHWC memory format (about 1.4x faster on CPU)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32 | bf16 | fp16: autocast of the network's forward (fp16 adds a gradient scaler); "
                            "parameters, optimisers, losses, the Hessian and second-order steps stay fp32")
    compile: bool = Field(False, description="torch.compile the network (falls back to eager with a warning)")
    threads: int = Field(0, ge=0, le=1024,
                         description="torch CPU threads while the stage runs (0 = torch's default, one per core); a "
                                     "fixed number gives the same CPU numbers on machines with other core counts")


class SearchCore(DataConfig):
    """Supernet search: a space, a method, the bi-level optimisation (the keys every method shares;
    ``SearchConfig`` adds the settings each method and plug-in owns)."""

    space: str = Field("nb201", description="nb201 | darts | s1 | s2 | s3 | s4")
    method: str = Field("darts",
                        description="darts | snas | gdas | drnas | sdarts-rs | sdarts-adv | pc-darts | random | rsps | naswot")
    order: Literal[1, 2] = Field(1, description="DARTS: 1 = first order, 2 = second order (unrolled)")
    epochs: int = Field(50, ge=1, le=100_000, description="search epochs")
    seed: int = Field(0, ge=0, le=2**63 - 1,
                      description="seeds the data split, the subset, the supernet, the batches and the samples")
    device: str = Field("auto", description="auto (CUDA when present) | cpu | cuda | cuda:N")
    out: str = Field("runs/search", description="run directory (result.json, checkpoint.pt)")
    train_portion: float = Field(0.5, gt=0.0, lt=1.0,
                                 description="share of the training set that trains w; the rest trains alpha")
    channels: int | None = Field(None, ge=1, le=4096, description="C; None = the space's default (16)")
    cells: int | None = Field(None, ge=1, le=256,
                              description="NB201: cells per stage (5); DARTS spaces: cells in all (8)")
    # w optimiser (NB201 reference search settings)
    w_lr: float = Field(0.025, gt=0.0, le=100.0,
                        description="SGD learning rate of the supernet weights w, cosine-annealed per epoch")
    w_lr_min: float = Field(0.001, ge=0.0, le=100.0, description="end of the cosine schedule")
    w_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum on w")
    w_weight_decay: float = Field(3e-4, ge=0.0, le=1.0, description="SGD weight decay on w")
    grad_clip: float = Field(5.0, ge=0.0, description="gradient-norm clip of the w step (0 = none)")
    # alpha optimiser
    a_lr: float = Field(3e-4, ge=0.0, le=100.0, description="Adam learning rate of α")
    a_beta1: float = Field(0.5, ge=0.0, lt=1.0, description="Adam beta1 of α")
    a_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="Adam beta2 of α")
    a_weight_decay: float | None = Field(None, ge=0.0, le=1.0,
                                         description="None = method default: 1e-3, 0 for drnas (its regulariser)")
    unrolled_eps: float = Field(0.01, gt=0.0, le=100.0,
                                description="finite-difference step (scaled by 1/||dL_val/dw'||), DARTS paper")
    # method seams (see nas/methods): perturbation, partial channels, temperatures, regularisers
    perturb: Literal["auto", "none", "rs", "adv"] = Field("auto", description="auto (method default) | none | rs | adv")
    partial_channels: int = Field(0, ge=0, le=4096,
                                  description="K of PC-DARTS; 0 = method default (4 for pc-darts, else 1)")
    edge_norm: bool | None = Field(None, description="PC-DARTS edge normalisation; None = on for pc-darts only")
    arch_warmup: int | None = Field(None, ge=0, le=100_000,
                                    description="epochs of frozen α at the start of each stage; "
                                                "None = 0, or 20% of a stage when progressive")
    fix_alpha: bool = Field(False,
                            description="keep α at zero (uniform weights), train w only: the fix-α supernet for PT")
    # sharpness: the top eigenvalue of the Hessian of L_val w.r.t. α
    hessian_every: int = Field(0, ge=0, le=100_000, description="compute it every k epochs (0 = off)")
    hessian_batches: int = Field(1, ge=1, le=10**5,
                                 description="fixed, seeded α-split batches the loss is evaluated on")
    hessian_tol: float = Field(1e-3, gt=0.0, le=1.0, description="relative tolerance of the eigenvalue")
    hessian_method: Literal["lanczos", "power"] = Field("lanczos", description="lanczos | power")
    hessian_topk: int = Field(1, ge=1, le=10**6, description="eigenvalues kept per evaluation (lanczos)")
    # early stopping on the eigenvalue (RobustDARTS DARTS-ES); needs hessian_every = 1
    early_stop: bool = Field(False, description="stop when the eigenvalue grows (DARTS-ES)")
    es_window: int = Field(5, ge=1, le=100_000, description="epochs in the local average")
    es_lookback: int = Field(5, ge=1, le=100_000, description="compare with the local average this many epochs earlier")
    es_factor: float = Field(1.3, gt=0.0, le=1e6,
                             description="stop when the local average grew by more than this factor")
    es_start: int = Field(10, ge=0, le=100_000, description="first epoch at which stopping is considered")
    steps_per_epoch: int = Field(0, ge=0, le=10**8,
                                 description="0 = one pass over the w split; >0 caps it (CPU budgets)")
    # data-parallel search and gradient accumulation (nas.parallel)
    accumulate: int = Field(1, ge=1, le=1024,
                            description="micro-batches per step and rank: each global batch is cut into accumulate x "
                                        "ranks slices, each with its own batch-norm statistics, and their gradients "
                                        "are summed before the step (1 process with k = k ranks)")
    nproc: int = Field(1, ge=1, le=1024,
                       description="processes of one data-parallel search on this host: `nas search` starts them "
                                   "under torchrun (GPUs: one each; CPUs: gloo)")
    max_restarts: int = Field(0, ge=0, le=100,
                              description="with nproc > 1: torchrun starts the processes again up to this many times "
                                          "after a failure; they continue from the last checkpoint")
    dist_timeout: float = Field(300.0, gt=0.0, le=86_400.0,
                                description="seconds a rank waits to join the others, and at any collective, "
                                            "before it fails with one line")
    bn_sync: bool = Field(False,
                          description="several ranks: average the batch-norm running statistics over the ranks at "
                                      "the end of every epoch (training uses each micro-batch's own statistics; "
                                      "without it each rank keeps its own and the checkpoint holds rank 0's)")
    dist_check: bool = Field(False,
                             description="after every step, gather α from every rank and stop with one line if "
                                         "any differs from rank 0's (a check of the data-parallel search)")
    checkpoint_every: int = Field(1, ge=1, le=100_000, description="epochs between checkpoints")
    keep_every: int = Field(0, ge=0, le=100_000,
                            description="also keep the supernet of every k-th epoch (epochs/epoch-E.pt) for "
                                        "selection at that epoch (select key `epoch`); 0 = only the last")
    progress: bool = Field(True, description="a progress bar on a terminal")


class RetrainConfig(DataConfig):
    """Train a discrete architecture from scratch and evaluate it on the test split."""

    space: str = Field("nb201", description="nb201 | darts | s1 | s2 | s3 | s4")
    genotype: str = Field("", description="the architecture to train (the space's genotype string)")
    epochs: int | None = Field(None, ge=1, le=100_000, description="200 (NB201) | 600 (DARTS)")
    seed: int = Field(0, ge=0, le=2**63 - 1,
                      description="seeds the initialisation, the subset, the holdout split and the batches")
    device: str = Field("auto", description="auto (CUDA when present) | cpu | cuda | cuda:N")
    out: str = Field("runs/retrain", description="run directory (result.json, model.pt, checkpoint.pt)")
    # None = the space's default: NB201's benchmark recipe, or the DARTS evaluation recipe
    channels: int | None = Field(None, ge=1, le=4096, description="16 | 36")
    cells: int | None = Field(None, ge=1, le=256, description="5 per stage | 20")
    batch_size: int | None = Field(None, ge=1, le=65536, description="256 | 96")
    lr: float | None = Field(None, gt=0.0, le=100.0, description="0.1 | 0.025, cosine-annealed to lr_min")
    lr_min: float = Field(0.0, ge=0.0, le=100.0, description="end of the cosine schedule")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    nesterov: bool | None = Field(None, description="True | False")
    weight_decay: float | None = Field(None, ge=0.0, le=1.0, description="5e-4 | 3e-4")
    grad_clip: float | None = Field(None, ge=0.0, description="0 (none) | 5")
    auxiliary_weight: float | None = Field(None, ge=0.0, le=100.0,
                                           description="0 | 0.4 (DARTS auxiliary head at 2/3 depth)")
    drop_path: float | None = Field(None, ge=0.0, lt=1.0, description="0 | 0.2, ramped linearly over the epochs")
    cutout: int | None = Field(None, ge=0, le=1024, description="0 | 16 pixels")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing of the cross-entropy")
    eval_every: int = Field(0, ge=0, le=100_000,
                            description="evaluate on the test split every k epochs (0 = only at the end)")
    holdout: float = Field(0.0, ge=0.0, lt=1.0,
                           description="share of the training images held out as a validation split (0 = none)")
    checkpoint_every: int = Field(1, ge=1, le=100_000, description="epochs between checkpoints")
    progress: bool = Field(True, description="a progress bar on a terminal")


class SelectConfig(_Config):
    """Selection of the final architecture from a finished search run."""

    method: Literal["magnitude", "pt", "verify"] = Field(
        "magnitude", description="magnitude | pt | verify (train the best few candidate cells briefly, keep the best "
                                 "on the α split)")
    run: str = Field("", description="the search run directory")
    epoch: int = Field(0, ge=0, le=100_000,
                       description="select from the supernet kept at this search epoch (search key keep_every); "
                                   "0 = the final one")
    out: str | None = Field(None, description="where selection.json goes (none = not written)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="PT edge order")
    device: str = Field("auto", description="auto (CUDA when present) | cpu | cuda | cuda:N")
    nproc: int = Field(1, ge=1, le=1024,
                       description="PT in this many processes of this host under torchrun: the evaluations split "
                                   "between them, the tuning epochs data-parallel (needs out)")
    pt_tune_epochs: int = Field(5, ge=0, le=100_000,
                                description="fine-tuning epochs between PT decisions (the reference uses 5)")
    pt_batches: int = Field(0, ge=0, le=10**8,
                            description="α-split batches per accuracy measurement (0 = the whole split)")
    pt_lr_factor: float = Field(0.1, gt=0.0, le=100.0, description="fine-tuning learning rate = w_lr * this")
    pt_removal: Literal["mask", "renormalise"] = Field(
        "mask", description="how PT takes an op out of its edge to measure it: mask (its weight times 0, the "
                            "others unchanged, as the PT authors' code) | renormalise (the others rescaled to sum 1)")
    pt_tune_alpha: bool = Field(True, description="α steps as well as w steps in the tuning epochs between PT "
                                                   "decisions, as the PT authors' code (never on a fix-α supernet)")
    pt_bn: Literal["batch", "running"] = Field(
        "batch", description="batch-norm statistics while PT measures accuracy: batch (each batch's own, as the "
                             "PT authors' code; the running ones are left untouched) | running")
    verify_candidates: int = Field(8, ge=1, le=1000,
                                   description="verify: distinct candidate cells trained briefly (magnitude first)")
    verify_epochs: int = Field(5, ge=1, le=100_000,
                               description="verify: epochs each candidate trains on the w split (the random "
                                           "baseline's random_epochs)")
    verify_history: int = Field(2, ge=0, le=100_000,
                                description="verify: at most this many candidates from the cells α gave at "
                                            "earlier epochs, latest first")
    verify_with: list[str] = Field(default_factory=list,
                                   description="verify: selection.json files (e.g. PT's) whose cells join the "
                                               "candidates after the magnitude cell")
    data: str | None = Field(None, description="verify: the search's data at another path (none = the path in "
                                               "its result.json)")
    progress: bool = Field(True, description="a progress bar on a terminal")


class PrepareConfig(_Config):
    """Decode a dataset once into a tensor file with a manifest."""

    dataset: str = Field("digits", description="digits (embedded) | cifar10 | cifar100 | svhn | imagefolder | prepared")
    data: str | None = Field(None, description="archive, folder or prepared .pt file; None = embedded default")
    cache_dir: str = Field("data/prepared", description="where decoded datasets are kept")




_SEARCH: dict[tuple[str, ...], type] = {}  # the composed search config, per set of registered methods


def search_config() -> type:
    """``SearchConfig``: the shared keys (``SearchCore``) and the settings every registered method
    and plug-in owns (``nas.methods.settings_models``), composed on first use and again after a
    method is registered; keys keep their flat names."""
    from nas.methods import REGISTRY

    names = tuple(REGISTRY)
    if names not in _SEARCH:
        _SEARCH.clear()
        _SEARCH[names] = _compose_search()
    return _SEARCH[names]


def _compose_search() -> type:
    from pydantic import create_model

    from nas.methods import settings_models

    fields: dict[str, Any] = {}
    for model in settings_models():
        for name, info in model.model_fields.items():
            if name in SearchCore.model_fields:
                raise NasError(f"settings {model.__name__}: {name!r} is a key every method shares")
            if name in fields and (fields[name][0] != info.annotation or fields[name][1].default != info.default):
                raise NasError(f"settings {model.__name__}: {name!r} is declared by another method with another "
                               f"type or default")
            fields.setdefault(name, (info.annotation, info))
    cls = create_model("SearchConfig", __base__=SearchCore, __module__=__name__, **fields)
    cls.__doc__ = "Supernet search: the shared keys and the settings each method and plug-in owns."
    cls.__qualname__ = "SearchConfig"
    return cls


def __getattr__(name: str) -> Any:
    if name == "SearchConfig":
        return search_config()
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Configs(Mapping):
    """Stage name -> its config class (the search's composed on first use)."""

    _fixed: dict[str, type] = {"retrain": RetrainConfig, "prepare": PrepareConfig, "select": SelectConfig}

    def __getitem__(self, kind: str) -> type:
        return search_config() if kind == "search" else self._fixed[kind]

    def __iter__(self) -> Any:
        return iter(("search", "retrain", "prepare", "select"))

    def __len__(self) -> int:
        return 4


CONFIGS = _Configs()


def _suggest(key: Any, known: Any) -> str:
    """`` (did you mean 'epochs'?)`` for a misspelt key, else a pointer to the list of keys."""
    import difflib

    close = difflib.get_close_matches(str(key)[:100], sorted(known), n=3)
    if close:
        return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
    return " (`nas search --list-keys` lists every key)"


MAX_SET_DEPTH = 64


def parse_set(item: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (numbers, booleans, null, strings)."""
    if "=" not in item:
        raise NasError(f"--set: expected key=value, got {clip(item)}")
    key, raw = item.split("=", 1)
    key = key.strip()
    depth = deepest = 0
    for c in raw:  # counted first: PyYAML takes seconds to give up on thousands of levels
        depth += (c in "[{") - (c in "]}")
        deepest = max(deepest, depth)
    if deepest > MAX_SET_DEPTH:
        raise NasError(f"--set {clip(key, 40)}: the value is nested too deeply (more than {MAX_SET_DEPTH} levels)")
    try:
        value = yaml.load(raw, Loader=StrictLoader) if raw.strip() else ""
    except yaml.YAMLError:  # not YAML (a genotype string starts with '|'): the text itself
        value = raw
    except RecursionError:
        raise NasError(f"--set {clip(key, 40)}: the value is nested too deeply") from None
    except Exception as exc:  # a tag that does not fit its text (!!int 3.5, !!timestamp 1): PyYAML's own error
        raise NasError(f"--set {clip(key, 40)}: {clip(raw, 60)} is not a valid value "
                       f"({clip(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 80)})") from None
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


# YAML 1.1 reads 1:30 as the base-60 number 90 (and 1:30.5 as 90.5) and 1e-3 as text; here, as in
# YAML 1.2, 1e-3 is a number and 1:30 stays text, which a key that wants a number refuses
_INT = r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
_FLOAT = (r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
          r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"  # 1e-3, as YAML 1.2 reads it
          r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, re.compile(_INT if tag.endswith(":int") else _FLOAT) if tag.endswith((":int", ":float"))
             else rx) for tag, rx in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


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
    except (ValueError, TypeError, OverflowError, AttributeError) as exc:  # a tag that does not fit its text
        raise NasError(f"{path}: not valid YAML ({clip(str(exc).splitlines()[0] if str(exc) else '', 80)})") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None)
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        text = problem or str(exc).splitlines()[0]
        raise NasError(f"{path}: not valid YAML ({text[:200]}{where})") from None
    if not isinstance(loaded, dict):
        raise NasError(f"{path}: expected a mapping of key: value at the top level")
    return loaded


def load_yaml_text(path: str | Path, what: str = "config file") -> str:
    """The text of a YAML file, checked as ``load_yaml`` checks it (to ship it to another machine)."""
    load_yaml(path, what)
    return Path(path).read_text(encoding="utf-8")


def build_config(
    kind: str,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> Any:
    """Defaults < YAML file < explicit ``overrides`` < ``--set`` items, all validated."""
    cls = CONFIGS[kind]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def apply(items: dict[str, Any], source: str) -> None:
        for key, value in items.items():
            if key not in cls.model_fields:
                raise NasError(f"{source}: unknown key {clip(key, 60)} for '{kind}'{_suggest(key, cls.model_fields)}")
            values[key] = value
            sources[key] = source

    if config_file is not None:
        path = Path(config_file)
        loaded = load_yaml(path)
        # A file may hold one section per stage (as params files do); take ours if present.
        if kind in loaded and isinstance(loaded[kind], dict):
            loaded = loaded[kind]
        else:
            # the other stages' sections and a protocol's grid section are not ours
            loaded = {k: v for k, v in loaded.items() if not ((k in CONFIGS or k == "grid") and isinstance(v, dict))}
        apply(loaded, str(path))
    if overrides:
        apply({k: v for k, v in overrides.items() if v is not None}, "command line")
    for item in sets or []:
        key, value = parse_set(item)
        apply({key: value}, f"--set {cut(item)}")
    cfg = _build(cls, values, sources)
    validate(cfg)
    if kind == "search":
        _refuse_foreign(cfg, sources)
    return cfg


def _refuse_foreign(cfg: Any, sources: dict[str, str]) -> None:
    """A method setting a user gives with ``--set`` that the chosen method never reads is refused,
    naming the methods it belongs to.  A params file may declare every method's settings (a
    protocol's search section is shared by the methods of its grid), and a run's saved config
    holds them all."""
    from nas.methods import foreign_settings

    explicit = [k for k, src in sources.items() if src.startswith("--set ")]
    for key, owners in foreign_settings(cfg, explicit):
        who = " and ".join(owners) if len(owners) <= 2 else f"the supernet methods ({', '.join(owners)})"
        raise NasError(f"{sources[key]}: key '{key}' belongs to {who}; method '{cfg.method}' "
                       f"does not read it (choose --method {owners[0]}, or leave the key out)")


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _build(cls: type, values: dict[str, Any], sources: dict[str, str]) -> Any:
    """``cls(**values)``, with pydantic's first complaint turned into one line that names the key,
    where it came from, what was expected and what was given."""
    try:
        return cls(**values)
    except ValidationError as exc:
        errors = exc.errors()
        # for `int | None` keys pydantic reports one error per branch: the range one says most
        err = next((e for e in errors if e["type"] in _RANGE_ERRORS | {"literal_error", "finite_number"}), errors[0])
        key = str(err["loc"][0]) if err["loc"] else "?"
        value = values.get(key)
        source = sources.get(key, "config")
        if err["type"] in _RANGE_ERRORS:
            raise NasError(f"config: key {key!r} must be {_range_text(*_field_ranges()[key])}, got {clip(value, 80)}") from None
        if err["type"] == "literal_error":
            raise NasError(f"config: key {key!r} must be one of {', '.join(map(str, _field_choices()[key]))}, "
                           f"got {clip(value, 80)}") from None
        if err["type"] == "finite_number" or (isinstance(value, float) and not math.isfinite(value)):
            raise NasError(f"{source}: key {key!r} expects a finite number, got {clip(value, 100)}") from None
        if isinstance(value, int) and not isinstance(value, bool) and _type_text(key) == "float":
            raise NasError(f"{source}: key {key!r} expects a finite number, got {clip(value, 100)}") from None
        raise NasError(f"{source}: key {key!r} expects {_type_text(key)}, got {clip(value, 100)}") from None


def _type_text(key: str, first: type | None = None) -> str:
    """``int``, ``float or null``, ...: the type a key takes, as an error message names it."""
    for cls in [first] if first is not None and key in first.model_fields else CONFIGS.values():
        if key in cls.model_fields:
            annotation = cls.model_fields[key].annotation
            break
    else:
        return "?"
    args = typing.get_args(annotation) or (annotation,)
    return " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in args)


def _field_ranges() -> dict[str, tuple[float | None, float | None, bool, bool]]:
    """(low, high, low included, high included) of every numeric key, read off the models' fields."""
    import annotated_types as at

    out: dict[str, tuple[float | None, float | None, bool, bool]] = {}
    for cls in CONFIGS.values():
        for name, f in cls.model_fields.items():
            lo = hi = None
            lo_in = hi_in = True
            for m in f.metadata:
                if isinstance(m, at.Ge):
                    lo, lo_in = m.ge, True
                elif isinstance(m, at.Gt):
                    lo, lo_in = m.gt, False
                elif isinstance(m, at.Le):
                    hi, hi_in = m.le, True
                elif isinstance(m, at.Lt):
                    hi, hi_in = m.lt, False
            if lo is not None or hi is not None:
                out[name] = (lo, hi, lo_in, hi_in)
    return out


def _field_choices() -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for cls in CONFIGS.values():
        for name, f in cls.model_fields.items():
            if typing.get_origin(f.annotation) is Literal:
                out[name] = typing.get_args(f.annotation)
    return out


# Range of each numeric key and the choices of each choice key, as the models declare them (the
# error messages and the tests read them as ``RANGES`` and ``CHOICES``, made on first use).  A key
# that is None means "the default of the space or method" and is not checked.
_DERIVED = {"RANGES": _field_ranges, "CHOICES": _field_choices}


def _range_text(lo: float | None, hi: float | None, lo_in: bool, hi_in: bool) -> str:
    left = "[" if lo_in else "("
    right = "]" if hi_in else ")"
    if hi is None:
        return f">= {lo}" if lo_in else f"> {lo}"
    return f"in {left}{lo}, {hi}{right}"


def validate(cfg: Any) -> None:
    """The checks between keys (and against the spaces, datasets and methods) that the models'
    per-key types and ranges cannot express, before any work starts."""
    def need(cond: bool, key: str, what: str) -> None:
        if not cond:
            raise NasError(f"config: key {key!r} {what}, got {clip(getattr(cfg, key), 80)}")

    if hasattr(cfg, "out") and cfg.out is not None:
        need(str(cfg.out).strip() != "", "out", "must name a folder (an empty path would write into the current folder)")
    if hasattr(cfg, "cache_dir"):
        need(str(cfg.cache_dir).strip() != "", "cache_dir", "must name a folder")
    if isinstance(cfg, (DataConfig, PrepareConfig)):
        from nas.data import DATASETS

        need(cfg.dataset in DATASETS, "dataset", "must be one of " + ", ".join(DATASETS))
    if isinstance(cfg, SearchCore):
        from nas.methods import build_method
        from nas.spaces import get_space

        need(cfg.w_lr_min <= cfg.w_lr, "w_lr_min", f"must be <= w_lr ({cfg.w_lr})")
        need(cfg.tau_min is None or cfg.tau_max is None or cfg.tau_min <= cfg.tau_max, "tau_min",
             f"must be <= tau_max ({cfg.tau_max})")
        need(not cfg.early_stop or cfg.hessian_every == 1, "hessian_every", "must be 1 when early_stop is on")
        space = get_space(cfg.space)
        n_alpha = space.alpha_shape[0] * space.alpha_shape[1]
        need(cfg.hessian_topk <= n_alpha, "hessian_topk", f"must be <= the {n_alpha} entries of alpha in space {space.name}")
        fewest = min(len(ops) for ops in space.edge_ops)
        need(not cfg.progressive or cfg.progressive_keep is None or cfg.progressive_keep <= fewest, "progressive_keep",
             f"must be <= the {fewest} candidate ops of an edge in space {space.name}")
        stage = cfg.epochs // 2 if cfg.progressive else cfg.epochs  # the warm-up opens each progressive stage
        need(cfg.arch_warmup is None or cfg.arch_warmup < stage, "arch_warmup",
             f"must be < {'the first progressive stage' if cfg.progressive else 'epochs'} ({stage}): α would never "
             f"be trained")
        need(cfg.keep_every <= cfg.epochs, "keep_every", f"must be <= epochs ({cfg.epochs})")
        from nas.methods import effective_perturb

        strength = {"rs": ("rs_sigma", cfg.rs_sigma), "adv": ("adv_epsilon", cfg.adv_epsilon)}.get(effective_perturb(cfg))
        need(strength is None or cfg.eps_start <= strength[1], "eps_start",
             f"must be <= {strength[0] if strength else ''} ({strength[1] if strength else ''}): the ramp rises "
             f"from eps_start to the strength")
        need(strength is None or cfg.epochs >= 2, "epochs", f"must be >= 2 with perturbation {effective_perturb(cfg)}: "
             f"the first epoch perturbs with eps_start, so with one epoch {strength[0] if strength else ''} is never used")
        build_method(cfg)  # combinations of method keys that make no sense
    if isinstance(cfg, RetrainConfig):
        need(cfg.lr is None or cfg.lr_min <= cfg.lr, "lr_min", f"must be <= lr ({cfg.lr})")
        if cfg.space:
            from nas.spaces import get_space

            get_space(cfg.space)


def key_help(kind: str, shared_only: bool = False) -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every key of a stage, from the models' fields
    (``shared_only``: a search's shared keys only, without composing the methods' settings)."""
    rows = []
    cls = SearchCore if kind == "search" and shared_only else CONFIGS[kind]
    for name, f in cls.model_fields.items():
        default = f.default
        shown = "auto" if default is None and name in _SPACE_DEFAULTS else \
            ("null" if default is None else str(default).lower() if isinstance(default, bool) else repr(default)
             if isinstance(default, str) else str(default))
        rows.append((name, _type_text(name, cls), shown, f.description or ""))
    return rows


# Keys whose None means "the space's or the method's default".
_SPACE_DEFAULTS = {"channels", "cells", "epochs", "batch_size", "lr", "nesterov", "weight_decay", "grad_clip",
                   "auxiliary_weight", "drop_path", "cutout", "a_weight_decay", "edge_norm", "tau_max", "tau_min",
                   "arch_warmup", "flip", "progressive_keep"}


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
    fill = {k: v for k, v in defaults.items() if k in type(cfg).model_fields and getattr(cfg, k) is None}
    return cfg.model_copy(update=fill) if fill else cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return cfg.model_dump()


def config_fields(kind: str) -> list[str]:
    """The keys of a stage, in declaration order."""
    return list(CONFIGS[kind].model_fields)


__all__ = ["DataConfig", "SearchCore", "search_config", "RetrainConfig", "PrepareConfig", "SelectConfig", "build_config",
           "from_dict", "to_dict", "key_help"]


def from_dict(kind: str, values: dict[str, Any], source: str = "config") -> Any:
    """A validated config of ``kind`` from a plain dict (as flows pass them); unknown keys are named."""
    cls = CONFIGS[kind]
    for key in values:
        if key not in cls.model_fields:
            raise NasError(f"{source}: unknown key {clip(key, 60)} for '{kind}'{_suggest(key, cls.model_fields)}")
    cfg = _build(cls, dict(values), {k: source for k in values})
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

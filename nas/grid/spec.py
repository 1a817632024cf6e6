"""A grid protocol: its methods, seeds and selections, read and checked from a params file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from nas import config as config_mod
from nas import methods as _methods
from nas.utils import NasError, clip

# What a finished cell leaves in the report folder (``<report>/cells/<cell>/``): its JSON results
# (the search's result.json with the α history and Hessian spectrum, each selection, the epoch
# curve, the strength analysis, the landscape, each retrain's result), never a weight file.  A
# grid on another machine, with the committed report and an empty run folder, reads finished
# cells back from there instead of computing them again.
ARCHIVE = "cells"

DATASETS = ("cifar10", "cifar100", "imagenet16-120")
# pt-fix: PT on a supernet trained with α held at uniform (DARTS-PT's "fix α" column)
# verify: the best of a few candidate cells trained briefly (nas.verify), PT's cell among them where
# the cell has a PT row
SELECTIONS = ("magnitude", "pt", "pt-fix", "verify")
RUN_FIELDS = ["protocol", "method", "selection", "seed", "genotype", *DATASETS, "search_minutes",
              "select_minutes", "final_eigenvalue", "skip_edges"]
# the rows of a grid whose cells are trained from scratch (spaces without a lookup table)
RETRAIN_FIELDS = ["protocol", "space", "method", "selection", "seed", "genotype", "test_acc", "test_error",
                  "params_m", "normal_skip", "normal_noise", "normal_none", "search_minutes", "select_minutes",
                  "retrain_minutes", "final_eigenvalue"]


@dataclasses.dataclass
class GridSpec:
    protocol: str  # the params file
    name: str  # the protocol's name (file stem)
    methods: list[str]
    seeds: list[int]
    selections: list[str]
    pt_methods: list[str] | None
    strength: list[str]  # the rows whose first seed's supernet gets the op-strength analysis
    out: str  # run directories (caches)
    report: str  # table, CSV, figures
    landscape: bool = False  # L_val around α on each α-trained method's first seed (figures/landscape.png)
    # selection against the search epoch: {"methods": [...], "seeds": [...], "every": k} (figures/search_epochs.png)
    curve: dict[str, Any] | None = None
    # several search spaces (grid.spaces): one cell per (space, method, seed); None = search.space
    spaces: list[str] | None = None
    # every selected cell is trained from scratch with the protocol's retrain section (spaces
    # without a lookup table); the rows are then RETRAIN_FIELDS
    retrain: bool = False
    # named method variants (grid.variants): {name: {"method": m, <search keys>}}
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # report folders of other grids whose archived cells seed this grid's unstarted cells (grid.reuse):
    # a search with the same config is then read back, not run again
    reuse: list[str] = dataclasses.field(default_factory=list)

    def cells(self) -> list[tuple[str | None, str, int]]:
        """(space or None, method, seed) for every cell; space-major, then method, then seed."""
        return [(sp, m, s) for sp in (self.spaces or [None]) for m in self.methods for s in self.seeds]

    def base_method(self, name: str) -> str:
        """The method a grid entry runs (itself, or the method of the variant it names)."""
        return self.variants[name]["method"] if name in self.variants else name

    def labels(self) -> list[tuple[str, str | None, str]]:
        """(label, space, method) per space and method: the label keys the figures and curves
        (the method alone on a one-space grid, ``space/method`` otherwise)."""
        return [(f"{sp}/{m}" if sp else m, sp, m) for sp in (self.spaces or [None]) for m in self.methods]

    def cell_dir(self, space: str | None, method: str, seed: int) -> Path:
        return cell_dir(self.out, space, method, seed)

    def curve_every(self, method: str, seed: int) -> int:
        """Every how many epochs the (method, seed) search keeps its supernet for the epoch curve (0 = not)."""
        c = self.curve
        return c["every"] if c and method in c["methods"] and seed in c["seeds"] else 0


def cell_dir(out: str | Path, space: str | None, method: str, seed: int) -> Path:
    """A cell's run directory: ``<out>/<method>-s<seed>`` or, on a several-space grid,
    ``<out>/<space>-<method>-s<seed>``."""
    return Path(out) / f"{space + '-' if space else ''}{method}-s{seed}"


def _list(raw: Any, key: str, source: str, kind: type) -> list:
    if not isinstance(raw, list) or not raw or not all(isinstance(v, kind) and not isinstance(v, bool) for v in raw):
        raise NasError(f"{source}: key 'grid.{key}' expects a non-empty list of {kind.__name__}, got {clip(raw, 80)}")
    return raw


def load_grid(protocol: str | Path, out: str | None = None, report: str | None = None,
              methods: list[str] | None = None, seeds: list[int] | None = None,
              selections: list[str] | None = None) -> GridSpec:
    """Read and check a protocol's ``grid:`` section (arguments override it)."""
    path = Path(protocol)
    doc = config_mod.load_yaml(path, "protocol file")
    grid = doc.get("grid", {})
    if not isinstance(grid, dict):
        raise NasError(f"{path}: key 'grid' expects a mapping")
    known = {"methods", "seeds", "selections", "pt_methods", "strength", "landscape", "curve", "spaces", "retrain",
             "variants", "reuse"}
    for key in grid:
        if key not in known:
            raise NasError(f"{path}: unknown key 'grid.{key}' (known: {', '.join(sorted(known))})")
    variants = _variants(grid.get("variants"), path)
    methods = methods or _list(grid.get("methods", ["darts"]), "methods", str(path), str)
    seeds = seeds or _list(grid.get("seeds", [1]), "seeds", str(path), int)
    selections = selections or _list(grid.get("selections", ["magnitude"]), "selections", str(path), str)
    _check_names(path, methods, selections, variants)
    spaces = _spaces(grid.get("spaces"), path)
    pt_methods = grid.get("pt_methods")
    if pt_methods is not None:
        pt_methods = _list(pt_methods, "pt_methods", str(path), str)
    strength, landscape = _strength(grid.get("strength", False), path, methods, variants), _flag(grid, "landscape", path)
    curve = _curve(grid.get("curve"), str(path), methods, seeds)
    # the search and select sections must be valid too, before any work starts
    search_cfg = config_mod.build_config("search", path)
    config_mod.build_config("select", path)
    from nas.spaces import get_space

    looked_up = all(get_space(sp).benchmark is not None for sp in (spaces or [search_cfg.space]))
    retrain = grid.get("retrain", not looked_up)
    if not isinstance(retrain, bool):
        raise NasError(f"{path}: key 'grid.retrain' expects bool, got {clip(retrain, 80)}")
    if not retrain and not looked_up:
        raise NasError(f"{path}: key 'grid.retrain' is false, but a space of the grid has no lookup table "
                       f"(only nb201 has): its cells must be trained from scratch")
    if retrain:
        config_mod.build_config("retrain", path)
        if curve:
            raise NasError(f"{path}: key 'grid.curve' looks the kept supernets' cells up in NAS-Bench-201; "
                           f"a grid that retrains (grid.retrain or a space without a table) cannot have it")
    name = path.stem
    return GridSpec(str(path), name, list(methods), [int(s) for s in seeds], list(selections), pt_methods, strength,
                    out or f"runs/grid/{name}", report or f"data/results/{name}", landscape, curve,
                    list(spaces) if spaces else None, retrain, variants, _reuse(grid.get("reuse"), path))


def _reuse(value: Any, path: Path) -> list[str]:
    """``grid.reuse``: report folders (relative to the current folder) that exist and hold archived
    cells; a misspelt folder would otherwise silently compute every search again."""
    if not value:
        return []
    folders = _list(value, "reuse", str(path), str)
    for folder in folders:
        if not (Path(folder) / ARCHIVE).is_dir():
            raise NasError(f"{path}: key 'grid.reuse' names {folder!r}, which has no {ARCHIVE}/ folder "
                           f"(expected a grid's report folder, read from {Path.cwd()})")
    return folders


def _strength(value: Any, path: Path, methods: list[str], variants: dict[str, Any]) -> list[str]:
    """``grid.strength``: true (every row), false, or a list of the rows that get the analysis (those
    of them among the grid's methods, which ``--methods`` may narrow)."""
    if isinstance(value, bool):
        return list(methods) if value else []
    rows = _list(value, "strength", str(path), str)
    unknown = [m for m in rows if m not in _methods.METHOD_NAMES and m not in variants]
    if unknown:
        raise NasError(f"{path}: key 'grid.strength' names {unknown[0]!r}, which is neither a method nor a "
                       f"grid.variants name; expected true, false or a list of grid rows")
    return [m for m in methods if m in rows]


def _flag(grid: dict[str, Any], key: str, path: Path) -> bool:
    value = grid.get(key, False)
    if not isinstance(value, bool):
        raise NasError(f"{path}: key 'grid.{key}' expects bool, got {clip(value, 80)}")
    return value


def _check_names(path: Path, methods: list[str], selections: list[str], variants: dict[str, Any]) -> None:
    for m in methods:
        if m not in _methods.METHOD_NAMES and m not in variants:
            raise NasError(f"{path}: unknown method {m!r} in grid.methods (expected one of {', '.join(_methods.METHOD_NAMES)}"
                           f"{' or a grid.variants name' if variants else ''})")
    for s in selections:
        if s not in SELECTIONS:
            raise NasError(f"{path}: unknown selection {s!r} in grid.selections (expected one of "
                           f"{', '.join(SELECTIONS)})")


def _spaces(raw: Any, path: Path) -> list[str] | None:
    if raw is None:
        return None
    from nas.spaces import SPACE_NAMES as SPACES

    spaces = _list(raw, "spaces", str(path), str)
    for sp in spaces:
        if sp not in SPACES:
            raise NasError(f"{path}: unknown space {sp!r} in grid.spaces (expected one of {', '.join(SPACES)})")
    return spaces


def _variants(raw: Any, path: Path) -> dict[str, dict[str, Any]]:
    """``grid.variants``: named methods with search settings of their own, e.g.
    ``darts-2nd: {method: darts, order: 2}``; each is checked as a search config."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise NasError(f"{path}: key 'grid.variants' expects a mapping of name -> settings, got {clip(raw, 80)}")
    out = {}
    for name, settings in raw.items():
        if not isinstance(settings, dict) or settings.get("method") not in _methods.METHOD_NAMES:
            raise NasError(f"{path}: key 'grid.variants.{name}' expects a mapping with 'method' one of "
                           f"{', '.join(_methods.METHOD_NAMES)}, got {clip(settings, 80)}")
        if name in _methods.METHOD_NAMES and settings["method"] != name:  # a method's own name: that method, other settings
            raise NasError(f"{path}: key 'grid.variants.{name}' names the method {name!r} but runs "
                           f"{settings['method']!r}; give the variant a name of its own")
        try:
            config_mod.build_config("search", path, dict(settings))
        except NasError as exc:
            raise NasError(f"{path}: key 'grid.variants.{name}': {exc}") from None
        out[str(name)] = dict(settings)
    return out


def _curve(raw: Any, source: str, methods: list[str], seeds: list[int]) -> dict[str, Any] | None:
    """``grid.curve``: which searches keep their supernet every ``every`` epochs, so that the
    selections can be made and looked up against the search epoch."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"methods", "seeds", "every"} or "every" not in raw:
        raise NasError(f"{source}: key 'grid.curve' expects a mapping with 'every' and optional 'methods', 'seeds', "
                       f"got {clip(raw, 80)}")
    every = raw["every"]
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise NasError(f"{source}: key 'grid.curve.every' expects a positive int, got {clip(every, 80)}")
    cm = _list(raw.get("methods", methods), "curve.methods", source, str)
    cs = _list(raw.get("seeds", seeds), "curve.seeds", source, int)
    for m in cm:
        if m not in methods:
            raise NasError(f"{source}: grid.curve.methods names {m!r}, which is not in grid.methods")
    return {"methods": list(cm), "seeds": [int(s) for s in cs], "every": every}



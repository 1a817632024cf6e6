"""A grid protocol: its methods, seeds and selections, read and checked from a params file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from nas import config as config_mod
from nas.methods import METHOD_NAMES as METHODS
from nas.utils import NasError

DATASETS = ("cifar10", "cifar100", "imagenet16-120")
SELECTIONS = ("magnitude", "pt")
RUN_FIELDS = ["protocol", "method", "selection", "seed", "genotype", *DATASETS, "search_minutes",
              "select_minutes", "final_eigenvalue", "skip_edges"]


@dataclasses.dataclass
class GridSpec:
    protocol: str  # the params file
    name: str  # the protocol's name (file stem)
    methods: list[str]
    seeds: list[int]
    selections: list[str]
    pt_methods: list[str] | None
    strength: bool
    out: str  # run directories (caches)
    report: str  # table, CSV, figures
    landscape: bool = False  # L_val around α on each α-trained method's first seed (figures/landscape.png)
    # selection against the search epoch: {"methods": [...], "seeds": [...], "every": k} (figures/search_epochs.png)
    curve: dict[str, Any] | None = None

    def cells(self) -> list[tuple[str, int]]:
        return [(m, s) for m in self.methods for s in self.seeds]

    def curve_every(self, method: str, seed: int) -> int:
        """Every how many epochs the (method, seed) search keeps its supernet for the epoch curve (0 = not)."""
        c = self.curve
        return c["every"] if c and method in c["methods"] and seed in c["seeds"] else 0


def _list(raw: Any, key: str, source: str, kind: type) -> list:
    if not isinstance(raw, list) or not raw or not all(isinstance(v, kind) and not isinstance(v, bool) for v in raw):
        raise NasError(f"{source}: key 'grid.{key}' expects a non-empty list of {kind.__name__}, got {raw!r}")
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
    known = {"methods", "seeds", "selections", "pt_methods", "strength", "landscape", "curve"}
    for key in grid:
        if key not in known:
            raise NasError(f"{path}: unknown key 'grid.{key}' (known: {', '.join(sorted(known))})")
    methods = methods or _list(grid.get("methods", ["darts"]), "methods", str(path), str)
    seeds = seeds or _list(grid.get("seeds", [1]), "seeds", str(path), int)
    selections = selections or _list(grid.get("selections", ["magnitude"]), "selections", str(path), str)
    for m in methods:
        if m not in METHODS:
            raise NasError(f"{path}: unknown method {m!r} in grid.methods (expected one of {', '.join(METHODS)})")
    for s in selections:
        if s not in SELECTIONS:
            raise NasError(f"{path}: unknown selection {s!r} in grid.selections (expected magnitude or pt)")
    pt_methods = grid.get("pt_methods")
    if pt_methods is not None:
        pt_methods = _list(pt_methods, "pt_methods", str(path), str)
    strength = grid.get("strength", False)
    if not isinstance(strength, bool):
        raise NasError(f"{path}: key 'grid.strength' expects bool, got {strength!r}")
    landscape = grid.get("landscape", False)
    if not isinstance(landscape, bool):
        raise NasError(f"{path}: key 'grid.landscape' expects bool, got {landscape!r}")
    curve = _curve(grid.get("curve"), str(path), methods, seeds)
    # the search and select sections must be valid too, before any work starts
    config_mod.build_config("search", path)
    config_mod.build_config("select", path)
    name = path.stem
    return GridSpec(str(path), name, list(methods), [int(s) for s in seeds], list(selections), pt_methods, strength,
                    out or f"runs/grid/{name}", report or f"data/results/{name}", landscape, curve)


def _curve(raw: Any, source: str, methods: list[str], seeds: list[int]) -> dict[str, Any] | None:
    """``grid.curve``: which searches keep their supernet every ``every`` epochs, so that the
    selections can be made and looked up against the search epoch."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"methods", "seeds", "every"} or "every" not in raw:
        raise NasError(f"{source}: key 'grid.curve' expects a mapping with 'every' and optional 'methods', 'seeds', "
                       f"got {raw!r}")
    every = raw["every"]
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise NasError(f"{source}: key 'grid.curve.every' expects a positive int, got {every!r}")
    cm = _list(raw.get("methods", methods), "curve.methods", source, str)
    cs = _list(raw.get("seeds", seeds), "curve.seeds", source, int)
    for m in cm:
        if m not in methods:
            raise NasError(f"{source}: grid.curve.methods names {m!r}, which is not in grid.methods")
    return {"methods": list(cm), "seeds": [int(s) for s in cs], "every": every}



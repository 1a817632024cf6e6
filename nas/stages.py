"""The pipeline's stages as plain functions: config in, files out.

The CLI, DVC stages and Prefect flows all call these; none of them re-implements a stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nas import config as config_mod
from nas.benchmarks import load_table
from nas.data import load_prepared, prepare
from nas.search import RESULT as SEARCH_RESULT
from nas.search import search
from nas.spaces import get_space
from nas.train import count_macs, count_params, retrain
from nas.utils import NasError, write_json

SELECTION_METHODS = ("magnitude",)


def prepare_stage(cfg: config_mod.PrepareConfig) -> dict[str, Any]:
    """Decode a dataset into the cache; returns its manifest (with ``path``)."""
    path = prepare(cfg.dataset, cfg.data, cfg.cache_dir)
    manifest = load_prepared(path).manifest
    return {"path": str(path), **manifest}


def search_stage(cfg: config_mod.SearchConfig, resume: bool = False) -> dict[str, Any]:
    return search(cfg, resume=resume)


def read_search_result(run: str | Path) -> dict[str, Any]:
    path = Path(run)
    if path.is_dir():
        path = path / SEARCH_RESULT
    if not path.is_file():
        raise NasError(f"{path}: search result not found (expected a run directory written by 'nas search')")
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NasError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    for key in ("space", "weights", "genotype"):
        if key not in res:
            raise NasError(f"{path}: missing key {key!r}")
    return res


def select_stage(run: str | Path, method: str = "magnitude", out: str | Path | None = None) -> dict[str, Any]:
    """Choose the final architecture of a finished search; writes ``<out>/selection.json``."""
    if method not in SELECTION_METHODS:
        raise NasError(f"select: unknown method {method!r} (expected one of {', '.join(SELECTION_METHODS)})")
    res = read_search_result(run)
    if res.get("selection") in ("rsps", "random"):
        raise NasError(f"{run}: searched with {res['selection']!r}, which trains no α; its architecture "
                       f"({res['genotype']}) was selected by {res['selection']}, not by magnitude")
    space = get_space(res["space"])
    weights = torch.tensor(res["weights"])
    if tuple(weights.shape) != space.alpha_shape:
        raise NasError(f"{run}: weights have shape {tuple(weights.shape)}, expected {space.alpha_shape}")
    geno = space.select_magnitude(weights)
    sel = {"space": space.name, "selection": method, "genotype": space.format_genotype(geno),
           "run": str(run), "search_method": res.get("method")}
    if out is not None:
        write_json(Path(out) / "selection.json", sel)
    return sel


def lookup_stage(genotype: str, dataset: str = "cifar10", table: str | None = None) -> dict[str, Any]:
    return load_table(table).lookup(genotype, dataset)


def info_stage(space_name: str, genotype: str, channels: int = 16, cells: int = 5, num_classes: int = 10,
               in_channels: int = 3, resolution: int = 32) -> dict[str, Any]:
    """Parameter count and multiply-accumulates of the discrete network of a genotype."""
    space = get_space(space_name)
    geno = space.parse_genotype(genotype)
    net = space.build_network(geno, channels, cells, num_classes, in_channels)
    macs = count_macs(net, (in_channels, resolution, resolution))
    return {"space": space.name, "genotype": space.format_genotype(geno), "channels": channels, "cells": cells,
            "num_classes": num_classes, "resolution": resolution, "params": count_params(net),
            "macs": macs, "flops": 2 * macs}


def retrain_stage(cfg: config_mod.RetrainConfig, resume: bool = False) -> dict[str, Any]:
    return retrain(cfg, resume=resume)

"""The pipeline's stages as plain functions: config in, files out.

The CLI, DVC stages and Prefect flows all call these; none of them re-implements a stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nas import config as config_mod
from nas.benchmarks import load_table
from nas.data import load_prepared, prepare
from nas.search import RESULT as SEARCH_RESULT
from nas.search import search
from nas.spaces import get_space
from nas.train import count_macs, count_params, retrain
from nas.utils import NasError


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


def select_stage(cfg: config_mod.SelectConfig) -> dict[str, Any]:
    """Choose the final architecture of a finished search (magnitude or PT); writes
    ``<out>/selection.json`` when ``out`` is set."""
    from nas.select import select

    return select(cfg)


def strength_stage(cfg: config_mod.SelectConfig) -> dict[str, Any]:
    """α (or the Dirichlet mean) against the accuracy drop of removing each op, per edge and op."""
    from nas.select import op_strength

    return op_strength(cfg.run, cfg, cfg.out)


def lookup_stage(genotype: str, dataset: str = "cifar10", table: str | None = None) -> dict[str, Any]:
    return load_table(table).lookup(genotype, dataset)


def info_stage(space_name: str, genotype: str, channels: int | None = None, cells: int | None = None,
               num_classes: int = 10, in_channels: int = 3, resolution: int = 32) -> dict[str, Any]:
    """Parameter count and multiply-accumulates of the discrete network of a genotype (the
    evaluation network, auxiliary head excluded; C and cells default to the space's)."""
    space = get_space(space_name)
    geno = space.parse_genotype(genotype)
    channels = channels or space.retrain_defaults["channels"]
    cells = cells or space.retrain_defaults["cells"]
    net = space.build_network(geno, channels, cells, num_classes, in_channels)
    macs = count_macs(net, (in_channels, resolution, resolution))
    extra = {"genotype_json": space.genotype_json(geno)} if space.genotype_json else {}
    return {"space": space.name, "genotype": space.format_genotype(geno), **extra, "channels": channels, "cells": cells,
            "num_classes": num_classes, "resolution": resolution, "params": count_params(net),
            "macs": macs, "flops": 2 * macs}


def retrain_stage(cfg: config_mod.RetrainConfig, resume: bool = False) -> dict[str, Any]:
    return retrain(cfg, resume=resume)

"""What a proxy protocol keeps of its reference: the search quantities that can decide the outcome,
read from the params files, side by side with their ratio to the reference; and, for finished
searches, how far α actually travelled.

Quantities per protocol (first-order search, one α step per w step):
  w images, steps per epoch, epochs, α steps in all (α-frozen warm-up epochs excluded), the w/α step
  ratio, the α learning rate, the α travel budget (Adam moves each α entry by at most about its
  learning rate per step, so a_lr × α steps bounds how far an entry can go), the w learning rate,
  and the depth of the supernet (cells in all).

Realised, per finished search (``--runs``, folders holding ``*/search/result.json``): the path each
α entry travelled (the sum over epochs of |Δα|, mean over entries), that path over the budget, the
final per-edge spread of α (max − min, mean over edges), the largest mixing weight, the mean
weight of skip_connect and the supernet's final training accuracy.

    python bench/proxy_fidelity.py --reference params/paper.yaml --protocol params/cpu-proxy.yaml \\
        --runs runs/grid/cpu-proxy
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

TRAIN_IMAGES = {"cifar10": 50000, "cifar100": 50000, "svhn": 73257}
CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10}


def quantities(protocol: str, method: str = "darts", sets: list[str] | None = None) -> dict[str, float]:
    from nas.config import build_config

    cfg = build_config("search", protocol, {"method": method}, sets=sets or [])
    n = cfg.subset * CLASSES[cfg.dataset] if cfg.subset else TRAIN_IMAGES[cfg.dataset]
    n_w = int(n * cfg.train_portion)
    steps = math.ceil(n_w / cfg.batch_size)
    if cfg.steps_per_epoch:
        steps = min(steps, cfg.steps_per_epoch)
    warmup = cfg.arch_warmup or 0
    a_steps = (cfg.epochs - warmup) * steps
    return {"w images": n_w, "resolution": cfg.resolution or 32, "channels": cfg.channels,
            "cells in all": 3 * cfg.cells + 2, "steps per epoch": steps, "epochs": cfg.epochs,
            "warm-up epochs": warmup, "w steps": cfg.epochs * steps, "alpha steps": a_steps,
            "w/alpha step ratio": cfg.epochs * steps / max(a_steps, 1), "a_lr": cfg.a_lr,
            "alpha travel budget": cfg.a_lr * a_steps, "w_lr": cfg.w_lr}


def realised(result: dict) -> dict[str, float]:
    hist = result["history"]
    alphas = [h["alpha"] for h in hist]
    flat = [[v for row in a for v in row] for a in alphas]
    path = sum(statistics.fmean(abs(b - a) for a, b in zip(prev, cur)) for prev, cur in zip(flat, flat[1:]))
    path += statistics.fmean(abs(v) for v in flat[0])  # from the near-zero initialisation
    final = result["alpha"]
    spread = statistics.fmean(max(r) - min(r) for r in final)
    weights = result["weights"]
    ops = result["edge_ops"]
    skip = [w[o.index("skip_connect")] for w, o in zip(weights, ops) if "skip_connect" in o]
    return {"alpha path": path, "final alpha spread": spread, "max weight": max(max(r) for r in weights),
            "skip weight": statistics.fmean(skip) if skip else math.nan, "train acc": hist[-1]["train_acc"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", default="params/paper.yaml")
    p.add_argument("--protocol", action="append", default=[], help="params file (repeatable)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="search key=value for the protocols")
    p.add_argument("--runs", action="append", default=[], help="folder of grid cells (repeatable)")
    p.add_argument("--study", default=None, help="folder of single search runs (<name>/result.json): one row each")
    p.add_argument("--csv", default=None, help="with --study: also write its rows here")
    args = p.parse_args(argv)
    if args.study:
        return study(Path(args.study), protocols[0] if (protocols := args.protocol) else "params/cpu-proxy.yaml",
                     args.csv)
    protocols = args.protocol or ["params/cpu-proxy.yaml"]
    ref = quantities(args.reference)
    rows = {Path(args.reference).stem: ref}
    for proto in protocols:
        rows[Path(proto).stem + (" " + " ".join(args.sets) if args.sets else "")] = quantities(proto, sets=args.sets)
    names = list(rows)
    print("| quantity | " + " | ".join(names) + " | " + " | ".join(f"{n} / {names[0]}" for n in names[1:]) + " |")
    print("|---" * (1 + 2 * len(names) - 1) + "|")
    for key in ref:
        vals = [rows[n][key] for n in names]
        ratios = [f"{v / ref[key]:.3g}" if ref[key] else "-" for v in vals[1:]]
        print(f"| {key} | " + " | ".join(f"{v:.4g}" for v in vals) + " | " + " | ".join(ratios) + " |")
    from nas.runs.files import read_json

    for folder in args.runs:
        results = sorted(Path(folder).glob("*/search/result.json"))
        by_method: dict[str, list[dict[str, float]]] = {}
        budget = {}
        for r in results:
            res = read_json(r)  # with its timings (timings.json beside it)
            if not res.get("history") or "alpha" not in res["history"][0]:
                continue
            cfg = res["config"]
            by_method.setdefault(res["method"], []).append(realised(res))
            budget[res["method"]] = quantities_from_config(cfg)
        print(f"\nrealised in {folder} (mean over runs)")
        keys = ["alpha path", "final alpha spread", "max weight", "skip weight", "train acc"]
        print("| method | runs | budget | " + " | ".join(keys) + " | path / budget |")
        print("|---" * (len(keys) + 4) + "|")
        for m, rs in sorted(by_method.items()):
            means = {k: statistics.fmean(r[k] for r in rs) for k in keys}
            print(f"| {m} | {len(rs)} | {budget[m]:.3g} | " + " | ".join(f"{means[k]:.3f}" for k in keys)
                  + f" | {means['alpha path'] / budget[m]:.2f} |")
    return 0


KEYS = ("a_lr", "cells", "channels", "epochs", "subset", "resolution", "batch_size", "w_lr", "arch_warmup")


def study(folder: Path, protocol: str, csv_path: str | None) -> int:
    """One row per search run in ``folder``: what differs from ``protocol``, the cell and how far α went."""
    from nas.benchmarks import load_table
    from nas.config import build_config, to_dict
    from nas.utils import write_csv

    table = load_table()
    base = to_dict(build_config("search", protocol))
    rows = []
    for run in sorted(p for p in folder.iterdir() if p.is_dir()):
        res = read_run(run)
        if res is None:
            continue
        cfg = res["config"]
        diff = " ".join(f"{k}={cfg[k]}" for k in KEYS if cfg.get(k) != base.get(k)) or "-"
        ops = res["genotype"].replace("+", "").strip("|").split("|")
        real = realised(res)
        rows.append({"run": run.name, "method": res["method"], "seed": cfg["seed"], "changes": diff,
                     "epochs_run": len(res["history"]),
                     "genotype": res["genotype"], "cifar10": table.accuracy(res["genotype"], "cifar10"),
                     "skip_edges": sum(o.startswith("skip_connect") for o in ops),
                     "none_edges": sum(o.startswith("none") for o in ops),
                     "skip_weight": round(real["skip weight"], 4), "max_weight": round(real["max weight"], 4),
                     "alpha_path": round(real["alpha path"], 4), "budget": round(quantities_from_config(cfg), 4),
                     "train_acc": round(real["train acc"], 4), "minutes": round(res["seconds"] / 60, 2)})
    cols = list(rows[0]) if rows else []
    print("| " + " | ".join(cols) + " |")
    print("|---" * len(cols) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    if csv_path:
        write_csv(Path(csv_path), rows)
    return 0


def read_run(run: Path) -> dict | None:
    """A search's result.json; for a search stopped early, the same fields from its checkpoint's
    last epoch (``epochs_run`` then says how far it got)."""
    from nas.runs.files import read_json

    if (run / "result.json").is_file():
        return read_json(run / "result.json")
    if not (run / "checkpoint.pt").is_file():
        return None
    from nas.runs.files import torch_load
    from nas.spaces import get_space

    ck = torch_load(run / "checkpoint.pt")
    last = ck["history"][-1]
    space = get_space(ck["config"]["space"])
    return {"method": ck["config"]["method"], "config": ck["config"], "history": ck["history"],
            "genotype": last["genotype"], "alpha": last["alpha"], "weights": last["weights"],
            "edge_ops": [list(o) for o in space.edge_ops], "seconds": sum(h.get("seconds", 0.0) for h in ck["history"])}


def quantities_from_config(cfg: dict) -> float:
    """The α travel budget of a finished search, from its saved config."""
    n = cfg["subset"] * CLASSES[cfg["dataset"]] if cfg["subset"] else TRAIN_IMAGES[cfg["dataset"]]
    steps = math.ceil(int(n * cfg["train_portion"]) / cfg["batch_size"])
    if cfg.get("steps_per_epoch"):
        steps = min(steps, cfg["steps_per_epoch"])
    return cfg["a_lr"] * (cfg["epochs"] - (cfg.get("arch_warmup") or 0)) * steps


if __name__ == "__main__":
    sys.exit(main())

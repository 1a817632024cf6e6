"""Search quality of one precision against another, from two committed grids of the same protocol.

Pairs the runs of ``data/results/<a>/runs.csv`` and ``data/results/<b>/runs.csv`` by (method,
selection, seed) and prints, per method and selection, the mean ± std of the NB201 CIFAR-10 test
accuracy under each, the difference of the means, how many seeds found the identical cell, and the
mean number of skip edges (DARTS's collapse).  Only pairs present in both grids count.

    python bench/precision_quality.py                      # cpu-proxy (fp32) against cpu-proxy-bf16
    python bench/precision_quality.py --a cpu-proxy --b cpu-proxy-bf16 --results data/results
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from nas.grid import read_runs_csv


def _ms(vals: list[float]) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.2f} ± {sd:.2f}"


def compare(a_rows: list[dict], b_rows: list[dict]) -> list[dict]:
    key = ("method", "selection", "seed")
    b_of = {tuple(r[k] for k in key): r for r in b_rows}
    groups: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for r in a_rows:
        other = b_of.get(tuple(r[k] for k in key))
        if other is not None:
            groups.setdefault((r["method"], r["selection"]), []).append((r, other))
    out = []
    for (method, selection), pairs in groups.items():
        a = [p[0]["cifar10"] for p in pairs]
        b = [p[1]["cifar10"] for p in pairs]
        out.append({
            "method": method, "selection": selection, "seeds": sorted(p[0]["seed"] for p in pairs),
            "a": _ms(a), "b": _ms(b), "diff": statistics.mean(b) - statistics.mean(a),
            "same_cell": sum(p[0]["genotype"] == p[1]["genotype"] for p in pairs),
            "skip_a": statistics.mean(p[0]["skip_edges"] for p in pairs),
            "skip_b": statistics.mean(p[1]["skip_edges"] for p in pairs),
        })
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--a", default="cpu-proxy")
    p.add_argument("--b", default="cpu-proxy-bf16")
    p.add_argument("--results", default="data/results")
    args = p.parse_args()
    rows = compare(read_runs_csv(Path(args.results) / args.a / "runs.csv"),
                   read_runs_csv(Path(args.results) / args.b / "runs.csv"))
    print(f"NB201 CIFAR-10 test accuracy (%) of the selected cell, {args.a} against {args.b}, paired by seed\n")
    print(f"| method | selection | seeds | {args.a} | {args.b} | difference | same cell | skip edges ({args.a} / {args.b}) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['selection']} | {','.join(map(str, r['seeds']))} | {r['a']} | {r['b']} | "
              f"{r['diff']:+.2f} | {r['same_cell']}/{len(r['seeds'])} | {r['skip_a']:.1f} / {r['skip_b']:.1f} |")


if __name__ == "__main__":
    main()

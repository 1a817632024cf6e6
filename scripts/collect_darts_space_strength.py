"""Collect the "alpha vs accuracy after removing an op" analysis on a DARTS-space supernet searched at
the cpu-proxy-s scale into data/results/darts-space-strength/.  The search and the analysis come from:
    nas search --config params/cpu-proxy-s.yaml --space darts --method darts --dataset cifar10 \
        --data ../shared/data/cifar10-jpeg.tar.gz --seed 1 --epochs 50 --set hessian_every=0 \
        --out runs/darts-space/s1-e50
    nas strength --config params/cpu-proxy-s.yaml --run runs/darts-space/s1-e50 \
        --out runs/darts-space/s1-e50-strength
(one thread each, OMP_NUM_THREADS=1).  The search's result.json is reduced to what the docs quote:
the genotype, the minutes, the config and the final mixing weights per edge.
Run from the repository root: python scripts/collect_darts_space_strength.py"""
import json
import shutil
from collections import defaultdict
from pathlib import Path

run, strength = Path("runs/darts-space/s1-e50"), Path("runs/darts-space/s1-e50-strength")
out = Path("data/results/darts-space-strength")
out.mkdir(parents=True, exist_ok=True)
res = json.loads((run / "result.json").read_text())
search = {k: res[k] for k in ("space", "method", "genotype", "ops", "edge_ops", "weights", "config")}
search["minutes"] = res["seconds"] / 60
tmp = out / "search.json.tmp"
tmp.write_text(json.dumps(search, indent=2) + "\n")
tmp.replace(out / "search.json")
for name in ("strength.csv", "strength.json", "strength.png"):
    shutil.copyfile(strength / name, out / name)
doc = json.loads((strength / "strength.json").read_text())
per_op = defaultdict(list)
for r in doc["rows"]:
    per_op[(r["edge"].split()[0], r["op"])].append((r["weight"], r["drop"]))
print(f"{search['genotype']}\nsearch {search['minutes']:.1f} min; Spearman {doc['spearman']:.3f}")
for (cell, op), v in sorted(per_op.items()):
    print(f"{cell:7s} {op:13s} mean weight {sum(w for w, _ in v) / len(v):.3f}  "
          f"mean drop {100 * sum(d for _, d in v) / len(v):.2f} points")

"""Collect PT with its default settings (the authors' masking, batch statistics and alpha steps) on
the cpu-proxy-c16 DrNAS supernets of seeds 3 and 4 into data/results/cpu-proxy-c16-pt-default/,
beside the committed magnitude and first-variant PT rows of the same supernets.  The selections
come from (N = 3, 4):
    nas select --method pt --run runs/grid/cpu-proxy-c16/drnas-sN/search --seed N --device cpu \
        --out runs/pt-ref/drnas-sN
Run from the repository root: python scripts/collect_pt_default.py"""
import csv
import json
import shutil
from pathlib import Path

from nas.benchmarks import load_table

out = Path("data/results/cpu-proxy-c16-pt-default")
out.mkdir(parents=True, exist_ok=True)
table = load_table()
first = {(r["method"], r["selection"], r["seed"]): r for r in csv.DictReader(open("data/results/cpu-proxy-c16/runs.csv"))}
rows = []
for seed in (3, 4):
    src = Path(f"runs/pt-ref/drnas-s{seed}/selection.json")
    if not src.is_file():
        continue
    (out / f"drnas-s{seed}").mkdir(exist_ok=True)
    shutil.copyfile(src, out / f"drnas-s{seed}" / "selection.json")
    d = json.loads(src.read_text())
    g = d["genotype"]
    old = first[("drnas", "pt", str(seed))]
    mag = first[("drnas", "magnitude", str(seed))]
    rows.append({"method": "drnas", "seed": seed,
                 "magnitude_genotype": mag["genotype"], "magnitude_cifar10": mag["cifar10"],
                 "pt_first_genotype": old["genotype"], "pt_first_cifar10": old["cifar10"],
                 "pt_default_genotype": g, "pt_default_cifar10": f"{table.accuracy(g, 'cifar10'):.4f}",
                 "pt_default_none_edges": g.count("none~"), "pt_default_skip_edges": g.count("skip_connect~"),
                 "pt_default_minutes": f"{d['seconds'] / 60:.1f}",
                 "removal": d["removal"], "bn": d["bn"], "tune_alpha": d["tune_alpha"]})
with open(out / "runs.csv", "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
for r in rows:
    print(r)

#!/usr/bin/env bash
# Set up, then run the main job on the embedded digits dataset, offline:
# a DARTS search on NAS-Bench-201, its benchmark lookup, and a short retrain from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NAS_TELEMETRY_OFF=1 DO_NOT_TRACK=1
OUT=${OUT:-runs/quickstart}
.venv/bin/nas search --config params/quickstart.yaml --out "$OUT/search"
GENO=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['genotype'])" "$OUT/search/result.json")
.venv/bin/nas info --genotype "$GENO"
.venv/bin/nas lookup --genotype "$GENO" --dataset cifar10
.venv/bin/nas retrain --config params/quickstart.yaml --genotype "$GENO" --out "$OUT/retrain"

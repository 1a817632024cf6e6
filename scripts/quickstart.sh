#!/usr/bin/env bash
# Set up, then run the main job on the embedded digits dataset, offline: the nas-pipeline flow
# (prepare -> DARTS search on NAS-Bench-201 -> selection -> retrain -> evaluate), tracked in MLflow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-300}
OUT=${OUT:-runs/quickstart}
.venv/bin/python -m flows.pipeline --params params/pipeline.yaml --out "$OUT" "$@"
GENO=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['genotype'])" "$OUT/evaluate/summary.json")
.venv/bin/nas info --genotype "$GENO"
.venv/bin/nas lookup --genotype "$GENO" --dataset cifar10
echo
echo "metrics, summary and plots: $OUT/evaluate/"
echo "compare runs:            .venv/bin/mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --port 5000"

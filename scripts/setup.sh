#!/usr/bin/env bash
# Create .venv (if needed) and install the project with its pipeline, cluster and test extras.
# CPU machines pin torch through constraints/cpu.txt; set NAS_TORCH_CONSTRAINT="" to keep your own torch
# (for example a CUDA build already installed in the environment).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${NAS_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
CONSTRAINT=${NAS_TORCH_CONSTRAINT-constraints/cpu.txt}
args=(--disable-pip-version-check -q)
if [ -n "$CONSTRAINT" ]; then args+=(-c "$CONSTRAINT"); fi
stamp="$VENV/.nas-installed"
want="$(cat pyproject.toml ${CONSTRAINT:+"$CONSTRAINT"} | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install "${args[@]}" -e ".[pipeline,cluster,test]"
  echo "$want" > "$stamp"
fi
# the reference supernet of the benchmarks (bench/supernet.py, bench/gpu_evidence.py): the NAS-Bench-201
# authors' package, without its dependencies (its declared numpy pin conflicts with the project's)
if ! "$VENV/bin/python" -c "import xautodl" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps "xautodl==1.0.0"
fi

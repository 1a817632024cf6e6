#!/usr/bin/env bash
# GPU evidence on a fresh GPU machine, in one command: set up (timed), then bench/gpu_evidence.py,
# which runs its stages within a budget and writes bench/results/gpu-evidence-<device>.md.
#
#   bash bench/gpu.sh --data PATH/cifar10.tar.gz                     # default budget: 540 s
#   bash bench/gpu.sh --data PATH --stages calibration --budget 580 \
#        --calibration-candidates i50k-e20-plain --calibration-spaces s1
#   NAS_WHEELHOUSE=DIR bash bench/gpu.sh ...   # a machine without a package index: wheels from DIR
#                                              # (bench/gpu_wheelhouse.sh fills DIR on a connected machine)
#
# The set-up: where the Python at hand (PYTHON, default python3) already imports a CUDA build of
# PyTorch, the project goes into its environment, so that build is kept; otherwise into a virtual
# environment (.venv-gpu; NAS_GPU_VENV names one, and forces one) that takes torch from the package
# index (NAS_TORCH_INDEX names another index, e.g. one of a given CUDA version).  Then the project
# (editable, without its extras) and the reference implementation xautodl (without its
# dependencies: its numpy pin conflicts with the project's).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s.%N)
PY=${PYTHON:-python3}
if [ -z "${NAS_GPU_VENV:-}" ] && "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  RUN=$PY
else
  VENV=${NAS_GPU_VENV:-.venv-gpu}
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  RUN=$VENV/bin/python
fi
pip=("$RUN" -m pip install -q --disable-pip-version-check)
if [ -n "${NAS_WHEELHOUSE:-}" ]; then pip+=(--no-index --find-links "$NAS_WHEELHOUSE"); fi
if ! "$RUN" -c "import torch" 2>/dev/null; then
  "${pip[@]}" ${NAS_TORCH_INDEX:+--index-url "$NAS_TORCH_INDEX"} "torch>=2.2,<3"
fi
"${pip[@]}" -e .
"$RUN" -c "import xautodl" 2>/dev/null || "${pip[@]}" --no-deps "xautodl==1.0.0"
"$RUN" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'device:',
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
setup_s=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$t0" "$(date +%s.%N)")
echo "[gpu.sh] set-up: ${setup_s} s"
exec "$RUN" bench/gpu_evidence.py --setup-seconds "$setup_s" "$@"

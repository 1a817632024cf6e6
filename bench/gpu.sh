#!/usr/bin/env bash
# The benchmark tables on a CUDA GPU, every precision and compile setting side by side with fp32:
#   bash bench/gpu.sh            (needs: pip install xautodl --no-deps)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$PY" bench/supernet.py --device cuda --repeats 10 --steps 10 \
  --settings fp32,bf16,fp16,fp32+compile,bf16+compile
"$PY" bench/methods.py --device cuda --steps 20 --repeats 3 --settings fp32,bf16,fp16 \
  --set channels=16 --set cells=5 --set batch_size=64

#!/usr/bin/env bash
# Wheels for a GPU machine without a package index: run this on a connected machine, copy DIR
# beside the checkout there, then NAS_WHEELHOUSE=DIR bash bench/gpu.sh.
#
#   bash bench/gpu_wheelhouse.sh DIR [PYTHON_VERSION] [PACKAGE ...]
#
# The GPU machine is assumed to hold a CUDA build of PyTorch and the usual scientific stack (numpy,
# scipy, pandas, matplotlib, scikit-learn, pyyaml, pillow, tqdm); the default PACKAGE list is what
# the project needs beyond those (pandera, pydantic and their dependencies, setuptools for the
# editable install, and xautodl).  PYTHON_VERSION is the GPU machine's (default 3.12).
set -euo pipefail
dir=${1:?usage: bash bench/gpu_wheelhouse.sh DIR [PYTHON_VERSION] [PACKAGE ...]}
pyver=${2:-3.12}
shift $(( $# >= 2 ? 2 : 1 ))
packages=("$@")
if [ ${#packages[@]} -eq 0 ]; then
  packages=(pandera typeguard pydantic pydantic-core annotated-types typing-inspection typing-extensions
            typing-inspect mypy-extensions setuptools xautodl==1.0.0)
fi
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
mkdir -p "$dir"
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$pyver" \
  --implementation cp "${platforms[@]}" -d "$dir" "${packages[@]}"
ls "$dir"

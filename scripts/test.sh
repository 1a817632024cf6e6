#!/usr/bin/env bash
# Set up, then run the whole test suite on both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# both cores: one pytest worker each (NAS_TEST_WORKERS=1 for one), whole files per worker so that a
# module's servers (the cluster, Prefect) start once
exec .venv/bin/python -m pytest -n "${NAS_TEST_WORKERS:-2}" --dist loadfile "$@"

#!/usr/bin/env bash
# Set up, then run the whole test suite on both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# both cores: one pytest worker each (NAS_TEST_WORKERS=1 for one); tests go to whichever worker is
# free, except those of a file that starts servers (the cluster, the Prefect test server), which
# stay together on one worker (xdist_group) so that the servers start once
exec .venv/bin/python -m pytest -n "${NAS_TEST_WORKERS:-2}" --dist loadgroup "$@"

#!/usr/bin/env bash
# Set up, then run the whole test suite on every core.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# one pytest worker per core and one more (NAS_TEST_WORKERS sets the count): many tests spend part of
# their time waiting on a server or a subprocess, and the extra worker computes meanwhile.  Tests go
# to whichever worker is free, except those of a file that starts servers (the cluster, the Prefect
# test server), which stay together on one worker (xdist_group) so that the servers start once
workers="${NAS_TEST_WORKERS:-$(( $(nproc) + 1 ))}"
if [ "${1:-}" = "--fast" ]; then  # the fast tier: no training, no subprocess, no server, in one process
    shift
    exec .venv/bin/python -m pytest -q -p no:cacheprovider -m fast "$@"
fi
exec .venv/bin/python -m pytest -n "$workers" --dist loadgroup "$@"

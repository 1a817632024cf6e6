"""Prefect flows over the library's stages: ``nas-pipeline``, ``nas-sweep`` and ``nas-benchmark``.

Importing the package (before Prefect) sets the project's defaults: persisted task results in the
work tree (``runs/prefect-results``; Prefect caches only persisted results) and no telemetry.
"""

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH",
                      os.environ.get("NAS_PREFECT_RESULTS", str(_REPO / "runs" / "prefect-results")))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# A temporary Prefect server can take over a minute to start on an empty home, and longer when
# several flows start at once; Prefect's own default (20 s) would fail them.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

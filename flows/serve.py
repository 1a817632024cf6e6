"""Serve the deployments of ``prefect.yaml`` from this process (no work pool needed).

    prefect server start                                   # another terminal; SQLite by default
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve                                  # from the repository root
    prefect deployment run 'nas-pipeline/default' -p method=drnas

The deployments and their schedules are read from ``prefect.yaml``, so the two ways of running
(serve here, or ``prefect deploy`` + a worker) cannot drift apart.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import yaml

import flows  # noqa: F401  (project defaults before Prefect loads)

REPO = Path(__file__).resolve().parent.parent


def load_deployments(path: str | Path = REPO / "prefect.yaml") -> list[Any]:
    """``RunnerDeployment`` objects for every deployment of ``prefect.yaml``."""
    from prefect.schedules import Cron

    doc = yaml.safe_load(Path(path).read_text())
    out = []
    for d in doc.get("deployments", []):
        file, _, attr = d["entrypoint"].partition(":")
        module = importlib.import_module(Path(file).with_suffix("").as_posix().replace("/", "."))
        fl = getattr(module, attr)
        schedules = [Cron(s["cron"], timezone=s.get("timezone", "UTC")) for s in d.get("schedules") or []]
        out.append(fl.to_deployment(name=d["name"], description=d.get("description"),
                                    parameters=d.get("parameters") or {}, schedules=schedules or None))
    return out


def main() -> int:
    from prefect import serve

    serve(*load_deployments())
    return 0


if __name__ == "__main__":
    sys.exit(main())

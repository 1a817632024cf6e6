"""The benchmark grid: [spaces x] methods x seeds x selections under a named protocol; on
NAS-Bench-201 the selected cells are looked up, on the other spaces they are trained from scratch.

A protocol is a params file (``params/cpu-proxy.yaml``, ``params/paper.yaml``) with a ``search:``
section, an optional ``select:`` section (PT settings) and a ``grid:`` section::

    grid:
      methods: [darts, snas, gdas, drnas, sdarts-rs, pc-darts, random]
      seeds: [1, 2, 3]
      selections: [magnitude, pt]
      pt_methods: [darts, sdarts-rs]   # PT is applied to these supernets only (default: all)
      strength: true                   # α vs accuracy-drop table on the first seed's supernet (or: [darts])
      landscape: true                  # L_val around α on the first seed's supernet (figures/landscape.png)

One cell of the grid is one (method, seed), or (space, method, seed) with ``spaces:``: a search,
then each selection on the same supernet (``pt-fix``: PT on the same search with α held uniform),
then the NB201 lookups on all three datasets, or with ``retrain`` (implied by a space without a
table) each selected cell trained by the ``retrain:`` section and tested.  ``variants:`` names
methods with settings of their own (``darts-2nd: {method: darts, order: 2}``).  A cell is cached on disk: a search whose
``result.json`` was written with the same config is never rerun (an interrupted one resumes from
its checkpoint), and a selection is reused when the search result it was made from is unchanged.
``run_cell`` is the unit of work that both :func:`run_grid` (a local process pool) and the Prefect
benchmark flow (any task runner) map over the grid; :func:`write_report` turns the rows into the
table, the per-run CSV and the figures.

Modules: ``spec`` (the protocol's grid section), ``run`` (cells, caches, the process pool),
``report`` (CSV, table, metrics), ``figures``.
"""

from nas.grid.figures import collect_curves, draw_figures
from nas.grid.report import read_runs_csv, summarise, summarise_retrained, table_markdown, write_report, write_runs_csv
from nas.grid.run import (
    CellBusy,
    CellJob,
    ShippedCell,
    cell_jobs,
    run_cell,
    run_grid,
    run_shipped_cell,
    ship_cell,
    store_shipped_cell,
)
from nas.grid.spec import DATASETS, RETRAIN_FIELDS, RUN_FIELDS, SELECTIONS, GridSpec, load_grid

__all__ = ["DATASETS", "RUN_FIELDS", "RETRAIN_FIELDS", "SELECTIONS", "GridSpec", "load_grid", "CellBusy",
           "CellJob", "ShippedCell", "cell_jobs", "run_cell", "run_grid",
           "ship_cell", "run_shipped_cell", "store_shipped_cell",
           "read_runs_csv", "summarise", "summarise_retrained",
           "table_markdown", "write_report", "write_runs_csv", "collect_curves", "draw_figures"]

"""pandera schemas at the stage boundaries.

Every table that crosses a stage boundary is checked before it reaches a model or a report: the
prepared dataset's manifest, the per-epoch search history, the results table across runs, the
Optuna trials table and the NAS-Bench-201 table.  A failure raises :class:`NasError` with one
line naming the source, the column, the row and the offending value.
"""

from __future__ import annotations

import math
from typing import Any

from nas.utils import NasError, clip


def _pa():
    import pandera.pandas as pa

    return pa


def _check(schema, df, source: str, row_offset: int = 0, row_word: str = "row"):
    """Validate; on failure name the first failing column, row and value in one line."""
    pa = _pa()
    try:
        return schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases.to_dict("records")
        first = next((c for c in cases if c.get("index") is not None), cases[0])
        col = first.get("column")
        idx = first.get("index")
        where = f"column {col!r}" if col is not None else "table"
        if idx is not None and not (isinstance(idx, float) and math.isnan(idx)):
            where += f" {row_word} {int(idx) + row_offset}"
        check = first.get("check")
        more = f" (and {len(cases) - 1} more failures)" if len(cases) > 1 else ""
        raise NasError(f"{source}: {where}: value {clip(first.get('failure_case'), 60)} fails {check}{more}") from None


def _frame(rows: Any, source: str, columns: list[str]):
    import pandas as pd

    df = pd.DataFrame(list(rows))
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise NasError(f"{source}: missing column {missing[0]!r} (expected {', '.join(columns)})")
    return df


# ------------------------------------------------------------------------------ prepared manifest
def manifest_schema():
    pa = _pa()
    return pa.DataFrameSchema({
        "dataset": pa.Column(str, pa.Check.str_length(min_value=1)),
        "num_classes": pa.Column(int, pa.Check.ge(2)),
        "channels": pa.Column(int, pa.Check.isin([1, 3])),
        "height": pa.Column(int, pa.Check.ge(1)),
        "width": pa.Column(int, pa.Check.ge(1)),
        "train": pa.Column(int, pa.Check.ge(1)),
        "test": pa.Column(int, pa.Check.ge(1)),
        "classes": pa.Column(int, pa.Check.ge(2)),
        "class_counts_train": pa.Column(int, pa.Check.ge(1)),
        "class_counts_test": pa.Column(int, pa.Check.ge(0)),
        "sha256": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]{64}$")),
        "std_min": pa.Column(float, pa.Check.gt(0)),
    }, checks=[
        pa.Check(lambda d: d["classes"] == d["num_classes"], error="len(classes) == num_classes"),
        pa.Check(lambda d: d["class_counts_train"] == d["train"], error="sum(class_counts.train) == counts.train"),
        pa.Check(lambda d: d["class_counts_test"] == d["test"], error="sum(class_counts.test) == counts.test"),
    ], coerce=False, strict=True)


def validate_manifest(m: dict[str, Any], source: str) -> dict[str, Any]:
    """The manifest of a prepared dataset (``nas prepare``), checked before its tensors are used."""
    try:
        row = {
            "dataset": m["dataset"], "num_classes": m["num_classes"], "channels": m["channels"],
            "height": m["height"], "width": m["width"], "train": m["counts"]["train"], "test": m["counts"]["test"],
            "classes": len(m["classes"]), "class_counts_train": sum(m["class_counts"]["train"]),
            "class_counts_test": sum(m["class_counts"]["test"]), "sha256": m["sha256"],
            "std_min": float(min(m["std"])) if len(m["std"]) == m["channels"] else -1.0,
        }
    except (KeyError, TypeError) as exc:
        raise NasError(f"{source}: manifest lacks or mistypes key {exc}") from None
    import pandas as pd

    _check(manifest_schema(), pd.DataFrame([row]), source)
    return m


# -------------------------------------------------------------------------------- search history
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "weights"]


def history_schema():
    pa = _pa()
    finite = pa.Check(lambda s: s.map(math.isfinite), element_wise=False, error="finite")
    return pa.DataFrameSchema({
        "epoch": pa.Column(int, [pa.Check.ge(1)]),
        "train_loss": pa.Column(float, [finite, pa.Check.ge(0)]),
        "val_loss": pa.Column(float, [finite, pa.Check.ge(0)]),
        "train_acc": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
        "val_acc": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
        "weight_sum_error": pa.Column(float, pa.Check.le(1e-3, error="each edge's mixing weights sum to 1")),
        "weight_min": pa.Column(float, pa.Check.ge(-1e-6, error="mixing weights >= 0")),
    }, checks=[pa.Check(lambda d: bool(d["epoch"].diff().dropna().gt(0).all()), error="epochs increase")],
        coerce=True, strict="filter")


def validate_history(history: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """The per-epoch table of a search: finite losses, accuracies in [0, 1], each edge's mixing
    weights summing to 1 (over the ops still in the space)."""
    if not history:
        return history
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise NasError(f"{source}: expected a list of per-epoch records")
    df = _frame(history, source, HISTORY_COLUMNS)

    df["weight_sum_error"] = df["weights"].map(_sum_error)
    df["weight_min"] = df["weights"].map(_min_weight)
    _check(history_schema(), df.drop(columns=["weights"]), source)
    return history


def _rows(w: Any) -> list[list[float]] | None:
    """``w`` as a list of rows of finite numbers, or None when it is anything else."""
    if not isinstance(w, list) or not w or not all(isinstance(r, list) and r for r in w):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for r in w for v in r):
        return None
    return w


def _sum_error(w: Any, allow_zero: bool = False) -> float:
    rows = _rows(w)
    if rows is None:
        return math.inf
    return max(min(abs(sum(r) - 1.0), abs(sum(r)) if allow_zero else math.inf) for r in rows)


def _min_weight(w: Any) -> float:
    rows = _rows(w)
    return -math.inf if rows is None else min(min(r) for r in rows)


def validate_search_result(res: Any, source: str, alpha_shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """A search's result.json: its final mixing weights (finite, >= 0, each edge summing to 1, of
    the space's shape) and its per-epoch history (``validate_history``)."""
    if not isinstance(res, dict):
        raise NasError(f"{source}: expected a JSON object")
    for key in ("space", "weights", "genotype"):
        if key not in res:
            raise NasError(f"{source}: missing key {key!r}")
    no_alpha = res.get("alpha") is None  # a baseline without a supernet: one-hot rows of the cell it chose
    w = res["weights"]
    rows = _rows(w)
    if rows is None:
        raise NasError(f"{source}: 'weights' must be a list of rows of finite numbers, got {clip(w, 80)}")
    if alpha_shape is not None and (len(rows), len(rows[0])) != tuple(alpha_shape) or len({len(r) for r in rows}) != 1:
        raise NasError(f"{source}: 'weights' has shape {len(rows)}x{len(rows[0])}, expected "
                       f"{alpha_shape[0] if alpha_shape else '?'}x{alpha_shape[1] if alpha_shape else '?'}")
    if _min_weight(rows) < -1e-6 or _sum_error(rows, allow_zero=no_alpha) > 1e-3:
        raise NasError(f"{source}: 'weights' must be >= 0 with each edge summing to 1")
    history = res.get("history", [])
    if not isinstance(history, list):
        raise NasError(f"{source}: 'history' must be a list of epochs")
    if not no_alpha:
        validate_history(history, f"{source} history")
    return res


# ------------------------------------------------------------------------ results table, per run
# a grid row's selection: one of the grid's (nas.grid.spec.SELECTIONS), or a baseline's own
ROW_SELECTIONS = ["magnitude", "pt", "pt-fix", "verify", "random", "rsps", "naswot"]
RUN_COLUMNS = ["protocol", "method", "selection", "seed", "genotype", "cifar10", "cifar100", "imagenet16-120",
               "search_minutes", "select_minutes", "final_eigenvalue", "skip_edges"]


def runs_schema():
    pa = _pa()
    acc = pa.Check.in_range(0.0, 100.0)
    return pa.DataFrameSchema({
        "protocol": pa.Column(str),
        "method": pa.Column(str, pa.Check.str_length(min_value=1)),
        "selection": pa.Column(str, pa.Check.isin(ROW_SELECTIONS)),
        "seed": pa.Column(int),
        "genotype": pa.Column(str, pa.Check.str_matches(r"^\|.*\|$")),
        "cifar10": pa.Column(float, acc),
        "cifar100": pa.Column(float, acc),
        "imagenet16-120": pa.Column(float, acc),
        "search_minutes": pa.Column(float, pa.Check.ge(0)),
        "select_minutes": pa.Column(float, pa.Check.ge(0)),
        "final_eigenvalue": pa.Column(float, nullable=True),
        "skip_edges": pa.Column(int, pa.Check.in_range(0, 6)),
    }, unique=["protocol", "method", "selection", "seed"], coerce=True, strict=True)


def validate_runs(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """The per-run results table of the benchmark grid (rows as read from CSV); returns typed rows.
    Row numbers in errors are CSV line numbers."""
    return _csv_rows(rows, source, RUN_COLUMNS, runs_schema, ("seed", "skip_edges"))


def _csv_rows(rows: list[dict[str, Any]], source: str, columns: list[str], schema: Any,
              ints: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows read from a grid's CSV, checked by ``schema()``: empty cells and "nan" are missing,
    ``ints`` become int and a missing final eigenvalue NaN.  Errors name the CSV line."""
    if not rows:
        return []
    df = _frame(rows, source, columns)
    df = df.replace({"": None, "nan": None})
    out = _check(schema(), df, source, row_offset=2, row_word="line")
    recs = out.to_dict("records")
    for r in recs:
        for k in ints:
            r[k] = int(r[k])
        r["final_eigenvalue"] = float("nan") if r["final_eigenvalue"] is None else float(r["final_eigenvalue"])
    return recs


RETRAIN_COLUMNS = ["protocol", "space", "method", "selection", "seed", "genotype", "test_acc", "test_error",
                   "params_m", "normal_skip", "normal_noise", "normal_none", "search_minutes", "select_minutes",
                   "retrain_minutes", "final_eigenvalue"]


def retrain_runs_schema():
    pa = _pa()
    count = pa.Check.in_range(0, 64)
    return pa.DataFrameSchema({
        "protocol": pa.Column(str),
        "space": pa.Column(str, pa.Check.isin(["nb201", "darts", "s1", "s2", "s3", "s4"])),
        "method": pa.Column(str, pa.Check.str_length(min_value=1)),
        "selection": pa.Column(str, pa.Check.isin(ROW_SELECTIONS)),
        "seed": pa.Column(int),
        "genotype": pa.Column(str, pa.Check.str_length(min_value=1)),
        "test_acc": pa.Column(float, pa.Check.in_range(0.0, 100.0)),
        "test_error": pa.Column(float, pa.Check.in_range(0.0, 100.0)),
        "params_m": pa.Column(float, pa.Check.gt(0)),
        "normal_skip": pa.Column(int, count),
        "normal_noise": pa.Column(int, count),
        "normal_none": pa.Column(int, count),
        "search_minutes": pa.Column(float, pa.Check.ge(0)),
        "select_minutes": pa.Column(float, pa.Check.ge(0)),
        "retrain_minutes": pa.Column(float, pa.Check.ge(0)),
        "final_eigenvalue": pa.Column(float, nullable=True),
    }, checks=[pa.Check(lambda d: ((d["test_acc"] + d["test_error"]) - 100.0).abs().lt(1e-3),
                        error="test_acc + test_error == 100")],
        unique=["protocol", "space", "method", "selection", "seed"], coerce=True, strict=True)


def validate_retrain_runs(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """The per-run table of a grid whose cells are retrained (S1-S4, the DARTS space); typed rows.
    Row numbers in errors are CSV line numbers."""
    return _csv_rows(rows, source, RETRAIN_COLUMNS, retrain_runs_schema,
                     ("seed", "normal_skip", "normal_noise", "normal_none"))


# ---------------------------------------------------------------------------------- Optuna trials
TRIAL_COLUMNS = ["number", "state", "value", "supernet_val_acc", "method", "mode"]


def trials_schema():
    pa = _pa()
    return pa.DataFrameSchema({
        "number": pa.Column(int, pa.Check.ge(0), unique=True),
        "state": pa.Column(str, pa.Check.isin(["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"])),
        "value": pa.Column(float, pa.Check.in_range(0.0, 100.0), nullable=True),
        "supernet_val_acc": pa.Column(float, pa.Check.in_range(0.0, 100.0), nullable=True),
        "method": pa.Column(str),
        "mode": pa.Column(str, pa.Check.isin(["retrain", "benchmark"])),
    }, checks=[pa.Check(lambda d: ~((d["state"] == "COMPLETE") & d["value"].isna()),
                        error="a COMPLETE trial has a value"),
                    pa.Check(lambda d: ~((d["state"] != "COMPLETE") & d["value"].notna()),
                             error="only a COMPLETE trial has an objective value")], coerce=True, strict=False)


def validate_trials(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    if not rows:
        return []
    df = _frame(rows, source, TRIAL_COLUMNS)
    # a float column holds a missing value (a pruned trial's objective) as NaN: it comes back None
    return [{k: None if isinstance(v, float) and v != v else v for k, v in r.items()}
            for r in _check(trials_schema(), df, source).to_dict("records")]


# ---------------------------------------------------------------------------- NAS-Bench-201 table
NB201_COLUMNS = ["arch", "cifar10_test", "cifar100_test", "imagenet16_120_test"]
NB201_ARCH = r"^\|[a-z0-9_]+~0\|\+\|[a-z0-9_]+~0\|[a-z0-9_]+~1\|\+\|[a-z0-9_]+~0\|[a-z0-9_]+~1\|[a-z0-9_]+~2\|$"


def nb201_schema():
    pa = _pa()
    acc = pa.Check.in_range(0.0, 100.0)
    return pa.DataFrameSchema({
        "arch": pa.Column(str, pa.Check.str_matches(NB201_ARCH), unique=True),
        "cifar10_test": pa.Column(float, acc),
        "cifar100_test": pa.Column(float, acc),
        "imagenet16_120_test": pa.Column(float, acc),
    }, coerce=True, strict="filter")


def validate_nb201(df, source: str):
    """The NAS-Bench-201 table as a DataFrame read from CSV; row numbers in errors are CSV lines."""
    missing = [c for c in NB201_COLUMNS if c not in df.columns]
    if missing:
        raise NasError(f"{source}: missing column {missing[0]!r} (expected {', '.join(NB201_COLUMNS)})")
    if len(df) == 0:
        raise NasError(f"{source}: no rows")
    return _check(nb201_schema(), df, source, row_offset=2, row_word="line")

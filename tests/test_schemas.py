"""pandera schemas at the stage boundaries reject corrupted or hand-edited tables, naming the
column and the row."""

from __future__ import annotations

import csv
import json
import math

import pytest

from nas import schemas
from nas.utils import NasError

W = [[0.2, 0.2, 0.2, 0.2, 0.2]] * 6


def _history(n=3, change=None):
    rows = [{"epoch": i + 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.1, "val_acc": 0.4, "weights": W}
            for i in range(n)]
    for (row, key), value in (change or {}).items():
        rows[row][key] = value
    return rows


def test_history_accepts_a_good_table():
    assert len(schemas.validate_history(_history(), "h")) == 3


@pytest.mark.parametrize("change,msg", [
    ({(1, "train_loss"): math.nan}, "column 'train_loss' row 1"),
    ({(2, "val_acc"): 1.5}, "column 'val_acc' row 2: value 1.5 fails in_range"),
    ({(0, "weights"): [[0.5, 0.2, 0.2, 0.2, 0.2]] + W[1:]}, "column 'weight_sum_error' row 0.*sum to 1"),
    ({(1, "weights"): [[1.2, -0.2, 0, 0, 0]] + W[1:]}, "column 'weight_min' row 1"),
    ({(1, "epoch"): 1}, "epochs increase"),
    ({(0, "epoch"): 0}, "column 'epoch' row 0: value 0 fails greater_than_or_equal_to"),
])
def test_history_rejects_bad_rows(change, msg):
    with pytest.raises(NasError, match=msg):
        schemas.validate_history(_history(change=change), "run/result.json history")


def test_history_names_a_missing_column():
    rows = _history()
    for r in rows:
        del r["val_acc"]
    with pytest.raises(NasError, match="missing column 'val_acc'"):
        schemas.validate_history(rows, "h")


def test_manifest_of_a_prepared_dataset(tmp_path):
    from nas.data import load_prepared, prepare

    path = prepare("digits", None, tmp_path)
    load_prepared(path)
    mpath = path.with_suffix(".json")
    m = json.loads(mpath.read_text())
    m["num_classes"] = 11  # hand-edited: no longer matches the class list
    mpath.write_text(json.dumps(m))
    with pytest.raises(NasError, match=r"digits-.*\.json: .*len\(classes\) == num_classes"):
        load_prepared(path)
    m["num_classes"], m["channels"] = 10, 2
    mpath.write_text(json.dumps(m))
    with pytest.raises(NasError, match=r"column 'channels' row 0: value 2(\.0)? fails isin"):
        load_prepared(path)
    m["channels"] = 1
    m["class_counts"]["train"][0] += 1
    mpath.write_text(json.dumps(m))
    with pytest.raises(NasError, match=r"sum\(class_counts.train\) == counts.train"):
        load_prepared(path)


def _runs_rows():
    g = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    return [{"protocol": "p", "method": "darts", "selection": "magnitude", "seed": str(s), "genotype": g,
             "cifar10": "54.3", "cifar100": "15.6", "imagenet16-120": "16.3", "search_minutes": "1.0",
             "select_minutes": "0", "final_eigenvalue": "", "skip_edges": "6"} for s in (1, 2)]


def test_runs_table(tmp_path):
    from nas.grid import read_runs_csv

    rows = _runs_rows()
    ok = schemas.validate_runs(rows, "runs.csv")
    assert ok[0]["seed"] == 1 and math.isnan(ok[0]["final_eigenvalue"])
    rows[1]["cifar100"] = "173.5"
    f = tmp_path / "runs.csv"
    with open(f, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(NasError, match="runs.csv: column 'cifar100' line 3: value 173.5 fails in_range"):
        read_runs_csv(f)
    rows = _runs_rows()
    rows[1]["seed"] = "1"
    with pytest.raises(NasError, match="uniqueness|unique"):
        schemas.validate_runs(rows, "runs.csv")
    rows = _runs_rows()
    rows[0]["selection"] = "best"
    with pytest.raises(NasError, match="column 'selection' line 2: value 'best' fails isin"):
        schemas.validate_runs(rows, "runs.csv")


def test_trials_table():
    rows = [{"number": 0, "state": "COMPLETE", "value": 91.0, "supernet_val_acc": 88.0, "method": "drnas",
             "mode": "retrain"},
            {"number": 1, "state": "PRUNED", "value": None, "supernet_val_acc": 41.5, "method": "drnas",
             "mode": "retrain"}]
    assert len(schemas.validate_trials(rows, "t")) == 2
    # a pruned trial's supernet accuracy never stands in the objective's column
    rows[1]["value"] = 41.5
    with pytest.raises(NasError, match="only a COMPLETE trial has an objective value"):
        schemas.validate_trials(rows, "study t")
    rows[1]["value"] = None
    rows[0]["value"] = None
    with pytest.raises(NasError, match="a COMPLETE trial has a value"):
        schemas.validate_trials(rows, "study t")
    rows[0]["value"], rows[1]["state"] = 91.0, "DONE"
    with pytest.raises(NasError, match="column 'state' row 1: value 'DONE' fails isin"):
        schemas.validate_trials(rows, "study t")

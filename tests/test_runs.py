"""The run layer: one cache key on resolved configs, one archive, one rows file, one failure report,
typed decisions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nas import config as config_mod
from nas import grid, stages
from nas.runs import jobs, store
from nas.runs.files import read_json, write_json
from nas.utils import FolderBusy, NasError, ResumeMismatch, RunLock

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_a_job_resolves_the_space_and_method_defaults_once():
    cfg = config_mod.from_dict("search", {"space": "nb201", "method": "pc-darts", "channels": 8})
    assert cfg.cells is None and cfg.channels_last
    job = jobs.Job.of("search", cfg)
    # the space's cells; PC-DARTS at C=8 mixes 2 channels: too narrow for channels-last
    assert job.config.cells == 5 and job.config.channels_last is False
    assert jobs.Job.of("search", job.config).config == job.config  # resolving twice changes nothing
    rt = jobs.Job.of("retrain", config_mod.from_dict("retrain", {"space": "darts", "genotype": "x"}))
    assert (rt.config.channels, rt.config.cells, rt.config.epochs) == (36, 20, 600)


@pytest.mark.parametrize("space,progressive,keep", [("s2", True, 2), ("s4", True, 2), ("s3", True, 3),
                                                     ("darts", True, 3), ("s2", False, 3)])
def test_the_auto_progressive_keep_fits_the_space(space, progressive, keep):
    """DrNAS's progressive keep left to auto: the paper's 3, or all ops of an edge where it has fewer;
    3 with the schedule off, the value configs saved before the key was auto hold (same keys)."""
    cfg = config_mod.from_dict("search", {"space": space, "method": "drnas", "progressive": progressive,
                                          "channels": 16})
    job = jobs.Job.of("search", cfg)
    assert cfg.progressive_keep is None and job.config.progressive_keep == keep
    assert job.key == jobs.Job.of("search", cfg.model_copy(update={"progressive_keep": keep})).key
    from nas.methods import build_method

    if progressive:  # the second stage prunes to the resolved keep, whether or not the config was resolved
        assert build_method(cfg).stages[1].keep_ops == build_method(job.config).stages[1].keep_ops == keep


def test_the_key_ignores_free_keys_and_counts_newer_keys_as_their_default():
    cfg = config_mod.from_dict("search", {"space": "nb201", "method": "darts"})
    job = jobs.Job.of("search", cfg)
    saved = config_mod.to_dict(job.config)
    assert jobs.key("search", {**saved, "out": "elsewhere", "device": "cuda", "threads": 7}) == job.key
    assert jobs.key("search", {k: v for k, v in saved.items() if k != "accumulate"}) == job.key  # an older run
    assert jobs.key("search", {**saved, "epochs": saved["epochs"] + 1}) != job.key
    assert jobs.key("search", saved, {"data": "a"}) != job.key  # inputs are part of the key


def test_a_selection_key_reads_keys_older_than_a_setting_as_the_behaviour_before_it():
    from nas.select import PT_LEGACY

    now = config_mod.to_dict(config_mod.from_dict("select", {"method": "pt", **PT_LEGACY}))
    old = {k: v for k, v in now.items() if k not in PT_LEGACY}
    assert jobs.key("select", old, {"search": "d"}) == jobs.key("select", now, {"search": "d"})
    new = config_mod.to_dict(config_mod.from_dict("select", {"method": "pt"}))
    assert jobs.key("select", old, {"search": "d"}) != jobs.key("select", new, {"search": "d"})


def test_unknown_stage_is_refused():
    with pytest.raises(NasError, match="job: unknown stage 'evaluate'"):
        jobs.Job.of("evaluate", None)


def test_resume_or_restart_decides_on_the_error_type_not_its_text(tmp_path):
    calls = []

    def stage(cfg, resume=False, force=False):
        calls.append((resume, force))
        if resume:
            raise exc
        return {"ok": True}

    exc = ResumeMismatch("x: checkpoint of another config")
    assert jobs.resume_or_restart(stage, None) == {"ok": True} and calls == [(True, False), (False, True)]
    exc = NasError("x: cannot resume, worded like a mismatch but of another type")
    with pytest.raises(NasError, match="worded like"):
        jobs.resume_or_restart(stage, None)


def test_a_busy_folder_is_a_type(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(FolderBusy, match="another process is writing"):
            RunLock(tmp_path / "run").__enter__()


def test_archive_and_restore_round_trip_and_never_overwrite(tmp_path):
    run = tmp_path / "run"
    write_json(run / "search" / "result.json", {"genotype": "g", "seconds": 3.0})
    write_json(run / "select-pt" / "selection.json", {"genotype": "h"})
    (run / "search" / "checkpoint.pt").write_bytes(b"not archived")
    dest = store.archive(run, tmp_path / "report" / "cells" / "run", "search/result.json")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "search/result.json", "search/timings.json", "select-pt/selection.json"]
    fresh = tmp_path / "fresh"
    with RunLock(fresh):  # a claimed, unstarted folder holds only its lock: it is seeded
        assert store.restore(dest, fresh, "search/result.json")
    assert read_json(fresh / "search" / "result.json") == {"genotype": "g", "seconds": 3.0}
    write_json(dest / "search" / "result.json", {"genotype": "other"})
    assert not store.restore(dest, fresh, "search/result.json")  # a folder with a run is never overwritten
    assert read_json(fresh / "search" / "result.json")["genotype"] == "g"
    assert not store.restore(tmp_path / "nothing", tmp_path / "new", "search/result.json")
    shipped = store.read_archive(dest)  # what a worker sends home: the seconds merged, no timings.json
    assert shipped == {"search/result.json": {"genotype": "other"}, "select-pt/selection.json": {"genotype": "h"}}
    write_json(dest / "search" / "result.json", {"genotype": "g", "seconds": 3.0})
    back = store.write_archive(tmp_path / "home", store.read_archive(dest), "search/result.json")
    assert read_json(back / "search" / "result.json") == {"genotype": "g", "seconds": 3.0}
    with pytest.raises(NasError, match="is not a JSON file inside its folder"):
        store.write_archive(tmp_path / "a", {"../escaped.json": {}}, "result.json")
    assert not (tmp_path / "escaped.json").exists()


def _rows_file(path):
    def read(rows, where):
        return [{**r, "seed": int(r["seed"]), "acc": float(r["acc"])} for r in rows]

    return store.RowsFile(path, ["name", "seed", "acc"], lambda r: (r["name"], int(r["seed"])), read, "{:.2f}", "\n")


def test_rows_merge_by_key_sorted_and_refuse_non_utf8(tmp_path):
    f = _rows_file(tmp_path / "runs.csv")
    f.merge([{"name": "b", "seed": 1, "acc": 1.0}, {"name": "a", "seed": 2, "acc": 2.0}])
    f.merge([{"name": "b", "seed": 1, "acc": 3.5}])
    assert (tmp_path / "runs.csv").read_text() == "name,seed,acc\na,2,2.00\nb,1,3.50\n"
    (tmp_path / "runs.csv").write_bytes(b"name,seed\n\xff\xfe\n")
    with pytest.raises(NasError, match="runs.csv: not a CSV of runs \\(not UTF-8 text\\)"):
        f.rows()


def test_the_failure_report_counts_and_names_the_first():
    f = store.Failures("grid g")
    f.raise_if_any(3, "cells")  # nothing failed: nothing raised
    f.add("darts seed 1", ValueError("bad\nsecond line"))
    f.add("darts seed 2", OSError("disk"))
    with pytest.raises(store.JobsFailed, match=r"^grid g: 2 of 5 cells failed \(first: darts seed 1: ValueError: "
                                               r"bad\\nsecond line\); rerun the same command") as info:
        f.raise_if_any(5, "cells")
    assert (info.value.failed, info.value.total) == (2, 5)


@pytest.fixture
def count_searches(monkeypatch):
    calls = []
    real = stages.search

    def counted(cfg, **kw):
        calls.append(cfg.out)
        return real(cfg, **kw)

    monkeypatch.setattr(stages, "search", counted)
    return calls


@pytest.mark.slow
def test_a_grid_that_leaves_the_space_defaults_unset_searches_nothing_the_second_time(tmp_path, count_searches):
    doc = {"search": {"dataset": "digits", "cache_dir": str(tmp_path / "prep"), "epochs": 1, "batch_size": 16,
                      "steps_per_epoch": 1, "eval_batch_size": 64},  # channels, cells, channels_last: the defaults
           "select": {"pt_tune_epochs": 0, "pt_batches": 1},
           "grid": {"methods": ["darts", "pc8"], "seeds": [1], "selections": ["magnitude", "pt"],
                    "variants": {"pc8": {"method": "pc-darts", "channels": 8}}}}  # PC-DARTS at C=8: no channels-last
    p = tmp_path / "proto.yaml"
    p.write_text(yaml.safe_dump(doc))
    spec = grid.load_grid(p, str(tmp_path / "g"), str(tmp_path / "r"))
    first = grid.run_grid(spec)
    assert len(count_searches) == 2
    saved = read_json(tmp_path / "g" / "pc8-s1" / "search" / "result.json")["config"]
    assert (saved["channels"], saved["cells"], saved["channels_last"]) == (8, 5, False)
    selections = sorted((tmp_path / "g").rglob("selection.json"))
    stamps = [f.stat().st_mtime_ns for f in selections]
    assert grid.run_grid(spec) == first
    assert len(count_searches) == 2  # no search ran again
    assert [f.stat().st_mtime_ns for f in selections] == stamps  # nor a selection


@pytest.mark.parametrize("argv,message", [
    (["grid", "--protocol", "params/cpu-proxy.yaml", "--threads", "1000000"], "--threads: expected 0 to 1024, got 1000000"),
    (["grid", "--protocol", "params/cpu-proxy.yaml", "--workers", "0"], "--workers: expected 1 to 64, got 0"),
    (["calibrate", "--protocol", "params/s-calibration.yaml", "--workers", "1000"], "--workers: expected 1 to 64"),
    (["landscape", "--run", "nowhere", "--out", "x", "--points", "100000"], "--points: expected 2 to 101, got 100000"),
    (["landscape", "--run", "nowhere", "--out", "x", "--radius", "nan"], "--radius: expected a number in (0, 1000], got nan"),
])
def test_work_and_pool_sizes_are_bounded_before_any_work(argv, message, capsys, tmp_path, monkeypatch):
    from nas.cli import main

    monkeypatch.chdir(REPO_ROOT)
    assert main(argv) != 0
    assert message in capsys.readouterr().err


def test_a_calibration_candidate_name_stays_inside_its_folders(tmp_path):
    from nas.calibrate import load_calibration

    for name in ("../../escaped", "/abs", ".hidden", "a/b"):
        p = tmp_path / "cal.yaml"
        p.write_text(yaml.safe_dump({"retrain": {"epochs": 1}, "calibration": {
            "spaces": ["s1"], "seeds": [1, 2], "candidates": [{"name": name, "epochs": 1}]}}))
        with pytest.raises(NasError, match=r"calibration.candidates\[0\]: name .* \(expected letters, digits"):
            load_calibration(p, out=str(tmp_path / "out"), report=str(tmp_path / "rep"))
    assert not (tmp_path / "escaped").exists()


def test_an_alias_bomb_in_a_protocol_is_not_expanded_into_the_message(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    p = tmp_path / "proto.yaml"
    p.write_text(bomb + "search: {epochs: 1}\ngrid: {methods: [darts], seeds: *i, selections: [magnitude]}\n")
    with pytest.raises(NasError) as info:
        grid.load_grid(p, str(tmp_path / "g"), str(tmp_path / "r"))
    assert len(str(info.value)) < 400 and "grid.seeds" in str(info.value)


@pytest.mark.slow
def test_stored_progress_goes_up_while_a_job_runs_and_comes_back_into_an_empty_folder(tmp_path, capsys):
    """nas.runs.progress against a tracking store: changed files uploaded while the body runs (not the
    unchanged ones again), once more when it fails; another folder with nothing in it gets them back
    under the same identity, and a folder of its own keeps its files."""
    from nas.runs import progress

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store_ = progress.ProgressStore(uri, progress.progress_key("proto", "darts-s1", ""), "proto/darts-s1", every=0.5)
    first = tmp_path / "worker-a" / "darts-s1"
    (first / "search").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="worker lost"):
        with progress.kept(store_, first, "cell") as prog:
            write_json(first / "search" / "checkpoint.json", {"epoch": 3})
            (first / "search" / ".checkpoint.pt.tmp").write_bytes(b"half")  # temporary: never sent
            prog.upload()
            assert prog.upload() == 0  # nothing changed since
            (first / "search" / "checkpoint.pt").write_bytes(b"epoch 4")
            raise RuntimeError("worker lost")
    other = tmp_path / "worker-b" / "darts-s1"
    with progress.kept(store_, other, "cell"):
        assert read_json(other / "search" / "checkpoint.json") == {"epoch": 3}
        assert (other / "search" / "checkpoint.pt").read_bytes() == b"epoch 4"  # sent by the failure's upload
        assert not (other / "search" / ".checkpoint.pt.tmp").exists()
    assert "cell: continuing from its stored progress (2 files from run" in capsys.readouterr().err
    own = tmp_path / "worker-c" / "darts-s1"
    (own / "search").mkdir(parents=True)
    write_json(own / "search" / "checkpoint.json", {"epoch": 9})
    with progress.kept(store_, own, "cell"):
        assert read_json(own / "search" / "checkpoint.json") == {"epoch": 9}  # this machine's own folder wins
        assert not (own / "search" / "checkpoint.pt").exists()
    from mlflow.tracking import MlflowClient

    mc = MlflowClient(tracking_uri=uri)
    runs = mc.search_runs([mc.get_experiment_by_name(progress.EXPERIMENT).experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["progress_key"] == store_.key and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["restored"] == "1"  # once: the third folder kept its own files
    # a client that logs to a file or SQLite store ships no progress: a worker could not reach it
    assert progress.store_for(uri, "x", "p") is None and progress.store_for(None, "x", "p") is None
    assert progress.store_for("http://tracking:5000", "x", "p").uri == "http://tracking:5000"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon", "1e9"])
def test_the_progress_interval_is_bounded(value, monkeypatch):
    from nas.runs import progress

    monkeypatch.setenv(progress.EVERY_ENV, value)
    with pytest.raises(NasError, match=r"NAS_PROGRESS_EVERY=.*expected seconds between 0.5 and 86400"):
        progress.interval_from_env()

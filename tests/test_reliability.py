"""Nothing is lost on a forgotten flag, a bad setting, a full disk or a second worker; no bad input
is accepted silently; no small input makes the process allocate without bound."""

from __future__ import annotations

import errno
import gzip
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from nas import config as config_mod
from nas.cli import main
from nas.config import build_config
from nas.search import search
from nas.select import PT_CHECKPOINT, select
from nas.train import retrain
from nas.utils import NasError, atomic_write, torch_load, torch_save

REPO = Path(__file__).resolve().parent.parent
NB201_BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and len(msg) <= 300, f"not one short line ({len(msg)} chars): {msg[:400]}"
    return msg


def scfg(tiny_search, **kw):
    return build_config("search", overrides=tiny_search(**kw))


# ------------------------------------------------------------------------------------------ 1. lost work
def test_a_forgotten_resume_is_refused_and_force_starts_over(tiny_search, tmp_path, capsys):
    cfg = scfg(tiny_search, epochs=2)
    first = search(cfg)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(NasError, match="already holds a search run") as exc:
        search(cfg)
    assert "--resume" in str(exc.value) and "--force" in str(exc.value)
    one_line(exc.value)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before  # untouched
    # the CLI says the same and exits 2
    argv = ["search", "--dataset", "digits", "--out", str(tmp_path / "run"), "--epochs", "2", "--no-progress",
            "--device", "cpu", *sum((["--set", f"{k}={v}"] for k, v in tiny_search().items()
                                    if k in ("cache_dir", "channels", "cells", "batch_size", "steps_per_epoch")), [])]
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err

    # --force removes the old result at once: an interrupted forced run leaves no stale result.json
    def stop(st):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(cfg, force=True, callback=stop)
    assert not (tmp_path / "run" / "result.json").exists()
    assert torch_load(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    again = search(cfg, resume=True)
    assert again["alpha"] == first["alpha"]


def test_retrain_refuses_a_folder_holding_a_retrain(tmp_path):
    cfg = build_config("retrain", overrides=dict(dataset="digits", genotype=NB201_BEST, epochs=1, channels=4,
                                                 cells=1, out=str(tmp_path / "rt"), device="cpu", progress=False,
                                                 cache_dir=str(tmp_path / "cache")))
    retrain(cfg)
    with pytest.raises(NasError, match="already holds a retrain run.*--resume.*--force"):
        retrain(cfg)
    assert retrain(cfg, force=True)["epochs"] == 1
    # model.pt stays in the plain torch format (other tools load it)
    assert isinstance(torch.load(tmp_path / "rt" / "model.pt", weights_only=True), dict)


BAD_SETTINGS = [
    ("search", "w_lr=.nan", "'w_lr' expects a finite number"),
    ("search", "a_lr=.inf", "'a_lr' expects a finite number"),
    ("search", "w_lr=-0.1", "'w_lr' must be in"),
    ("search", "a_beta1=1.0", "'a_beta1' must be in"),
    ("search", "w_momentum=-0.5", "'w_momentum' must be in"),
    ("search", "grad_clip=-1", "'grad_clip' must be >= 0"),
    ("search", "es_start=-1", "'es_start' must be in"),
    ("search", "hessian_topk=31", "'hessian_topk' must be <= the 30 entries"),
    ("search", f"seed={2**63}", "'seed' must be in"),
    ("search", "crop_padding=100000", "'crop_padding' must be in"),
    ("search", "resolution=100000", "'resolution' must be in"),
    ("search", "out=", "'out' must name a folder"),
    ("search", "checkpoint_every=0", "'checkpoint_every' must be in"),
    ("search", "perturb=sideways", "'perturb' must be one of"),
    ("search", "dataset=mnist", "'dataset' must be one of"),
    ("search", "method=dartz", "method: unknown 'dartz'"),
    ("retrain", "eval_batch_size=0", "'eval_batch_size' must be in"),
    ("retrain", "checkpoint_every=0", "'checkpoint_every' must be in"),
    ("retrain", "lr=-1", "'lr' must be in"),
    ("retrain", "drop_path=1.5", "'drop_path' must be in"),
    ("select", "pt_lr_factor=0", "'pt_lr_factor' must be in"),
]


@pytest.mark.parametrize("kind,item,msg", BAD_SETTINGS)
def test_every_setting_is_range_checked_at_parse_time(kind, item, msg):
    with pytest.raises(NasError, match=msg) as exc:
        build_config(kind, sets=[item])
    one_line(exc.value)


def test_keys_that_may_change_on_resume(tmp_path):
    kw = dict(dataset="digits", genotype=NB201_BEST, epochs=2, channels=4, cells=1, out=str(tmp_path / "rt"),
              device="cpu", progress=False, cache_dir=str(tmp_path / "cache"))
    full = retrain(build_config("retrain", overrides={**kw, "out": str(tmp_path / "full")}))

    def stop(epoch, rec):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retrain(build_config("retrain", overrides=kw), callback=stop)
    res = retrain(build_config("retrain", overrides={**kw, "eval_batch_size": 7, "checkpoint_every": 3}), resume=True)
    assert res["test_acc"] == full["test_acc"]


def test_a_resolution_that_would_not_fit_in_memory_is_refused(monkeypatch):
    import nas.data
    import nas.data.stream

    monkeypatch.setattr(nas.data.stream, "available_memory", lambda: 8 << 30)
    manifest = {"counts": {"train": 50_000, "test": 10_000}, "channels": 3}
    nas.data.check_memory(manifest, 32, 4, 64, "cifar10.pt")  # the usual case passes
    with pytest.raises(NasError, match=r"cifar10.pt: resolution 1024 with crop padding 4 needs about 178.1 GiB "
                                       r"for 60000 images, more than the 8.0 GiB available") as exc:
        nas.data.check_memory(manifest, 1024, 4, 64, "cifar10.pt")
    one_line(exc.value)
    with pytest.raises(NasError, match="crop padding 128 needs"):
        nas.data.check_memory(manifest, 1024, 128, 65536, "cifar10.pt")


def test_duplicate_yaml_keys_are_refused(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("search:\n  epochs: 1\n  seed: 0\n  epochs: 500\n")
    with pytest.raises(NasError, match=r"dup.yaml: not valid YAML \(key 'epochs' given twice \(lines 2 and 4\)"):
        build_config("search", f)


# ------------------------------------------------------------------------------------------ 3. PT
def test_pt_checks_its_output_before_working_and_resumes_per_edge(tiny_search, tmp_path):
    search(scfg(tiny_search, epochs=2))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        cfg = build_config("select", overrides=dict(method="pt", run=str(tmp_path / "run"), out=str(out),
                                                    device="cpu", progress=False, pt_tune_epochs=1))
        with pytest.raises(NasError, match="a file, expected a folder") as exc:
            select(cfg)
        one_line(exc.value)

    base = dict(method="pt", run=str(tmp_path / "run"), device="cpu", progress=False, pt_tune_epochs=1)
    full = select(build_config("select", overrides={**base, "out": str(tmp_path / "pt-full")}))
    cfg = build_config("select", overrides={**base, "out": str(tmp_path / "pt")})

    def stop_after_three(k):
        if k == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        select(cfg, on_step=stop_after_three)
    ck = torch_load(tmp_path / "pt" / PT_CHECKPOINT)
    assert len(ck["decisions"]) == 3 and not (tmp_path / "pt" / "selection.json").exists()
    with pytest.raises(NasError, match="already holds a selection run.*--resume"):
        select(cfg)
    resumed = select(cfg, resume=True)
    assert resumed["genotype"] == full["genotype"]
    assert resumed["decisions"] == full["decisions"]
    assert resumed["final_val_acc"] == full["final_val_acc"]
    # a changed PT setting is not resumed
    changed = build_config("select", overrides={**base, "out": str(tmp_path / "pt"), "pt_tune_epochs": 2})
    with pytest.raises(NasError, match="cannot resume, config key 'pt_tune_epochs' was 1, now 2"):
        select(changed, resume=True)


# ------------------------------------------------------------------------------------------ 4. output faults
def test_output_path_faults_are_one_line_and_leave_no_temporaries(tiny_search, tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    for out, msg in ((f, "is a file, expected a folder"), (f / "run", "lies under .* which is a file")):
        with pytest.raises(NasError, match=msg) as exc:
            search(scfg(tiny_search, out=str(out)))
        one_line(exc.value)

    for code, text in ((errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")):
        def failing_write(p, code=code):
            with open(p, "wb") as fh:
                fh.write(b"partial")
            raise OSError(code, os.strerror(code))

        with pytest.raises(NasError, match=f"cannot write \\({text}\\)") as exc:
            atomic_write(tmp_path / "out" / "checkpoint.pt", failing_write)
        one_line(exc.value)
        assert list((tmp_path / "out").iterdir()) == []

    # a full disk in the middle of a search: one line, no temp file, the previous checkpoint intact
    cfg = scfg(tiny_search, epochs=3)
    calls = {"n": 0}
    real_replace = os.replace

    def replace_once_then_full(a, b):
        calls["n"] += str(b).endswith("checkpoint.pt")
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace_once_then_full)
    with pytest.raises(NasError, match="checkpoint.pt: cannot write \\(No space left on device\\)"):
        search(cfg)
    monkeypatch.setattr(os, "replace", real_replace)
    run = Path(cfg.out)
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoint.pt", "timings.json"]
    assert torch_load(run / "checkpoint.pt")["epoch"] == 1

    # temporaries of a killed write are removed when the folder is next claimed
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    search(cfg, resume=True)
    assert not list(run.glob(".*.tmp"))


def test_a_folder_claimed_by_another_process_is_refused(tiny_search, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(NasError, match="another process is writing this search folder") as exc:
            search(scfg(tiny_search))
        one_line(exc.value)
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------------------------ 5-7. wrong results
def test_a_flipped_bit_in_a_checkpoint_is_found(tiny_search, tmp_path):
    cfg = scfg(tiny_search, epochs=2)

    def stop(st):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(cfg, callback=stop)
    path = Path(cfg.out) / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(NasError, match="checkpoint.pt: checksum mismatch") as exc:
        search(cfg, resume=True)
    one_line(exc.value)


def test_resuming_on_other_data_is_refused(tiny_search, tmp_path):
    from conftest import make_image_folder

    a = make_image_folder(tmp_path / "a", per_class=(8, 3), size=8, seed=0)
    b = make_image_folder(tmp_path / "b", per_class=(8, 3), size=8, seed=1)
    cfg = scfg(tiny_search, dataset="imagefolder", data=str(a), epochs=2, batch_size=4)

    def stop(st):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(cfg, callback=stop)
    other = scfg(tiny_search, dataset="imagefolder", data=str(b), epochs=2, batch_size=4)
    with pytest.raises(NasError, match="cannot resume, the data changed") as exc:
        search(other, resume=True)
    one_line(exc.value)
    assert search(cfg, resume=True)["dataset"]["train_images"] == 24


@pytest.mark.parametrize("weights", [[[math.nan] * 5] * 6, [[0.2] * 5] * 5, [["a"] * 5] * 6, [[0.9, 0.9, 0, 0, 0]] * 6])
def test_select_refuses_a_result_with_bad_weights(tiny_search, tmp_path, weights):
    search(scfg(tiny_search, epochs=1))
    path = tmp_path / "run" / "result.json"
    res = json.loads(path.read_text())
    res["weights"] = weights
    path.write_text(json.dumps(res))  # json writes NaN as the non-standard NaN token
    with pytest.raises(NasError, match="result.json: 'weights'") as exc:
        select(build_config("select", overrides=dict(run=str(tmp_path / "run"))))
    one_line(exc.value)


def test_select_refuses_nan_in_the_history(tiny_search, tmp_path):
    search(scfg(tiny_search, epochs=1))
    path = tmp_path / "run" / "result.json"
    res = json.loads(path.read_text())
    res["history"][0]["weights"][2][1] = math.nan
    path.write_text(json.dumps(res))
    with pytest.raises(NasError, match="history: column 'weight_(sum_error|min)'"):
        select(build_config("select", overrides=dict(run=str(tmp_path / "run"))))


# ------------------------------------------------------------------------------------------ 8-9. bounded
def _peak_rss_mb(argv: list[str], tmp_path: Path) -> tuple[int, str, float]:
    # VmHWM: this process's own peak resident memory (ru_maxrss would include the parent's at fork)
    code = ("import sys\nfrom nas.cli import main\nrc = main(sys.argv[1:])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
            "print('PEAK', int(hwm) / 1024, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    peak = float(p.stderr.rsplit("PEAK", 1)[1].split()[0])
    return p.returncode, p.stderr, peak


class _Zeros(io.RawIOBase):
    def __init__(self, n: int):
        self.n = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.n)
        b[:k] = bytes(k)
        self.n -= k
        return k


@pytest.mark.slow
def test_bombs_are_refused_within_500_mb(tmp_path):
    # a tar.gz of a few MB whose member inflates to 2 GB
    bomb = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(bomb, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 2 << 30
        tar.addfile(info, io.BufferedReader(_Zeros(info.size), 1 << 20))
    assert bomb.stat().st_size < 16 << 20
    # a 1 MB gzip that inflates to about 1 GB, as the NB201 table
    table = tmp_path / "table.csv.gz"
    with gzip.open(table, "wb", compresslevel=9) as g:
        for _ in range(1024):
            g.write(bytes(1 << 20))
    # a 12000 x 12000 PNG in an image folder
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "imgs" / split / "a").mkdir(parents=True)
    Image.new("L", (12000, 12000)).save(tmp_path / "imgs" / "train" / "a" / "big.png")
    Image.new("L", (8, 8)).save(tmp_path / "imgs" / "test" / "a" / "small.png")
    # a YAML alias bomb under a known key
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines[:-1]) + "\nsearch:\n  epochs: " +
                                        lines[-1].split(": ", 1)[1] + "\n")
    cases = [
        (["prepare", "--dataset", "cifar10", "--data", str(bomb), "--cache-dir", "c"], "larger than any official"),
        (["lookup", "--genotype", NB201_BEST, "--table", str(table)], "more than 64 MiB of table data"),
        (["prepare", "--dataset", "imagefolder", "--data", str(tmp_path / "imgs"), "--cache-dir", "c"],
         "image is 12000x12000, more than"),
        (["search", "--config", str(tmp_path / "bomb.yaml")], "key 'epochs' expects int, got"),
    ]
    for argv, msg in cases:
        rc, err, peak = _peak_rss_mb(argv, tmp_path)
        assert rc == 2, err[-2000:]
        assert msg in err, err[-2000:]
        line = [x for x in err.splitlines() if "error:" in x][0]
        assert len(line) <= 300
        print(f"{argv[0]} {msg}: peak {peak:.0f} MB", file=sys.stderr)
        assert peak <= 500, f"{argv[0]}: peak {peak:.0f} MB"


def test_echoed_input_is_cut(tmp_path):
    from nas.spaces import get_space

    huge = "|nor_conv_3x3~0|" * 70_000
    for space in ("nb201", "darts"):
        with pytest.raises(NasError) as exc:
            get_space(space).parse_genotype(huge)
        one_line(exc.value)
    with pytest.raises(NasError) as exc:
        build_config("search", sets=["epochs=" + "9" * 100_000 + "x"])
    one_line(exc.value)


DARTS_OK = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
DARTS_BAD = [
    DARTS_OK.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=5"),
    DARTS_OK.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(2, 6, 0)"),
    DARTS_OK.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(0, 10**12)"),
    DARTS_OK.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(0, 1000000000000)"),
    DARTS_OK.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=None"),
    DARTS_OK.replace("('sep_conv_3x3', 0)", "(['sep_conv_3x3'], 0)", 1),
    DARTS_OK.replace("('sep_conv_3x3', 0)", "({'a': 1}, 0)", 1),
    '{"normal": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "Genotype(normal=" + "[" * 100_000 + "]" * 100_000 + ")",
    "Genotype(normal=" + "x" * 1_000_000 + ")",
    DARTS_OK.replace("sep_conv_3x3", "sep_conv_3x3\udcff", 1),
    '{"normal": [["sep_conv_3x3", 0]], "normal_concat": null}',
]


@pytest.mark.parametrize("text", DARTS_BAD, ids=range(len(DARTS_BAD)))
def test_malformed_darts_genotypes_are_refused_in_one_line(text):
    from nas.spaces import get_space

    with pytest.raises(NasError) as exc:
        get_space("darts").parse_genotype(text)
    one_line(exc.value)


def test_corrupt_tables_are_one_line_also_after_a_search(tmp_path, tiny_search):
    from nas.benchmarks import load_table

    src = Path(REPO.parent / "shared" / "benchmarks" / "nb201_test_acc.csv")
    rows = src.read_bytes() if src.is_file() else None
    good = tmp_path / "t.csv.gz"
    good.write_bytes(gzip.compress(rows if rows else b"arch,cifar10_test\n"))
    blob = good.read_bytes()
    (tmp_path / "trunc.csv.gz").write_bytes(blob[: len(blob) // 2])
    flipped = bytearray(blob)
    flipped[len(blob) // 3] ^= 0x01
    (tmp_path / "flip.csv.gz").write_bytes(bytes(flipped))
    for name in ("trunc.csv.gz", "flip.csv.gz"):
        with pytest.raises(NasError, match=f"{name}: truncated or corrupt table") as exc:
            load_table(tmp_path / name)
        one_line(exc.value)
    # a finished search whose lookup table is corrupt still finishes (without the lookup)
    env_before = os.environ.get("NAS_NB201_TABLE")
    os.environ["NAS_NB201_TABLE"] = str(tmp_path / "trunc.csv.gz")
    try:
        argv = ["search", "--out", str(tmp_path / "run2"), "--no-progress", "--json"]
        for k, v in tiny_search().items():
            if k in ("cache_dir", "channels", "cells", "batch_size", "steps_per_epoch", "epochs", "device"):
                argv += ["--set", f"{k}={v}"]
        assert main(argv) == 0
    finally:
        if env_before is None:
            os.environ.pop("NAS_NB201_TABLE")
        else:
            os.environ["NAS_NB201_TABLE"] = env_before


# ------------------------------------------------------------------------------------------ 10-11. concurrency
def test_concurrent_csv_merges_lose_no_row(tmp_path):
    code = """
import sys
from pathlib import Path
from nas.grid import write_runs_csv
who = sys.argv[1]
for i in range(40):
    write_runs_csv(Path(sys.argv[2]), [{"protocol": "p", "method": who, "selection": "magnitude", "seed": i,
        "genotype": "|none~0|", "cifar10": 90.0, "cifar100": 70.0, "imagenet16-120": 40.0, "search_minutes": 1.0,
        "select_minutes": 0.0, "final_eigenvalue": 0.1, "skip_edges": 0}], merge=True)
"""
    path = tmp_path / "runs.csv"
    procs = [subprocess.Popen([sys.executable, "-c", code, who, str(path)], env={**os.environ, "PYTHONPATH": str(REPO)})
             for who in ("darts", "snas", "gdas")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    from nas.grid import read_runs_csv

    assert len(read_runs_csv(path)) == 120


@pytest.mark.slow
def test_two_grids_on_one_folder_compute_each_cell_once(tmp_path):
    import yaml

    proto = tmp_path / "proto.yaml"
    proto.write_text(yaml.safe_dump({
        "search": {"dataset": "digits", "space": "nb201", "epochs": 2, "channels": 4, "cells": 1, "batch_size": 32,
                   "steps_per_epoch": 3, "cache_dir": str(tmp_path / "cache")},
        "select": {"pt_tune_epochs": 0, "pt_batches": 1},
        "grid": {"methods": ["darts", "snas", "gdas"], "seeds": [1, 2], "selections": ["magnitude"]}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "NAS_NB201_TABLE": str(_table(tmp_path))}
    cmd = [sys.executable, "-m", "nas.cli", "grid", "--protocol", str(proto), "--out", str(tmp_path / "g"),
           "--report", str(tmp_path / "rep")]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
             for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    done = sum(e.count("search done") for e in errs)
    cached = sum(e.count("search cached") for e in errs)
    assert done == 6 and cached == 6, errs
    from nas.grid import read_runs_csv

    assert len(read_runs_csv(tmp_path / "rep" / "runs.csv")) == 6


def _table(tmp_path: Path) -> Path:
    """A NAS-Bench-201 table with every architecture (the shared one when present, else made up)."""
    src = REPO.parent / "shared" / "benchmarks" / "nb201_test_acc.csv"
    if src.is_file():
        return src
    import itertools

    from nas.spaces import nb201

    path = tmp_path / "nb201.csv"
    lines = ["arch,cifar10_test,cifar100_test,imagenet16_120_test"]
    for k, ops in enumerate(itertools.product(nb201.OPS, repeat=6)):
        lines.append(f"{nb201.format_genotype(ops)},{50 + k % 40},{30 + k % 40},{10 + k % 30}")
    path.write_text("\n".join(lines) + "\n")
    return path


SWEEP_WORKER = """
import sys
from nas import sweep
n = int(sys.argv[2])
rows = []
while True:
    row = sweep.run_trial(name="s", storage=sys.argv[1], method="drnas", mode="benchmark", params=sys.argv[3],
                          sets=[], out=sys.argv[4], pruner="none", track=True, max_trials=n)
    if row is None:
        break
    rows.append(row)
print("RAN", len(rows))
"""


@pytest.mark.slow
def test_concurrent_sweep_workers_finish_exactly_the_requested_trials(tmp_path, tiny_params):
    import optuna

    params = tiny_params(search={"epochs": 2, "hessian_every": 0})
    slow = tiny_params("slow.yaml", search={"epochs": 60, "hessian_every": 0})
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NAS_NB201_TABLE": str(_table(tmp_path)),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh-mlflow.db'}", "NAS_OPTUNA_HEARTBEAT": "3",
           "NAS_MLFLOW": "1"}

    def worker(i: int, n: int, params: Path = params, heartbeat: int = 3) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", SWEEP_WORKER, storage, str(n), str(params),
                                 str(tmp_path / "trials"), str(i)],
                                env={**env, "NAS_OPTUNA_HEARTBEAT": str(heartbeat)}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    # three workers on a fresh study and a fresh MLflow store: no crash, exactly 4 finished trials
    # (a long heartbeat here: three searches on 2 cores can starve a heartbeat thread for seconds,
    # and a live trial must not be taken for a dead one; the kill below uses 3 s)
    procs = [worker(i, 4, heartbeat=30) for i in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-1500:] for o in outs]
    study = optuna.load_study(study_name="s", storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4 and len(states) == 4, \
        [str(states)] + [o[1][-3000:] for o in outs]
    # a worker killed mid-trial: its trial goes stale, is marked FAIL and retried by the next worker
    import signal
    import time

    victim = worker(9, 5, slow)
    deadline = time.time() + 300
    while time.time() < deadline:
        running = [t for t in optuna.load_study(study_name="s", storage=storage).trials
                   if t.state == optuna.trial.TrialState.RUNNING and t.params]  # mid-search, strength drawn
        if running:
            break
        time.sleep(0.2)
    assert running, "the victim never started a trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    time.sleep(7)  # past the grace period of two heartbeats
    again = worker(10, 5, slow)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-1500:]
    trials = optuna.load_study(study_name="s", storage=storage).trials
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.RUNNING not in states, (states, err[-3000:])
    assert states.count(optuna.trial.TrialState.FAIL) == 1, (states, err[-3000:])
    assert states.count(optuna.trial.TrialState.COMPLETE) == 5
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL][0]
    assert failed.number == running[0].number
    from nas.sweep import retried_from

    retried = [t for t in trials if retried_from(t) is not None]
    assert len(retried) == 1 and retried_from(retried[0]) == failed.number
    assert retried[0].params == failed.params and retried[0].state == optuna.trial.TrialState.COMPLETE


# ------------------------------------------------------------------------------------------ fuzz
def test_fuzz_inputs_give_one_line_errors_or_valid_values(tmp_path, tiny_search):
    """Fixed-seed fuzzing of genotypes (both spaces), config values and corrupted files: every
    input is either valid and accepted, or refused with one line; no traceback, no hang."""
    import random
    import re
    import signal

    from nas.benchmarks import load_table
    from nas.data import load_prepared, prepare
    from nas.spaces import get_space, nb201

    rng = random.Random(20261129)
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("hang")))
    refused = accepted = 0

    def attempt(fn, *args):
        nonlocal refused, accepted
        signal.alarm(20)
        try:
            out = fn(*args)
            accepted += 1
            return out
        except NasError as exc:
            one_line(exc)
            refused += 1
            return None
        finally:
            signal.alarm(0)

    # NB201 genotypes: accepted exactly when they match the grammar
    canon = re.compile(r"\|(\w+)~0\|\+\|(\w+)~0\|(\w+)~1\|\+\|(\w+)~0\|(\w+)~1\|(\w+)~2\|")
    alphabet = list("|+~0123_ ") + ["none", "skip_connect", "nor_conv_3x3", "avg_pool_3x3", "x", "\udcff"]
    for _ in range(400):
        g = list(NB201_BEST)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(g) + 1)
            op = rng.random()
            if op < 0.4 and g:
                del g[min(pos, len(g) - 1)]
            elif op < 0.8:
                g.insert(pos, rng.choice(alphabet))
            else:
                g[min(pos, len(g) - 1)] = rng.choice(alphabet)
        text = "".join(g)
        out = attempt(get_space("nb201").parse_genotype, text)
        if out is not None:
            m = canon.fullmatch(text.strip())
            assert m and all(op in nb201.OPS for op in m.groups()), text
    # DARTS genotypes: mutated strings; accepted ones round-trip
    darts = get_space("darts")
    pieces = ["(", ")", "[", "]", ",", "'", "0", "7", "-1", "None", "range(2, 6)", "{", "}", '"', "x" * 50]
    for _ in range(300):
        g = DARTS_OK
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(g))
            g = g[:pos] + rng.choice(pieces) + g[pos + rng.randint(0, 3):]
        out = attempt(darts.parse_genotype, g)
        if out is not None:
            assert darts.parse_genotype(darts.format_genotype(out)) == out
    # config values: accepted values lie in the declared ranges
    values = [-1, 0, 1, 2**63, -(2**70), 0.5, 1.5, math.nan, math.inf, -math.inf, "x", "", None, [1, 2], {"a": 1},
              True, 10**6, 1e300]
    for kind in ("search", "retrain", "select"):
        fields = config_mod.config_fields(kind)
        for _ in range(150):
            key, value = rng.choice(fields), rng.choice(values)
            cfg = attempt(config_mod.from_dict, kind, {key: value})
            if cfg is not None and key in config_mod.RANGES and isinstance(getattr(cfg, key), (int, float)):
                v = getattr(cfg, key)
                lo, hi, _, _ = config_mod.RANGES[key]
                assert math.isfinite(v) and (lo is None or v >= lo) and (hi is None or v <= hi), (key, value)
    # corrupted files: checkpoint, prepared data, table, result
    ck = tmp_path / "ck.pt"
    torch_save(ck, {"alpha": torch.randn(6, 5), "epoch": 3})
    blob = ck.read_bytes()
    for _ in range(40):
        bad = bytearray(blob)
        if rng.random() < 0.5:
            bad = bad[: rng.randrange(len(bad))]
        else:
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        ck.write_bytes(bytes(bad))
        assert attempt(torch_load, ck) is None
    prepared = prepare("digits", None, tmp_path / "cache")
    good = prepared.read_bytes()
    for _ in range(10):
        bad = bytearray(good)
        bad[rng.randrange(len(bad))] ^= 0xFF
        prepared.write_bytes(bytes(bad))
        assert attempt(load_prepared, prepared) is None
    prepared.write_bytes(good)
    table = _table(tmp_path)
    gz = tmp_path / "fuzz.csv.gz"
    blob = gzip.compress(Path(table).read_bytes())
    for _ in range(15):
        bad = bytearray(blob)
        if rng.random() < 0.5:
            bad = bad[: rng.randrange(len(bad))]
        else:
            bad[rng.randrange(20, len(bad))] ^= 1 << rng.randrange(8)
        gz.write_bytes(bytes(bad))
        os.utime(gz, ns=(rng.randrange(10**18), rng.randrange(10**18)))  # no stale cache entry
        assert attempt(load_table, gz) is None
    search(scfg(tiny_search, epochs=1))
    res_path = tmp_path / "run" / "result.json"
    res = json.loads(res_path.read_text())
    text = res_path.read_text()
    mutations = [
        lambda r: {**r, "weights": None}, lambda r: {**r, "weights": "x"}, lambda r: {**r, "weights": [[]]},
        lambda r: {**r, "weights": [[-0.5, 1.5, 0, 0, 0]] * 6}, lambda r: {**r, "history": "x"},
        lambda r: {**r, "history": [1, 2]}, lambda r: {k: v for k, v in r.items() if k != "space"},
        lambda r: {**r, "space": "nb999"}, lambda r: [r],
    ]
    for mutate in mutations:
        res_path.write_text(json.dumps(mutate(res)))
        assert attempt(select, build_config("select", overrides=dict(run=str(tmp_path / "run")))) is None
    for _ in range(10):
        cut = text[: rng.randrange(len(text))]
        res_path.write_text(cut)
        assert attempt(select, build_config("select", overrides=dict(run=str(tmp_path / "run")))) is None
    assert refused > 600 and accepted > 50


@pytest.mark.slow
def test_flows_started_together_on_an_empty_prefect_home_migrate_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    code = "from flows.common import ready_local_prefect; ready_local_prefect(); print('ready')"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-2000:] for o in outs]
    assert all(o[0].strip() == "ready" for o in outs)
    assert not any("duplicate column" in o[1] for o in outs)
    assert list((tmp_path / "home").glob(".nas-db-ready-*")) and (tmp_path / "home" / "prefect.db").is_file()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has ended (only its exit status is left)


def test_grid_workers_end_when_the_grid_is_killed(tmp_path):
    """A grid killed with SIGKILL (or SIGTERM) leaves no worker computing on: each worker watches
    its parent and leaves once it is gone."""
    import signal
    import textwrap
    import time

    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "grid_parent.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing as mp, os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from nas.grid.run import exit_with_parent

        def job(path):
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)
            time.sleep(300)

        if __name__ == "__main__":
            pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=exit_with_parent,
                                       initargs=(os.getpid(), 0.1))
            pool.submit(job, sys.argv[1])
            time.sleep(300)
    """))
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    try:
        deadline = time.monotonic() + 120
        while not pid_file.is_file():
            assert time.monotonic() < deadline and parent.poll() is None, "the worker never started"
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), f"worker {worker} outlived its grid"
    finally:
        parent.kill()


def test_a_trial_waits_for_its_database_and_gives_up_after_nas_db_retry(monkeypatch, capsys):
    import sqlalchemy.exc as sa_exc

    from nas import sweep

    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = []

    def flaky(x, times=2):
        calls.append(x)
        if len(calls) <= times:
            raise sa_exc.OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))
        return 2 * x

    assert sweep.with_db_retry("trial 7", flaky, 21) == 42
    assert len(calls) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["trial 7: database unreachable (OperationalError); retrying in 1 s",
                     "trial 7: database unreachable (OperationalError); retrying in 2 s"]

    calls.clear()
    monkeypatch.setenv("NAS_DB_RETRY", "0")  # no waiting: the database error itself
    with pytest.raises(sa_exc.OperationalError):
        sweep.with_db_retry("trial 7", flaky, 1)
    assert len(calls) == 1

    calls.clear()
    monkeypatch.delenv("NAS_DB_RETRY")
    with pytest.raises(ValueError, match="not a database error"):  # other errors are never retried
        sweep.with_db_retry("trial 7", lambda: calls.append(0) or (_ for _ in ()).throw(ValueError("not a database error")))
    assert calls == [0]

    monkeypatch.setenv("NAS_DB_RETRY", "soon")
    with pytest.raises(NasError, match=r"^NAS_DB_RETRY: expected seconds, got 'soon'$"):
        sweep.with_db_retry("trial 7", flaky, 1)

"""No small input makes the process allocate or run without bound, and fixed-seed fuzzing of
genotypes, settings and files gives one-line errors or valid values."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import nb201_table, one_line, scfg

from nas import config as config_mod
from nas.cli import main
from nas.config import build_config
from nas.runs.files import torch_load, torch_save
from nas.search import search
from nas.select import select
from nas.utils import NasError

REPO = Path(__file__).resolve().parent.parent
NB201_BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"






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


def _zeros_gz(path: Path, head: bytes, mib: int) -> None:
    """A gzip file that inflates to ``head`` then ``mib`` MiB of zeros.  It is written as a chain of
    gzip members (RFC 1952 allows any number; every reader inflates them as one stream), one member
    compressed once and repeated: it takes as long to inflate as one compressed in a single piece, and
    milliseconds to write."""
    member = gzip.compress(bytes(1 << 20), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(head))
        for _ in range(mib):
            f.write(member)


@pytest.mark.slow
def test_bombs_are_refused_within_500_mb(tmp_path):
    # a tar.gz of a few MB whose member inflates to 2 GB
    bomb = tmp_path / "cifar-10-python.tar.gz"
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.size = 2 << 30
    _zeros_gz(bomb, info.tobuf(tarfile.USTAR_FORMAT), info.size >> 20)  # the zeros end the archive too
    assert bomb.stat().st_size < 16 << 20
    with tarfile.open(bomb, "r:gz") as tar:  # a valid archive whose member claims 2 GB
        assert tar.next().size == 2 << 30
    # a few MB of gzip that inflate to 1 GB, as the NB201 table
    table = tmp_path / "table.csv.gz"
    _zeros_gz(table, b"", 1024)
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
    table = nb201_table(tmp_path)
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

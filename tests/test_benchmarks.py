import pytest

from nas.benchmarks import load_table
from nas.utils import NasError

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"


def test_reference_points_of_the_table():
    t = load_table()
    arch, acc = t.oracle("cifar10")
    assert arch == BEST and round(acc, 2) == 94.37
    assert round(t.oracle("cifar100")[1], 2) == 73.51
    assert round(t.oracle("imagenet16-120")[1], 2) == 47.31
    r = t.lookup(SKIP, "cifar10")
    assert round(r["test_accuracy"], 2) == 54.30
    assert round(r["all_datasets"]["cifar100"], 2) == 15.61
    assert r["rank"] > 15000 and r["of"] == 15625
    assert t.lookup(BEST)["rank"] == 1


def test_unknown_dataset_and_bad_genotype_are_named():
    t = load_table()
    with pytest.raises(NasError, match="'svhn' is not in the NAS-Bench-201 table"):
        t.lookup(BEST, "svhn")
    with pytest.raises(NasError, match="unknown op 'conv_9x9'"):
        t.lookup(BEST.replace("nor_conv_1x1", "conv_9x9"))


def test_genotype_missing_from_table_is_named(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("arch,cifar10_test,cifar100_test,imagenet16_120_test\n" + f"{BEST},94.37,73.51,47.31\n")
    t = load_table(f)
    with pytest.raises(NasError, match="is not in the NAS-Bench-201 table"):
        t.lookup(SKIP)


@pytest.mark.parametrize("body,msg", [
    ("arch,acc\n", "missing column 'cifar10_test'"),
    ("arch,cifar10_test,cifar100_test,imagenet16_120_test\n" + BEST + ",abc,1,1\n",
     "column 'cifar10_test' line 2: value 'abc'"),
    ("arch,cifar10_test,cifar100_test,imagenet16_120_test\n" + SKIP + ",1,1,1\n" + BEST + ",101,1,1\n",
     "column 'cifar10_test' line 3: value 101.0 fails in_range"),
    ("arch,cifar10_test,cifar100_test,imagenet16_120_test\n|bad~0|,1,1,1\n", "column 'arch' line 2: value '|bad~0|'"),
    ("arch,cifar10_test,cifar100_test,imagenet16_120_test\n" + BEST + ",1,1,1\n" + BEST + ",1,1,1\n",
     "column 'arch' line 2.*field_uniqueness"),
    ("arch,cifar10_test,cifar100_test,imagenet16_120_test\n", "no rows"),
])
def test_corrupt_tables_are_rejected(tmp_path, body, msg):
    f = tmp_path / "t.csv"
    f.write_text(body)
    with pytest.raises(NasError, match=msg):
        load_table(f)

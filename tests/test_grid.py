"""The benchmark grid: protocol checks, cached and resumable cells, the table and the figures."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml

from nas import grid
from nas.benchmarks import load_table
from nas.spaces import get_space
from nas.utils import NasError


@pytest.fixture
def protocol(tmp_path):
    def make(**grid_section):
        doc = {"search": {"dataset": "digits", "cache_dir": str(tmp_path / "prep"), "epochs": 2, "channels": 4,
                          "cells": 1, "batch_size": 32, "steps_per_epoch": 3, "hessian_every": 1,
                          "random_samples": 2, "random_epochs": 1},
               "select": {"pt_tune_epochs": 0, "pt_batches": 1},
               "grid": {"methods": ["darts", "random"], "seeds": [1, 2], "selections": ["magnitude", "pt"],
                        "strength": True, **grid_section}}
        p = tmp_path / "proto.yaml"
        p.write_text(yaml.safe_dump(doc))
        return p
    return make


def test_grid_rows_table_figures_and_cache(protocol, tmp_path):
    spec = grid.load_grid(protocol(landscape=True, curve={"methods": ["darts"], "seeds": [1], "every": 1}),
                          str(tmp_path / "g"), str(tmp_path / "r"))
    rows = grid.run_grid(spec)
    # darts: magnitude + pt per seed; random: its own selection per seed
    assert sorted((r["method"], r["selection"], r["seed"]) for r in rows) == [
        ("darts", "magnitude", 1), ("darts", "magnitude", 2), ("darts", "pt", 1), ("darts", "pt", 2),
        ("random", "random", 1), ("random", "random", 2)]
    table = load_table()
    for r in rows:
        assert r["cifar10"] == table.accuracy(r["genotype"], "cifar10")
        assert r["imagenet16-120"] == table.accuracy(r["genotype"], "imagenet16-120")
        assert r["skip_edges"] == r["genotype"].count("skip_connect")
    mag = [r["cifar10"] for r in rows if r["selection"] == "magnitude"]
    md = (tmp_path / "r" / "table.md").read_text()
    assert f"| darts | magnitude | 2 | {statistics.fmean(mag):.2f} ± {statistics.stdev(mag):.2f}" in md
    assert "| oracle (best in table) | - | - | 94.37 | 73.51 | 47.31 |" in md
    csv_rows = grid.read_runs_csv(tmp_path / "r" / "runs.csv")
    assert len(csv_rows) == 6
    figs = {p.name for p in (tmp_path / "r" / "figures").iterdir()}
    assert figs == {"alpha_per_op.png", "eigenvalue.png", "pt_vs_magnitude.png", "alpha_vs_drop.png",
                    "sharpness_over_epochs.png", "landscape.png", "search_epochs.png"}
    strength = json.loads((tmp_path / "g" / "darts-s1" / "strength" / "strength.json").read_text())
    assert len(strength["rows"]) == 6 * 5
    # the curves behind the figures are kept beside the table: per-op means sum to one per epoch,
    # the eigenvalue curve and the strength rows are the run's own
    curves = json.loads((tmp_path / "r" / "curves.json").read_text())
    assert set(curves) == {"darts/1", "darts/2"}
    c = curves["darts/1"]
    assert all(abs(sum(c["ops"][op][e] for op in c["ops"]) - 1) < 1e-5 for e in range(len(c["epochs"])))
    res1 = json.loads((tmp_path / "g" / "darts-s1" / "search" / "result.json").read_text())
    assert c["hessian"] == res1["hessian"]["top_eigenvalue"] and c["strength"]["spearman"] == strength["spearman"]
    # the sharpness panels: the supernet's validation accuracy and the NB201 accuracy of α's cell per epoch
    assert c["val_acc"] == [h["val_acc"] for h in res1["history"]]
    assert c["selected_cifar10"] == [load_table().accuracy(h["genotype"], "cifar10") for h in res1["history"]]
    # the landscape of the first seed's supernet, as `nas landscape` measures it
    land = json.loads((tmp_path / "g" / "darts-s1" / "landscape" / "landscape.json").read_text())
    assert c["landscape"]["loss"] == land["loss"] and len(land["loss"]) == 11 and "landscape" not in curves["darts/2"]
    # the selections against the search epoch: seed 1 kept epochs 1 and 2; the final PT is the row's own
    sc = c["selection_curve"]
    assert [(r["epoch"], r["selection"]) for r in sc] == [(1, "magnitude"), (1, "pt"), (2, "magnitude"), (2, "pt")]
    assert sc[0]["genotype"] == res1["history"][0]["genotype"] and sc[2]["genotype"] == res1["genotype"]
    pt1 = next(r for r in rows if r["method"] == "darts" and r["seed"] == 1 and r["selection"] == "pt")
    assert sc[3]["genotype"] == pt1["genotype"] and all(r["cifar10"] == table.accuracy(r["genotype"], "cifar10") for r in sc)
    early = json.loads((tmp_path / "g" / "darts-s1" / "select-pt-e1" / "selection.json").read_text())
    assert early["epoch"] == 1 and early["magnitude_genotype"] == res1["history"][0]["genotype"]
    assert "selection_curve" not in curves["darts/2"] and not (tmp_path / "g" / "darts-s2" / "search" / "epochs").exists()

    # a second invocation reads every finished cell back: nothing is recomputed
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "g").rglob("result.json")}
    stamp.update({p: p.stat().st_mtime_ns for p in (tmp_path / "g").rglob("selection.json")})
    assert grid.run_grid(spec) == rows
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())

    # a lost cell is recomputed alone, to the same result (resumable grid, deterministic cells)
    (tmp_path / "g" / "darts-s2" / "search" / "result.json").unlink()
    (tmp_path / "g" / "darts-s2" / "search" / "checkpoint.pt").unlink()
    again = grid.run_grid(spec)

    def same(rs):
        return sorted(tuple(r[k] for k in ("method", "selection", "seed", "genotype", "final_eigenvalue")) for r in rs)

    assert same(again) == same(rows)
    other = tmp_path / "g" / "darts-s1" / "search" / "result.json"
    assert other.stat().st_mtime_ns == stamp[other]

    # the figures are redrawn from the committed files alone (runs.csv, curves.json): no run folders
    import shutil

    shutil.rmtree(tmp_path / "g")
    for f in (tmp_path / "r" / "figures").iterdir():
        f.unlink()
    grid.write_report(spec)
    assert {p.name for p in (tmp_path / "r" / "figures").iterdir()} == figs

    # the report keeps each finished cell's JSON results (no weights): a grid with the report and
    # an empty run folder (another machine, a fresh clone) reads every cell back from it; a
    # recomputed PT or search would need the supernets, which were never archived
    archived = tmp_path / "r" / "cells"
    assert {p.name for p in archived.iterdir()} == {"darts-s1", "darts-s2", "random-s1", "random-s2"}
    assert not [p for p in archived.rglob("*") if p.is_file() and p.suffix != ".json"]
    assert (archived / "darts-s1" / "curve.json").is_file() and (archived / "darts-s1" / "select-pt-e1").is_dir()
    assert same(grid.run_grid(spec)) == same(rows)
    assert not list((tmp_path / "g").rglob("*.pt"))


def test_changed_protocol_reruns_the_search(protocol, tmp_path):
    p = protocol(methods=["darts"], seeds=[1], selections=["magnitude"])
    spec = grid.load_grid(p, str(tmp_path / "g"), str(tmp_path / "r"))
    grid.run_grid(spec)
    res = tmp_path / "g" / "darts-s1" / "search" / "result.json"
    t0 = res.stat().st_mtime_ns
    doc = yaml.safe_load(p.read_text())
    doc["search"]["epochs"] = 3
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(NasError, match="cannot resume, config key 'epochs' was 2, now 3"):
        grid.run_grid(grid.load_grid(p, str(tmp_path / "g"), str(tmp_path / "r")))
    assert res.stat().st_mtime_ns == t0  # the old result is not overwritten by a mismatched run


@pytest.mark.parametrize("section,msg", [
    ({"methods": ["dartz"]}, "unknown method 'dartz' in grid.methods"),
    ({"selections": ["best"]}, "unknown selection 'best'"),
    ({"seeds": "1,2"}, "key 'grid.seeds' expects a non-empty list of int"),
    ({"colour": 1}, "unknown key 'grid.colour'"),
    ({"landscape": "yes"}, "key 'grid.landscape' expects bool"),
    ({"strength": ["dartz"]}, "key 'grid.strength' names 'dartz', which is neither a method nor"),
    ({"strength": "yes"}, "key 'grid.strength' expects a non-empty list of str"),
    ({"curve": {"every": 0}}, "key 'grid.curve.every' expects a positive int"),
    ({"curve": {"every": 5, "methods": ["snas"]}}, "grid.curve.methods names 'snas', which is not in grid.methods"),
    ({"reuse": ["data/results/nowhere"]}, "key 'grid.reuse' names 'data/results/nowhere', which has no cells/ folder"),
])
def test_bad_protocols_are_named(protocol, section, msg):
    with pytest.raises(NasError, match=msg):
        grid.load_grid(protocol(**section))


def test_shipped_protocols_load():
    from conftest import REPO

    proxy = grid.load_grid(REPO / "params" / "cpu-proxy.yaml")
    assert len(proxy.seeds) >= 3 and "darts" in proxy.methods and proxy.name == "cpu-proxy"
    paper = grid.load_grid(REPO / "params" / "paper.yaml")
    from nas import config as config_mod

    cfg = config_mod.build_config("search", REPO / "params" / "paper.yaml")
    assert (cfg.channels, cfg.cells, cfg.batch_size, cfg.train_portion, cfg.subset) == (16, 5, 64, 0.5, 0)
    assert paper.report.endswith("paper")
    c16 = grid.load_grid(REPO / "params" / "cpu-proxy-c16.yaml")
    assert c16.seeds == [1, 2, 3, 4, 5] and "sdarts-adv" in c16.methods and not c16.retrain
    c16_cfg = config_mod.build_config("search", REPO / "params" / "cpu-proxy-c16.yaml")
    assert (c16_cfg.channels, c16_cfg.subset, c16_cfg.epochs, c16_cfg.adv_steps) == (16, 2500, 24, 1)
    sp = grid.load_grid(REPO / "params" / "cpu-proxy-s.yaml")
    assert sp.retrain and sp.spaces == ["s1", "s2", "s3", "s4"] and sp.seeds == [1, 2]
    assert sp.selections == ["magnitude", "pt", "pt-fix"] and sp.methods == ["darts"]
    s_cfg = config_mod.build_config("search", REPO / "params" / "cpu-proxy-s.yaml")
    assert (s_cfg.channels, s_cfg.cells, s_cfg.subset, s_cfg.batch_size, s_cfg.epochs) == (8, 5, 200, 32, 100)
    s_rt = config_mod.build_config("retrain", REPO / "params" / "cpu-proxy-s.yaml")
    assert (s_rt.channels, s_rt.cells, s_rt.cutout, s_rt.drop_path, s_rt.auxiliary_weight) == (16, 8, 8, 0.2, 0.0)
    dp = grid.load_grid(REPO / "params" / "darts-paper.yaml")
    assert dp.retrain and dp.spaces is None and dp.pt_methods == ["darts-1st", "sdarts-adv"]
    assert {dp.base_method(m) for m in dp.methods} == {"darts", "snas", "drnas", "sdarts-adv", "pc-darts"}
    assert dp.strength == dp.methods  # strength: true is every row


def test_strength_on_a_list_of_rows_keeps_those_the_grid_runs(protocol):
    spec = grid.load_grid(protocol(methods=["darts", "snas", "gdas"], strength=["gdas", "darts", "drnas"]))
    assert spec.strength == ["darts", "gdas"]  # in the grid's order; drnas is not a row here
    assert grid.load_grid(protocol(methods=["darts"], strength=False)).strength == []


def test_the_bf16_protocol_is_cpu_proxy_in_bf16():
    """The precision comparison is only fair while the two protocols differ in precision alone."""
    from conftest import REPO

    from nas import config as config_mod

    files = {n: REPO / "params" / f"{n}.yaml" for n in ("cpu-proxy", "cpu-proxy-bf16")}
    for stage in ("search", "select"):
        a, b = (config_mod.to_dict(config_mod.build_config(stage, f)) for f in files.values())
        assert {k for k in a if a[k] != b[k]} == ({"precision"} if stage == "search" else set())
    specs = [grid.load_grid(f) for f in files.values()]
    assert [(s.methods, s.seeds, s.selections, s.pt_methods, s.strength) for s in specs][0] == \
        [(s.methods, s.seeds, s.selections, s.pt_methods, s.strength) for s in specs][1]


@pytest.mark.parametrize("protocol", ["cpu-proxy", "cpu-proxy-bf16", "cpu-proxy-c16", "cpu-proxy-c16-verify"])
@pytest.mark.committed
def test_committed_results_match_the_table(protocol):
    """The per-run CSV in the repository is valid and each row's accuracy is the table's."""
    from conftest import REPO

    path = REPO / "data" / "results" / protocol / "runs.csv"
    rows = grid.read_runs_csv(path)
    table = load_table()
    assert rows
    for r in rows:
        assert r["cifar10"] == pytest.approx(table.accuracy(r["genotype"], "cifar10"), abs=1e-4)


# each report's first columns and the value it averages: NB201 grids look cells up, S1-S4 retrain them
DOCS_TABLES = {
    "cpu-proxy": (lambda r: f"{r['method']} | {r['selection']}", "cifar10"),
    "cpu-proxy-c16": (lambda r: f"{r['method']} | {r['selection']}", "cifar10"),
    "cpu-proxy-c16-verify": (lambda r: f"{r['method']} | {r['selection']}", "cifar10"),
    "cpu-proxy-s": (lambda r: f"{r['space']} | {r['method']} | {r['selection']}", "test_error"),
}


@pytest.mark.parametrize("protocol", list(DOCS_TABLES))
@pytest.mark.committed
def test_docs_quote_the_committed_table(protocol):
    """The docs' table is the grid's table.md, and each of its cells is the mean ± sample std of
    the committed per-run rows."""
    import statistics

    from conftest import REPO

    folder = REPO / "data" / "results" / protocol
    table = (folder / "table.md").read_text().strip()
    # the results page of the docs that discusses the grid quotes its table as it is
    docs = "\n".join(f.read_text() for f in sorted((REPO / "docs" / "results").glob("*.md")))
    assert table in docs
    key, value = DOCS_TABLES[protocol]
    groups: dict[str, list[float]] = {}
    rows = grid.read_runs_csv(folder / "runs.csv")
    for r in rows:
        groups.setdefault(key(r), []).append(r[value])
    if protocol == "cpu-proxy-s":
        assert {r["space"] for r in rows} == {"s1", "s2", "s3", "s4"}
    for k, vals in groups.items():
        cell = f"| {k} | {len(vals)} | {statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f} |"
        assert cell in table, cell


def test_proxy_fidelity_quantities():
    """The step and α-travel arithmetic behind the proxy's justification (bench/proxy_fidelity.py)."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    try:
        import proxy_fidelity as pf
    finally:
        sys.path.remove(str(REPO / "bench"))
    ref = pf.quantities(str(REPO / "params" / "paper.yaml"))
    assert (ref["w images"], ref["steps per epoch"], ref["alpha steps"], ref["cells in all"]) == (25000, 391, 19550, 17)
    assert ref["alpha travel budget"] == pytest.approx(5.865)
    proxy = pf.quantities(str(REPO / "params" / "cpu-proxy.yaml"), sets=["a_lr=0.0018"])
    assert (proxy["w images"], proxy["steps per epoch"], proxy["alpha steps"], proxy["channels"]) == (5000, 79, 3160, 8)
    assert proxy["alpha travel budget"] == pytest.approx(0.0018 * 3160) and proxy["w/alpha step ratio"] == 1
    warm = pf.quantities(str(REPO / "params" / "cpu-proxy.yaml"), sets=["arch_warmup=10"])
    assert warm["alpha steps"] == 30 * 79 and warm["w steps"] == 40 * 79
    # the realised path of α: the sum of per-epoch moves, from the near-zero start
    res = {"history": [{"alpha": [[0.0, 0.0]], "train_acc": 0.5}, {"alpha": [[0.5, -0.5]], "train_acc": 0.6}],
           "alpha": [[0.5, -0.5]], "weights": [[0.7, 0.3]], "edge_ops": [["skip_connect", "none"]]}
    r = pf.realised(res)
    assert r["alpha path"] == pytest.approx(0.5) and r["final alpha spread"] == 1.0 and r["skip weight"] == 0.7


def test_retraining_grid_over_the_robustdarts_spaces(tmp_path):
    """S2 and S4 as one grid: DARTS with magnitude, PT and PT on the fix-α supernet, every selected
    cell trained from scratch; the table in the papers' form, the cells figure, and a cached second call."""
    cache = str(tmp_path / "prep")
    doc = {"search": {"space": "s2", "dataset": "digits", "cache_dir": cache, "epochs": 2, "channels": 4, "cells": 3,
                      "batch_size": 16, "eval_batch_size": 8, "steps_per_epoch": 2, "hessian_every": 1},
           "select": {"pt_tune_epochs": 0, "pt_batches": 1},
           "retrain": {"dataset": "digits", "cache_dir": cache, "resolution": 32, "channels": 4, "cells": 3,
                       "epochs": 1, "subset": 10, "batch_size": 32, "eval_batch_size": 256},
           "grid": {"spaces": ["s2", "s4"], "methods": ["darts"], "seeds": [1],
                    "selections": ["magnitude", "pt", "pt-fix"], "strength": True}}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(doc))
    spec = grid.load_grid(p, str(tmp_path / "g"), str(tmp_path / "r"))
    assert spec.retrain and spec.cells() == [("s2", "darts", 1), ("s4", "darts", 1)]
    rows = grid.run_grid(spec)
    assert sorted((r["space"], r["selection"]) for r in rows) == [
        ("s2", "magnitude"), ("s2", "pt"), ("s2", "pt-fix"), ("s4", "magnitude"), ("s4", "pt"), ("s4", "pt-fix")]
    for r in rows:
        cell = tmp_path / "g" / f"{r['space']}-darts-s1"
        rt = json.loads((cell / f"retrain-{r['selection']}" / "result.json").read_text())
        assert rt["genotype"] == r["genotype"] and rt["config"]["space"] == r["space"]
        assert r["test_acc"] == pytest.approx(100 * rt["test_acc"]) and r["test_error"] == pytest.approx(100 - r["test_acc"])
        normal = [op for op, _ in get_space(r["space"]).parse_genotype(r["genotype"]).normal]
        assert (r["normal_skip"], r["normal_noise"]) == (normal.count("skip_connect"), normal.count("noise"))
        assert r["retrain_minutes"] > 0 and r["params_m"] > 0
    # the fix-α supernet: α never moved from zero, and PT made the pt-fix row from it
    fix = json.loads((tmp_path / "g" / "s2-darts-s1" / "search-fix" / "result.json").read_text())
    assert all(v == 0 for row in fix["alpha"] for v in row)
    sel = json.loads((tmp_path / "g" / "s2-darts-s1" / "select-pt-fix" / "selection.json").read_text())
    assert sel["genotype"] == next(r["genotype"] for r in rows if r["space"] == "s2" and r["selection"] == "pt-fix")
    md = (tmp_path / "r" / "table.md").read_text()
    s4 = {r["selection"]: r["test_error"] for r in rows if r["space"] == "s4"}
    assert "| space | DARTS | DARTS+PT | DARTS+PT (fix α) |" in md
    assert f"| s4 | {s4['magnitude']:.2f} ± 0.00 | {s4['pt']:.2f} ± 0.00 | {s4['pt-fix']:.2f} ± 0.00 |" in md
    assert len(grid.read_runs_csv(tmp_path / "r" / "runs.csv")) == 6
    figs = {f.name for f in (tmp_path / "r" / "figures").iterdir()}
    assert {"cells.png", "alpha_per_op.png", "eigenvalue.png", "alpha_vs_drop.png"} <= figs
    for space in ("s2", "s4"):  # the strength analysis on DARTS-space supernets: every op of every edge
        strength = json.loads((tmp_path / "g" / f"{space}-darts-s1" / "strength" / "strength.json").read_text())
        assert len(strength["rows"]) == 2 * 14 * 2  # normal and reduction edges, each of the 2 ops
    curves = json.loads((tmp_path / "r" / "curves.json").read_text())
    assert set(curves) == {"s2/darts/1", "s4/darts/1"} and set(curves["s4/darts/1"]["ops"]) == {"noise", "sep_conv_3x3"}
    # everything is cached: a second call trains nothing
    stamp = {f: f.stat().st_mtime_ns for f in (tmp_path / "g").rglob("result.json")}
    assert grid.run_grid(spec) == rows
    assert all(f.stat().st_mtime_ns == t for f, t in stamp.items())

    # re-evaluation (docs, "Re-evaluating the selected cells"): another protocol with the same search and
    # select sections but its own retrain section reads the searches and selections back from this
    # grid's report (grid.reuse, no supernet on disk) and trains only the selected cells again
    doc["retrain"]["epochs"] = 2
    doc["grid"]["reuse"] = [str(tmp_path / "r")]
    p2 = tmp_path / "s-eval.yaml"
    p2.write_text(yaml.safe_dump(doc))
    again = grid.run_grid(grid.load_grid(p2, str(tmp_path / "g2"), str(tmp_path / "r2")))
    key = lambda r: (r["space"], r["selection"])  # noqa: E731
    assert sorted((key(r), r["genotype"], r["search_minutes"]) for r in again) == sorted(
        (key(r), r["genotype"], r["search_minutes"]) for r in rows)
    assert {r["protocol"] for r in again} == {"s-eval"} and not list((tmp_path / "g2").glob("*/search*/*.pt"))
    for r in again:
        rt = json.loads((tmp_path / "g2" / f"{r['space']}-darts-s1" / f"retrain-{r['selection']}" / "result.json").read_text())
        assert rt["config"]["epochs"] == 2 and len(rt["history"]) == 2
    assert (tmp_path / "r2" / "figures" / "cells.png").is_file()


def test_retraining_grid_settings_are_checked(protocol, tmp_path):
    with pytest.raises(NasError, match="unknown space 's9' in grid.spaces"):
        grid.load_grid(protocol(spaces=["s2", "s9"]))
    with pytest.raises(NasError, match="key 'grid.retrain' is false, but a space of the grid has no lookup table"):
        grid.load_grid(protocol(spaces=["s2"], retrain=False))
    with pytest.raises(NasError, match="key 'grid.curve' looks the kept supernets' cells up"):
        grid.load_grid(protocol(spaces=["s2"], curve={"every": 1}))
    with pytest.raises(NasError, match="key 'grid.variants.darts' names the method 'darts' but runs 'snas'"):
        grid.load_grid(protocol(variants={"darts": {"method": "snas"}}))
    with pytest.raises(NasError, match="key 'grid.variants.d2': .*'ordr'"):
        grid.load_grid(protocol(variants={"d2": {"method": "darts", "ordr": 2}}))
    spec = grid.load_grid(protocol(methods=["darts-2nd"], variants={"darts-2nd": {"method": "darts", "order": 2}}))
    assert spec.base_method("darts-2nd") == "darts" and spec.variants["darts-2nd"]["order"] == 2


def test_the_darts_paper_grid_at_tiny_scale(tmp_path):
    """params/darts-paper.yaml's own grid (its rows, variants, PT and retrains), with the search and
    evaluation scaled down to the embedded digits: every row of the papers' table runs end to end."""
    from conftest import REPO

    doc = yaml.safe_load((REPO / "params" / "darts-paper.yaml").read_text())
    cache = str(tmp_path / "prep")
    doc["search"].update(dataset="digits", cache_dir=cache, subset=52, epochs=2, channels=8, cells=3, batch_size=16,
                         eval_batch_size=8, steps_per_epoch=1, hessian_every=0)
    doc["select"].update(pt_tune_epochs=0, pt_batches=1)
    doc["retrain"].update(dataset="digits", cache_dir=cache, resolution=32, channels=4, cells=3, epochs=1, subset=5,
                          batch_size=32, eval_batch_size=256)
    doc["grid"]["seeds"] = [1]
    # PT and the strength analysis on DARTS-space supernets (a couple of hundred supernet forwards
    # each) are run by the S2/S4 grid test below, PT's exclusion of the zero op by
    # test_darts_space.py's PT topology test
    doc["grid"].update(strength=False, selections=["magnitude"])
    doc["grid"].pop("pt_methods")
    # pc-darts keeps the paper's batch of 256: subset 52 per class gives each split 260 images
    for variant in doc["grid"]["variants"].values():  # their warm-ups are as long as the tiny searches
        if "arch_warmup" in variant:
            variant["arch_warmup"] = 0
    p = tmp_path / "darts-paper.yaml"
    p.write_text(yaml.safe_dump(doc))
    spec = grid.load_grid(p, str(tmp_path / "g"), str(tmp_path / "r"))
    rows = grid.run_grid(spec)
    assert sorted((r["method"], r["selection"]) for r in rows) == sorted((m, "magnitude") for m in spec.methods)
    assert not list((tmp_path / "g").glob("*/strength/strength.json"))
    # the variants ran with their own settings
    res = {m: json.loads((tmp_path / "g" / f"{m}-s1" / "search" / "result.json").read_text())["config"]
           for m in ("darts-2nd", "drnas-progressive", "pc-darts")}
    assert res["darts-2nd"]["order"] == 2 and res["pc-darts"]["batch_size"] == 256
    assert res["drnas-progressive"]["progressive"] and res["drnas-progressive"]["progressive_k1"] == 8
    md = (tmp_path / "r" / "table.md").read_text()
    assert "| space | darts-1st | darts-2nd | snas |" in md
    assert all(r["space"] == "darts" and 0 < r["test_error"] <= 100 for r in rows)


@pytest.mark.committed
def test_readme_headline_table_is_the_committed_one():
    from conftest import REPO

    table = (REPO / "data" / "results" / "cpu-proxy-c16" / "table.md").read_text().strip()
    assert table in (REPO / "README.md").read_text()

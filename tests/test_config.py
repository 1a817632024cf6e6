from pathlib import Path

import pytest

from nas.config import SearchConfig, build_config, parse_set
from nas.utils import NasError


def test_defaults_match_the_nb201_reference_search():
    cfg = build_config("search")
    assert isinstance(cfg, SearchConfig)
    assert (cfg.w_lr, cfg.w_lr_min, cfg.w_momentum, cfg.w_weight_decay, cfg.grad_clip) == (0.025, 0.001, 0.9, 3e-4, 5.0)
    assert (cfg.a_lr, cfg.a_beta1, cfg.a_beta2) == (3e-4, 0.5, 0.999)
    from nas.methods import build_method

    assert build_method(cfg).a_weight_decay == 1e-3  # DARTS; DrNAS moves it into its regulariser
    assert build_method(build_config("search", sets=["method=drnas"])).a_weight_decay == 0.0
    from nas.config import resolve_defaults
    from nas.spaces import get_space

    r = resolve_defaults(build_config("retrain"), get_space("nb201").retrain_defaults)
    assert (r.lr, r.lr_min, r.nesterov, r.weight_decay, r.batch_size, r.epochs) == (0.1, 0.0, True, 5e-4, 256, 200)
    d = resolve_defaults(build_config("retrain", sets=["space=darts", "lr=0.05"]), get_space("darts").retrain_defaults)
    assert (d.lr, d.channels, d.cells, d.auxiliary_weight, d.drop_path, d.cutout, d.epochs, d.weight_decay) == (
        0.05, 36, 20, 0.4, 0.2, 16, 600, 3e-4)


def test_precedence_file_then_flags_then_set(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("search:\n  epochs: 7\n  w_lr: 0.1\n  seed: 3\nretrain:\n  epochs: 99\n")
    cfg = build_config("search", f, {"seed": 4}, ["w_lr=0.2"])
    assert (cfg.epochs, cfg.seed, cfg.w_lr) == (7, 4, 0.2)
    assert build_config("retrain", f).epochs == 99


def test_flat_file_ignores_other_stage_sections(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("epochs: 3\nretrain:\n  epochs: 5\n")
    assert build_config("search", f).epochs == 3


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("search:\n  epoch: 7\n")
    with pytest.raises(NasError, match=r"p.yaml: unknown key 'epoch' for 'search'"):
        build_config("search", f)
    with pytest.raises(NasError, match=r"--set lrr=1: unknown key 'lrr'"):
        build_config("search", sets=["lrr=1"])


@pytest.mark.parametrize("item,msg", [
    ("epochs=ten", "key 'epochs' expects int, got 'ten'"),
    ("epochs=1.5", "key 'epochs' expects int"),
    ("augment=3", "key 'augment' expects bool"),
    ("w_lr=fast", "key 'w_lr' expects float"),
])
def test_wrong_type_is_named(item, msg):
    with pytest.raises(NasError, match=msg):
        build_config("search", sets=[item])


def test_ranges_are_checked():
    with pytest.raises(NasError, match="'order' must be one of 1, 2"):
        build_config("search", sets=["order=3"])
    with pytest.raises(NasError, match="'train_portion' must be in"):
        build_config("search", sets=["train_portion=1.0"])


def test_set_values_are_yaml_and_ints_widen_to_float():
    assert parse_set("data=null") == ("data", None)
    assert parse_set("flip=true") == ("flip", True)
    assert build_config("search", sets=["w_lr=1"]).w_lr == 1.0
    with pytest.raises(NasError, match="expected key=value"):
        parse_set("epochs")


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(NasError, match="nope.yaml: config file not found"):
        build_config("search", tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(NasError, match="bad.yaml: not valid YAML"):
        build_config("search", bad)


def test_every_params_file_declares_the_regularisation_strengths():
    """So that ``dvc params diff`` and the MLflow params show them; the values are the defaults."""
    import yaml

    from nas.config import SearchConfig

    repo = Path(__file__).resolve().parent.parent
    # the documented departures (README, "What the proxy keeps of the reference"): a CPU budget
    deviations = {("cpu-proxy-c16.yaml", "adv_steps"): 1, ("cpu-proxy-c16-verify.yaml", "adv_steps"): 1}
    for path in sorted((repo / "params").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if "search" not in doc:  # a calibration file trains fixed cells: no search to regularise
            assert set(doc) == {"retrain", "calibration"}, path.name
            continue
        search = doc["search"]
        for key in ("rs_sigma", "adv_epsilon", "eps_start", "adv_steps", "drnas_reg", "drnas_lambda"):
            want = deviations.get((path.name, key), SearchConfig.model_fields[key].default)
            assert search.get(key) == want, f"{path.name}: search.{key}"

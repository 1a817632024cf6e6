"""Mixed precision and compilation: what stays fp32, resumption, fallbacks, refusals."""

import pytest
import torch
from conftest import Killed, killed_then_resumed

from nas.config import build_config
from nas.precision import Precision, Runner
from nas.runs.files import torch_load
from nas.search import Search, search
from nas.train import retrain
from nas.utils import NasError

GENO = "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"


@pytest.fixture(autouse=True)
def _ieee_denormals_after():
    yield
    torch.set_flush_denormal(False)  # mixed precision switches flushing on for the process


def test_mixed_precision_on_cpu_flushes_denormals_and_fp32_keeps_them():
    tiny = torch.tensor([1e-39])  # an fp32 denormal
    Precision("bf16", "cpu")
    assert (tiny * 1.0).item() == 0.0
    Precision("fp32", "cpu")
    assert (tiny * 1.0).item() == pytest.approx(1e-39, rel=1e-3)


def test_runner_autocasts_the_network_and_returns_fp32():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    x = torch.randn(2, 3, 6, 6)
    net(x)
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = Runner(net, Precision("bf16", "cpu"))(x)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in net.parameters())
    # fp32 without compilation is the module itself, bit for bit
    assert torch.equal(Runner(net, Precision("fp32", "cpu"))(x), net(x))
    assert not Precision("bf16", "cpu").scaler().is_enabled() and Precision("fp16", "cpu").scaler().is_enabled()


def test_bf16_search_keeps_fp32_state_and_stays_near_fp32(tiny_search, tmp_path):
    a = search(build_config("search", overrides=tiny_search(out=str(tmp_path / "a"))))
    s = Search(build_config("search", overrides=tiny_search(out=str(tmp_path / "b"), precision="bf16")))
    states = []
    b = s.run(callback=states.append)
    st = states[-1]
    assert st.arch.alpha.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in st.model.parameters())
    assert all(v.dtype == torch.float32 for s_ in st.a_opt.state.values() for v in s_.values() if v.dim())
    da = (torch.tensor(a["alpha"]) - torch.tensor(b["alpha"])).abs().max().item()
    assert 0 < da < 2e-3  # α moved by about 1e-3 per Adam step; bf16 changes the path, not its scale
    assert abs(a["history"][-1]["train_loss"] - b["history"][-1]["train_loss"]) < 0.05
    assert b["config"]["precision"] == "bf16"


def test_second_order_hypergradient_and_hessian_stay_fp32(tiny_search, tmp_path):
    # one step: the α step (the unrolled hypergradient) runs before any w step, so α after it is
    # the same whatever the precision of the w step
    runs = {p: search(build_config("search", overrides=tiny_search(
        order=2, epochs=1, steps_per_epoch=1, precision=p, out=str(tmp_path / p)))) for p in ("fp32", "bf16")}
    assert runs["fp32"]["alpha"] == runs["bf16"]["alpha"]
    eigs = []
    for p in ("fp32", "bf16"):
        s = Search(build_config("search", overrides=tiny_search(precision=p, out=str(tmp_path / f"h{p}"))))
        bundle, _, a_stream = s.streams()
        eigs.append(s.measurement.hessian(s.build_state(bundle), a_stream)["hessian_eig"])
    assert eigs[0] == eigs[1]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_search_resumes_exactly(tiny_search, tmp_path, precision):
    full = search(build_config("search", overrides=tiny_search(epochs=3, precision=precision,
                                                               out=str(tmp_path / "full"))))

    cfg = build_config("search", overrides=tiny_search(epochs=3, precision=precision, out=str(tmp_path / "cut")))
    resumed = killed_then_resumed(search, cfg, at=1)
    assert resumed["alpha"] == full["alpha"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]


def test_fp16_loss_scale_is_checkpointed(tiny_search, tmp_path):
    states = []
    Search(build_config("search", overrides=tiny_search(epochs=1, precision="fp16"))).run(callback=states.append)
    ck = torch_load(tmp_path / "run" / "checkpoint.pt")
    assert ck["w_scaler"]["scale"] == states[-1].w_scaler.get_scale()
    assert "a_scaler" in ck


def test_changing_precision_on_resume_is_refused(tiny_search, tmp_path):
    search(build_config("search", overrides=tiny_search(epochs=1)))
    with pytest.raises(NasError, match="cannot resume, config key 'precision' was 'fp32', now 'bf16'"):
        search(build_config("search", overrides=tiny_search(epochs=1, precision="bf16")), resume=True)
    with pytest.raises(NasError, match="config: key 'precision' must be one of fp32, bf16, fp16, got 'fp8'"):
        build_config("search", overrides=tiny_search(precision="fp8"))


def test_failed_compilation_warns_once_and_runs_eagerly(tiny_search, tmp_path, monkeypatch, capfd):
    eager = search(build_config("search", overrides=tiny_search(out=str(tmp_path / "eager"))))

    def broken(module, **kw):
        def call(*args):
            raise RuntimeError("no C++ compiler found\nsecond line")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    res = search(build_config("search", overrides=tiny_search(out=str(tmp_path / "c"), compile=True)))
    err = capfd.readouterr().err
    assert err.count("warning: compile:") == 1
    assert "the supernet runs eagerly, torch.compile failed (RuntimeError: no C++ compiler found)" in err
    assert res["alpha"] == eager["alpha"]


def test_compiled_search_is_deterministic_and_resumes(tiny_search, tmp_path, monkeypatch):
    # dynamo traces the supernet (graph breaks, guards on the Mix) with the eager backend here;
    # inductor's code generation takes minutes on 2 cores and is measured in bench/supernet.py
    monkeypatch.setenv("NAS_COMPILE_BACKEND", "eager")
    eager = search(build_config("search", overrides=tiny_search(epochs=3, out=str(tmp_path / "eager"))))
    full = search(build_config("search", overrides=tiny_search(epochs=3, compile=True, out=str(tmp_path / "full"))))
    states = []

    def kill(state):
        states.append(state)
        if state.epoch == 1:
            raise Killed

    cfg = build_config("search", overrides=tiny_search(epochs=3, compile=True, out=str(tmp_path / "cut")))
    with pytest.raises(Killed):
        search(cfg, callback=kill)
    assert states[-1].forward.compiled
    resumed = search(cfg, resume=True)
    assert resumed["alpha"] == full["alpha"]
    diff = (torch.tensor(full["alpha"]) - torch.tensor(eager["alpha"])).abs().max().item()
    assert diff < 1e-6


def test_bf16_retrain_learns_resumes_and_saves_fp32_weights(tmp_path):
    def cfg(out, **kw):
        base = dict(dataset="digits", cache_dir=str(tmp_path / "cache"), genotype=GENO, epochs=3, channels=4,
                    cells=1, batch_size=64, lr=0.05, device="cpu", out=str(tmp_path / out), progress=False,
                    precision="bf16")
        base.update(kw)
        return build_config("retrain", overrides=base)

    full = retrain(cfg("full"))
    assert full["test_acc"] > 0.5 and full["config"]["precision"] == "bf16"
    state = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())

    def kill(epoch, rec):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        retrain(cfg("cut"), callback=kill)
    resumed = retrain(cfg("cut"), resume=True)
    assert resumed["test_acc"] == full["test_acc"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]

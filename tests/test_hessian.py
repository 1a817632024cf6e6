"""Sharpness: Hessian eigenvalues of L_val w.r.t. α, and early stopping on them."""

import pytest
import torch

from nas.config import build_config
from nas.hessian import dense_hessian, early_stop_epoch, top_eigenvalue, val_loss_fn
from nas.search import search
from nas.spaces import NB201
from nas.supernet import Supernet


def _problem(seed=0):
    torch.manual_seed(seed)
    m = Supernet(NB201, 4, 1, 3, 1).double()
    alpha = (0.5 * torch.randn(6, 5)).double()
    x, y = torch.randn(16, 1, 6, 6, dtype=torch.double), torch.randint(0, 3, (16,))
    return val_loss_fn(m, [(x, y)], lambda a: a.softmax(-1)), alpha


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_iterative_eigenvalue_agrees_with_the_dense_hessian(method):
    f, alpha = _problem()
    h = dense_hessian(f, alpha)
    torch.testing.assert_close(h, h.T)
    exact = float(torch.linalg.eigvalsh(h)[-1])
    eig = top_eigenvalue(f, alpha, method, k=3, tol=1e-8, iters=300)
    assert abs(eig.value - exact) <= 1e-3 * abs(exact)
    if method == "lanczos":
        top3 = torch.linalg.eigvalsh(h)[-3:].flip(0).tolist()
        assert eig.top == pytest.approx(top3, rel=1e-3)


def test_dense_hessian_matches_autograd_functional():
    f, alpha = _problem(1)
    ref = torch.autograd.functional.hessian(lambda a: f(a.view(6, 5)), alpha.flatten())
    torch.testing.assert_close(dense_hessian(f, alpha), 0.5 * (ref + ref.T))


def test_early_stop_triggers_on_a_rising_series_and_rolls_back():
    flat = {e: 1.0 for e in range(1, 31)}
    assert all(early_stop_epoch(flat, e) is None for e in range(1, 31))
    rising = {e: 1.0 if e <= 12 else 1.0 + 0.1 * (e - 12) for e in range(1, 31)}
    # local means over 5 epochs: at 16 -> (1.0+1.0+1.1+1.2+1.3+1.4)/5.. first epoch with ratio > 1.3
    hits = [(e, early_stop_epoch(rising, e)) for e in range(1, 31) if early_stop_epoch(rising, e) is not None]
    e, back = hits[0]
    now = sum(rising[t] for t in range(e - 4, e + 1)) / 5
    before = sum(rising[t] for t in range(e - 9, e - 4)) / 5
    prev_now = sum(rising[t] for t in range(e - 5, e)) / 5
    prev_before = sum(rising[t] for t in range(e - 10, e - 5)) / 5
    assert now / before > 1.3 >= prev_now / prev_before
    assert back == e - 5
    assert early_stop_epoch(rising, 9, start=10) is None  # not before the start epoch


def test_search_records_eigenvalues_without_changing_the_search(tiny_search, tmp_path):
    plain = search(build_config("search", overrides=tiny_search(out=str(tmp_path / "a"), epochs=2)))
    tracked = search(build_config("search", overrides=tiny_search(out=str(tmp_path / "b"), epochs=2,
                                                                  hessian_every=1, hessian_topk=2)))
    assert plain["alpha"] == tracked["alpha"]
    for h in tracked["history"]:
        assert h["hessian_eig"] == h["hessian_top"][0] and h["hessian_top"][0] >= h["hessian_top"][1]
        assert h["hessian_seconds"] > 0
    assert tracked["hessian"]["epochs"] == [1, 2]


def test_early_stopping_returns_the_architecture_before_the_growth(tiny_search, tmp_path, monkeypatch):
    import nas.hessian as hessian_mod
    from nas.hessian import Eigen

    series = iter([1.0] * 6 + [3.0] * 20)
    monkeypatch.setattr(hessian_mod, "sharpness", lambda *a, **k: Eigen(next(series), 1, 0.01))
    cfg = build_config("search", overrides=tiny_search(epochs=12, hessian_every=1, early_stop=True, es_window=2,
                                                       es_lookback=2, es_start=3))
    res = search(cfg)
    # eigenvalues 1,1,1,1,1,1,3,...: local mean of (6,7) = 2 vs (4,5) = 1 -> stop at epoch 7, back to 5
    assert res["early_stop"] == {"stopped_at": 7, "rollback_epoch": 5}
    assert len(res["history"]) == 7
    assert res["alpha"] == res["history"][4]["alpha"]
    assert res["genotype"] == res["history"][4]["genotype"]
    # resuming a stopped run finishes with the same answer
    again = search(cfg, resume=True)
    assert again["genotype"] == res["genotype"] and again["early_stop"] == res["early_stop"]


def test_early_stop_needs_the_eigenvalue_every_epoch():
    from nas.utils import NasError

    with pytest.raises(NasError, match="'hessian_every' must be 1 when early_stop is on"):
        build_config("search", sets=["early_stop=true", "hessian_every=2"])

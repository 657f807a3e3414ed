"""fastvae.iwae_bound with one obs_logvar per sample, as a Gaussian decoder that outputs
its variance gives (``(K, B, *)``: sample k's log p(x|z_k) under ``obs_logvar[k]``), on
every backend (the ``backend`` fixture): values and every gradient against the brute-force
float64 logsumexp for every reduction, shapes and broadcast patterns, strided layouts,
16-bit inputs, samples whose variance vanishes, gradcheck, estimators, IWAELoss,
torch.compile; and the errors of shapes that are neither shared nor per sample.

One obs_logvar shared by the K samples: tests/test_iwae_bound.py. The Triton kernel that
runs it (the two-pass one, at any K) and its tiles: tests/test_triton_iwae_tiles.py."""
from __future__ import annotations

import pytest
import torch

import fastvae
import _formulas as F
from _backends import bounded, case_dtype
from _compare import assert_close, grads, leaf
from _iwae import F64, REDUCTIONS, check, make

LOW = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("k,b,d,l", [(1, 3, 7, 2), (4, 5, 33, 3), (9, 2, 1003, 4),
                                     (50, 2, 30, 3)])
def test_matches_formula(seed, backend, k, b, d, l, reduction):
    """K = 1 (the MC ELBO), the one-pass and the two-pass kernels' K, a column tail."""
    b, d, l, k = bounded(b=b, d=d, l=l, k=k)
    check(backend, k, b, d, l, "gaussian_samples", reduction)


@pytest.mark.parametrize("k", [3, 9])
def test_strided(seed, backend, k):
    """obs_logvar's samples interleaved per row and its rows padded, read in place."""
    check(backend, k, 4, 33, 5, "gaussian_samples", "none", noncontig=True)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision(seed, backend, dtype):
    check(backend, 4, 9, 100, 3, "gaussian_samples", "sum", dtype=dtype)


@pytest.mark.parametrize("shape", [(1, 6), (4, 1, 6), (4, 3, 1), (4, 1, 1),
                                   (4, 3, 2, 1, 3), (4, 1, 2, 3, 3), (4, 3, 2, 3, 3)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_broadcast_patterns(seed, backend, shape, reduction):
    """Any shape broadcastable to recon_k's: one per sample (and per row, or per element),
    each gradient in obs_logvar's own shape (summed over its broadcast dims). (1, 6) is
    shared by the K samples (it broadcasts to x): the same numbers either way."""
    k, b = 4, 3
    dt = case_dtype(backend)
    data = (2, 3, 3) if len(shape) == 5 else (6,)
    x, recon_k, mu, lv, z_k = make(k, b, data, 2, dt)
    obs = leaf(torch.randn(shape, dtype=dt) * 0.5)
    opts = dict(likelihood="gaussian", obs_logvar=obs, reduction=reduction)
    got = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, backend=backend, **opts)
    want = F.iwae(x, recon_k, mu, lv, z_k, **opts)
    assert_close("value", got, want, dt, scale=100.0)
    ins = [x, recon_k, mu, lv, z_k, obs]
    w = torch.rand(got.shape, dtype=F64) + 0.5
    for name, g, e in zip(("x", "recon_k", "mu", "logvar", "z_k", "obs_logvar"),
                          grads(got, ins, w), grads(want, ins, w)):
        assert g.shape == e.shape, name
        assert_close(f"d/d{name}", g, e, dt, scale=e.abs().max() + 1e-3)


def test_a_sample_of_vanishing_variance_weighs_nothing(seed, backend):
    """Sample 0 of row 0 at obs_logvar -80 far from x: its log w is ~-1e35, its weight 0,
    and its partials (~1e35 / var) add exactly 0 to every gradient, not inf or NaN; a
    sample at +80 (a flat likelihood) is finite everywhere."""
    k, b, d, l = 3, 2, 5, 2
    dt = case_dtype(backend)
    x, recon_k, mu, lv, z_k = (t.detach() for t in make(k, b, (d,), l, dt))
    obs = torch.randn(k, b, d, dtype=dt) * 0.3
    obs[0, 0], obs[1, 1] = -80.0, 80.0
    recon_k[0, 0] += 3.0
    recon_k, obs = leaf(recon_k), leaf(obs)
    v = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood="gaussian", obs_logvar=obs,
                           backend=backend)
    want = F.iwae(x, recon_k, mu, lv, z_k, likelihood="gaussian", obs_logvar=obs)
    assert_close("value", v, want, dt)
    g_r, g_o = grads(v, [recon_k, obs])
    e_r, e_o = grads(want, [recon_k, obs])
    assert torch.equal(g_r[0, 0], torch.zeros_like(g_r[0, 0]))
    assert torch.equal(g_o[0, 0], torch.zeros_like(g_o[0, 0]))
    assert_close("d/drecon_k", g_r, e_r, dt)
    assert_close("d/dobs_logvar", g_o, e_o, dt)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(seed, backend, reduction):
    x, recon_k, mu, lv, z_k = make(3, 2, (4,), 2)
    obs = leaf(torch.randn(3, 2, 4, dtype=F64) * 0.3)

    def f(*a):
        return fastvae.iwae_bound(*a[:5], likelihood="gaussian", obs_logvar=a[5],
                                  reduction=reduction, backend=backend)

    assert torch.autograd.gradcheck(f, (x, recon_k, mu, lv, z_k, obs))


@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_estimators(seed, backend, estimator):
    """The decoder's variance is on the decoder's side: its gradient weighted by w~_k
    under every estimator, as recon_k's (DReG's second weight is on z_k alone)."""
    dt = case_dtype(backend)
    k, b, d, l = 4, 3, 6, 2
    torch.manual_seed(seed)
    mu, lv = leaf(torch.randn(b, l, dtype=dt)), leaf(torch.randn(b, l, dtype=dt) * 0.3)
    eps = torch.randn(k, b, l, dtype=dt)
    x = torch.randn(b, d, dtype=dt)
    dec = torch.randn(l, 2 * d, dtype=dt) * 0.5
    out = {}
    for name in ("ref", backend):
        params = [leaf(t) for t in (mu, lv, dec)]
        z_k = params[0] + torch.exp(0.5 * params[1]) * eps
        h = z_k @ params[2]
        recon_k, obs = h[..., :d], h[..., d:]
        v = fastvae.iwae_bound(x, recon_k, params[0], params[1], z_k, likelihood="gaussian",
                               obs_logvar=obs, estimator=estimator, reduction="mean",
                               backend="reference" if name == "ref" else backend)
        out[name] = (v, torch.autograd.grad(v, params))
    (v, g), (v_ref, g_ref) = out[backend], out["ref"]
    assert_close("value", v, v_ref, dt)
    for what, a, e in zip(("mu", "logvar", "decoder"), g, g_ref):
        assert_close(f"d/d{what}", a, e, dt)


def test_iwae_loss_takes_it(seed, backend):
    dt = case_dtype(backend)
    x, recon_k, mu, lv, z_k = make(3, 4, (5,), 2, dt)
    obs = leaf(torch.randn(3, 4, 5, dtype=dt))
    loss = fastvae.IWAELoss(likelihood="gaussian", backend=backend)(x, recon_k, mu, lv, z_k,
                                                                    obs_logvar=obs)
    want = -F.iwae(x, recon_k, mu, lv, z_k, likelihood="gaussian", obs_logvar=obs,
                   reduction="mean")
    assert_close("loss", loss, want, dt)
    (g,), (e,) = grads(loss, [obs]), grads(want, [obs])
    assert_close("d/dobs_logvar", g, e, dt)


def test_compile_fullgraph():
    x, recon_k, mu, lv, z_k = make(3, 2, (5,), 2, torch.float32)
    obs = leaf(torch.randn(3, 2, 5))

    def f(*a):
        return fastvae.iwae_bound(*a[:5], likelihood="gaussian", obs_logvar=a[5],
                                  reduction="none", backend="torch")

    ins = [x, recon_k, mu, lv, z_k, obs]
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(*ins)
    want = f(*ins)
    assert_close("value", got, want, torch.float32, rtol=1e-6)
    for g, e in zip(grads(got, ins), grads(want, ins)):
        assert_close("gradient", g, e, torch.float32, rtol=1e-6)


def test_shapes_neither_shared_nor_per_sample_are_refused():
    x, recon_k, mu, lv, z_k = make(3, 2, (4,), 2)
    for shape in [(2, 2, 4), (4, 2, 4), (2, 3, 2, 4), (3, 2, 5)]:
        with pytest.raises(ValueError, match=(
                rf"obs_logvar of shape \({', '.join(map(str, shape))}\) broadcasts neither "
                r"to x's shape \(2, 4\) \(one shared by the K samples\) nor to recon_k's "
                r"\(3, 2, 4\) \(one per sample\)")):
            fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood="gaussian",
                               obs_logvar=torch.zeros(shape, dtype=F64))

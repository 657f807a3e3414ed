"""The torch backend's C kernel for a Gaussian prior (gaussian_rows.c, bound by
fastvae/backends/torch_backend/gaussian_rows.py): that kl_normal, sample_with_kl and
reparameterize take it for float32 (and 16-bit, on upcast row chunks), that its results
do not depend on the thread count, every prior layout and row stride it is handed, the
16-bit chunking, and the aten fallback when the library is off.

The ops' results on both paths (formulas, extremes, broadcasts, the seed contract) are
in test_kl_normal.py and test_sample_with_kl.py (``cpu_path``)."""
from __future__ import annotations

import pytest
import torch

import fastvae
import _formulas as F
from _compare import assert_close, grads, leaf
from fastvae.backends.torch_backend import gaussian_rows, native, rows

F32 = torch.float32


@pytest.fixture
def kernel():
    if native.load() is None:
        pytest.skip(f"compiled kernel unavailable here: {native.status()}")


@pytest.fixture
def calls(monkeypatch):
    """The kernels' entry points looked up, in order."""
    seen = []
    symbol = native.symbol
    monkeypatch.setattr(native, "symbol", lambda name, *a, **k: seen.append(name) or symbol(
        name, *a, **k))
    return seen


def test_every_op_takes_the_kernel(kernel, calls):
    mu, lv, pm, plv = (leaf(torch.randn(4, 3, 5)) for _ in range(4))
    fastvae.kl_normal(mu, lv, pm, plv, backend="torch").sum().backward()
    assert calls == ["fastvae_gauss_kl_rows", "fastvae_gauss_kl_bwd_rows"]
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend="torch")
    (z.sum() + kl.sum()).backward()
    assert calls[2:] == ["fastvae_gauss_kl_rows", "fastvae_gauss_kl_bwd_rows"]
    m2, l2 = leaf(mu.detach().reshape(4, -1)), leaf(lv.detach().reshape(4, -1))
    fastvae.reparameterize(m2, l2, n_samples=2, backend="torch").sum().backward()
    assert calls[4:] == ["fastvae_gauss_sample_rows", "fastvae_gauss_sample_bwd_rows"]
    for half in (torch.float16, torch.bfloat16):  # forward on upcast chunks, z from aten
        fastvae.sample_with_kl(mu.detach().to(half), lv.detach().to(half), backend="torch")
    assert calls[6:] == ["fastvae_gauss_kl_rows"] * 2


def test_fallback_without_the_library(monkeypatch):
    """FASTVAE_NATIVE=0: the kernels decline and the noise is torch.randn's eps (the C
    path draws its own stream from a seed), with the same KL and z = mu + e^(lv/2) eps."""
    mu, lv, pm, plv = (torch.randn(6, 40) for _ in range(4))
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend="torch")
    monkeypatch.setenv("FASTVAE_NATIVE", "0")
    native.reset()
    try:
        torch.manual_seed(3)
        z2, kl2 = fastvae.sample_with_kl(mu, lv, pm, plv, backend="torch")
        torch.manual_seed(3)
        eps = torch.randn(6, 40)
        assert not gaussian_rows.kl_rows(mu, lv, pm, plv, None, None, torch.empty(6), None,
                                         None, None, None)
        assert native.load() is None
    finally:
        monkeypatch.undo()
        native.reset()
    assert_close("z", z2, mu.double() + torch.exp(0.5 * lv.double()) * eps, F32)
    assert_close("kl", kl, kl2, F32)


def seed_of(value: int):
    return torch.tensor([value], dtype=torch.int64)


def stream(seed, b, n, n_samples=0):
    """The C stream's eps for a (B, N) draw: exp(0/2) eps = eps exactly."""
    out = torch.empty((b, n) if n_samples == 0 else (n_samples, b, n))
    assert gaussian_rows.sample_rows(None, torch.zeros(b, n), seed, n_samples, out)
    return out


def _inputs(b, n, layout, gen):
    mu, lv = torch.randn(b, n, generator=gen), torch.randn(b, n, generator=gen) * 3
    if layout == "none":
        return mu, lv, None, None
    if layout == "shared":
        return mu, lv, torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    if layout == "broadcast rows":  # a (1, N) prior expanded: row stride 0
        return mu, lv, torch.randn(1, n, generator=gen).expand(b, n), torch.randn(
            1, n, generator=gen).expand(b, n)
    if layout == "one per row":  # a (B, 1) prior expanded: column stride 0, read in place
        return mu, lv, torch.randn(b, 1, generator=gen).expand(b, n), torch.randn(
            b, 1, generator=gen).expand(b, n)
    if layout == "mean only":
        return mu, lv, torch.randn(b, n, generator=gen), None
    return mu, lv, torch.randn(b, n, generator=gen), torch.randn(b, n, generator=gen)


def _forward(mu, lv, pm, plv, seed, threads):
    b, n = mu.shape
    outs = [torch.empty(b, n) for _ in range(5)]
    kl = torch.empty(b)
    assert gaussian_rows.kl_rows(mu, lv, pm, plv, seed, None if seed is None else outs[0], kl,
                                 *outs[1:], threads=threads)
    return [kl, *outs]


LAYOUTS = ["none", "mean only", "shared", "broadcast rows", "one per row", "full"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_against_float64_and_threads(kernel, layout):
    """Each prior layout (and a row-strided posterior: the two halves of one encoder
    output), a row length with a vector tail: the KL, z and every gradient against the
    float64 formulas, and the same bits on one thread and on two."""
    gen = torch.Generator().manual_seed(11)
    b, n = 37, 203
    mu, lv, pm, plv = _inputs(b, n, layout, gen)
    both = torch.cat([mu, lv], 1)                   # row stride 2n, elements contiguous
    mu, lv = both[:, :n], both[:, n:]
    seed = seed_of(2**40 + 17)
    one = _forward(mu, lv, pm, plv, seed, threads=1)
    two = _forward(mu, lv, pm, plv, seed, threads=2)
    for a, c in zip(one, two):
        assert torch.equal(a, c)
    kl, z, g_mu, g_pm, g_lv, g_plv = one
    # per-row prior gradients: the kernel's are (B, N) whatever the prior's layout
    o = [None if t is None else t.double().expand(b, n).clone().requires_grad_()
         for t in (mu, lv, pm, plv)]
    prior = [0.0 if t is None else t for t in o[2:]]
    want = F.kl_normal_dim(o[0], o[1], *prior).sum(-1)
    assert_close("kl", kl, want, F32)
    ins = [t for t in o if t is not None]
    g = dict(zip([k for k, t in zip(("mu", "lv", "pm", "plv"), o) if t is not None],
                 grads(want, ins)))
    assert_close("dKL/dmu", g_mu, g["mu"], F32)
    assert_close("dKL/dlv", g_lv, g["lv"], F32)
    assert_close("dKL/dpm", g_pm, -g["mu"], F32)
    if "plv" in g:
        assert_close("dKL/dplv", g_plv, g["plv"], F32)
    eps = stream(seed, b, n)
    assert_close("z", z, mu.double() + torch.exp(0.5 * lv.double()) * eps.double(), F32)
    z2 = torch.empty(b, n)
    assert gaussian_rows.sample_rows(mu, lv, seed, 0, z2, threads=2)
    assert torch.equal(z2, z)  # reparameterize's z: the same bits


@pytest.mark.parametrize("op", ["kl_normal", "sample_with_kl"])
def test_a_prior_per_row_of_4d_latents_is_read_in_place(kernel, monkeypatch, op):
    """A (B, 1, 1, 1) prior of (B, C, H, W) latents is a stride-(1, 0) view once flattened:
    the kernel reads each row's one float where it lies (a copy to (B, N) on every call
    was memory traffic alone), with the formula's KL and gradients."""
    seen, symbol = [], native.symbol

    def recording(name, *a, **k):
        fn = symbol(name, *a, **k)
        return (lambda *args: seen.append(args) or fn(*args)) if fn is not None else None

    monkeypatch.setattr(native, "symbol", recording)
    gen = torch.Generator().manual_seed(8)
    b, shape = 5, (3, 4, 7)   # N = 84: whole vectors and a tail
    mu, lv = (leaf(torch.randn(b, *shape, generator=gen)) for _ in range(2))
    pm, plv = (leaf(torch.randn(b, 1, 1, 1, generator=gen)) for _ in range(2))
    kl = getattr(fastvae, op)(mu, lv, pm, plv, backend="torch")
    kl = kl[1] if op == "sample_with_kl" else kl
    w = torch.randn(b, generator=gen)
    got = torch.autograd.grad(kl, (mu, lv, pm, plv), w)
    args = seen[0]   # fastvae_gauss_kl_rows(rows, n, mu, smu, lv, slv, pm, spm, plv, splv,
    assert args[6:12] == (pm.data_ptr(), 1, plv.data_ptr(), 1, 0, 0)   # cpm, cplv, ...)
    want = F.kl_normal_dim(mu, lv, pm, plv).reshape(b, -1).sum(-1)
    assert_close("kl", kl, want, F32)
    for name, g, e in zip(("mu", "lv", "pm", "plv"), got,
                          grads(want, (mu, lv, pm, plv), w.double())):
        assert_close(f"dKL/d{name}", g, e, F32)


@pytest.mark.parametrize("use", ["both", "z", "kl"])
def test_backward_threads_and_formula(kernel, use):
    gen = torch.Generator().manual_seed(5)
    b, n = 33, 517
    lv, g_mu, g_lv, g_plv = (torch.randn(b, n, generator=gen) for _ in range(4))
    seed = seed_of(99)
    eps = stream(seed, b, n)
    dz = None if use == "kl" else torch.randn(b, n, generator=gen)
    gk = None if use == "z" else torch.randn(b, generator=gen)
    runs = []
    for threads in (1, 2):
        outs = [torch.empty(b, n) for _ in range(4)]
        assert gaussian_rows.kl_bwd_rows(dz, gk, lv, seed, g_mu, g_lv, g_plv, *outs,
                                         threads=threads)
        runs.append(outs)
    for a, c in zip(*runs):
        assert torch.equal(a, c)
    d_mu, d_lv, d_pm, d_plv = runs[0]
    dz64 = torch.zeros(b, n, dtype=torch.float64) if dz is None else dz.double()
    gk64 = torch.zeros(b, 1, dtype=torch.float64) if gk is None else gk.double()[:, None]
    assert_close("d_mu", d_mu, dz64 + gk64 * g_mu.double(), F32)
    assert_close("d_lv", d_lv, 0.5 * dz64 * torch.exp(0.5 * lv.double()) * eps.double()
                 + gk64 * g_lv.double(), F32)
    assert_close("d_pm", d_pm, -gk64 * g_mu.double(), F32)
    assert_close("d_plv", d_plv, gk64 * g_plv.double(), F32)


def test_extremes_stay_finite(kernel):
    """Log-variances of +-80 (and of 88 against 88): exp(lv - plv) and (d exp(-plv/2))^2,
    never a product of exponentials, so every output is finite and right."""
    lv = torch.tensor([[80.0, -80.0, 80.0, -80.0, 88.0, 0.0, 40.0, -40.0, 1.0]])
    plv = torch.tensor([[80.0, -80.0, 10.0, -10.0, 88.0, 80.0, -40.0, 40.0, -80.0]])
    pm = torch.zeros(1, 9)
    mu = pm + 2.0 * torch.exp(0.5 * plv)           # two prior standard deviations away
    kl, z, g_mu, g_pm, g_lv, g_plv = _forward(mu, lv, pm, plv, seed_of(5), threads=1)
    o = [t.double().requires_grad_() for t in (mu, lv, pm, plv)]
    terms = F.kl_normal_dim(*o)
    for t in (kl, g_mu, g_lv, g_plv):
        assert torch.isfinite(t).all()
    assert_close("kl", kl, terms.sum(-1), F32, rtol=1e-5)
    want = grads(terms.sum(), o)
    assert_close("dKL/dmu", g_mu, want[0], F32, rtol=1e-5)
    assert_close("dKL/dlv", g_lv, want[1], F32, rtol=1e-5)
    assert_close("dKL/dplv", g_plv, want[3], F32, rtol=1e-5)
    finite = lv < 88  # exp(44) * eps: z itself is finite everywhere here
    assert torch.isfinite(z[finite]).all()


def test_half_inputs_in_row_chunks(kernel, monkeypatch):
    """16-bit inputs go through the kernel one upcast row chunk at a time (chunks of a
    few rows here), a float32 posterior with a 16-bit prior with z from the same pass."""
    monkeypatch.setattr(rows, "CHUNK_ELEMS", 64)
    gen = torch.Generator().manual_seed(2)
    b, n = 9, 30
    mu, lv, pm, plv = (torch.randn(b, n, generator=gen) for _ in range(4))
    ref = _forward(mu, lv, pm, plv, seed_of(0), threads=1)
    for dt in (torch.float16, torch.bfloat16):
        h = [t.to(dt) for t in (mu, lv, pm, plv)]
        kl = torch.empty(b)
        outs = [torch.empty(b, n, dtype=dt) for _ in range(4)]
        assert gaussian_rows.kl_rows(*h, None, None, kl, *outs)
        want = _forward(*[t.float() for t in h], seed_of(0), threads=1)
        assert torch.equal(kl, want[0])
        for got, w in zip(outs, want[2:]):
            assert torch.equal(got, w.to(dt))
        # float32 posterior, 16-bit prior: z in the chunked pass, as reparameterize's
        z, kl = torch.empty(b, n), torch.empty(b)
        assert gaussian_rows.kl_rows(mu, lv, h[2], h[3], seed_of(7), z, kl, None, None, None,
                                     None)
        z2 = torch.empty(b, n)
        assert gaussian_rows.sample_rows(mu, lv, seed_of(7), 0, z2)
        assert torch.equal(z, z2)
    assert_close("kl f32", ref[0], F.kl_normal_dim(mu, lv, pm, plv).sum(-1), F32)


def test_float64_and_cuda_like_inputs_decline(kernel):
    """float64 keeps the aten path (its tests ask for float64 precision)."""
    x = torch.randn(3, 4, dtype=torch.float64)
    kl = torch.empty(3, dtype=torch.float64)
    assert not gaussian_rows.kl_rows(x, x, None, None, None, None, kl, None, None, None, None)
    assert not gaussian_rows.sample_rows(x, x, seed_of(1), 0, torch.empty_like(x))
    assert not gaussian_rows.kl_bwd_rows(x, None, x, seed_of(1), x, x, x, torch.empty_like(x),
                                         None, None, None)


@pytest.mark.parametrize("wanted", ["all", "prior mean only", "posterior only"])
def test_kl_normal_backward_in_one_pass(kernel, calls, wanted):
    """kl_normal's backward weighs the saved gradients in one kernel pass (dKL/dmu_p from
    dKL/dmu_q), with the same values as weighing each alone."""
    need = {"all": (1, 1, 1, 1), "prior mean only": (0, 0, 1, 0),
            "posterior only": (1, 1, 0, 0)}[wanted]
    ts = [torch.randn(5, 3, 4).requires_grad_(bool(n)) for n in need]
    w = torch.randn(5)
    got = torch.autograd.grad(fastvae.kl_normal(*ts, backend="torch"), [t for t in ts
                                                                        if t.requires_grad], w)
    assert calls[-1] == "fastvae_gauss_kl_bwd_rows"
    want = grads(F.kl_normal_dim(*ts).reshape(5, -1).sum(-1), [t for t in ts
                                                               if t.requires_grad], w.double())
    for g, e in zip(got, want):
        assert_close("grad", g, e, F32)


@pytest.mark.parametrize("b,n,threads", [(1024, 64, 1), (1024, 64, 2), (1001, 67, 1)])
@pytest.mark.parametrize("with_z", [False, True])
def test_large_calls_store_the_same_gradients(kernel, b, n, threads, with_z):
    """From 2^16 elements on, with rows on vector boundaries ((1024, 64)), the forward
    stores the gradients it saves past the caches (non-temporal stores); (1001, 67) keeps
    cached stores. Either way the gradients are those of small calls over the same rows
    (with z, the rows split where the eps stream's chunks end), on one thread or two (each
    fences its own streamed stores)."""
    gen = torch.Generator().manual_seed(4)
    mu, lv, pm, plv = (torch.randn(b, n, generator=gen) for _ in range(4))
    whole = _forward(mu, lv, pm, plv, seed_of(5) if with_z else None, threads=threads)
    for i in range(0, b, 100):
        part = _forward(mu[i:i + 100], lv[i:i + 100], pm[i:i + 100], plv[i:i + 100], None,
                        threads=1)
        for k in (2, 3, 4, 5):  # the four gradients
            assert torch.equal(whole[k][i:i + 100], part[k])
        if not with_z:  # with z a row split at a chunk's edge sums its KL in another order
            assert torch.equal(whole[0][i:i + 100], part[0])
    assert_close("kl", whole[0], F.kl_normal_dim(mu, lv, pm, plv).sum(-1), F32)


def _saved_and_outputs(monkeypatch):
    """Records, per backward of sample_with_kl on "torch", the addresses of the saved KL
    gradients it got and of the four gradients it returned."""
    from fastvae.backends import torch_backend
    seen = []
    real = torch_backend.sample_with_kl_bwd

    def spy(dz, g_kl, logvar, noise, g_mu, g_lv, g_plv, needs, *rest, **kw):
        out = real(dz, g_kl, logvar, noise, g_mu, g_lv, g_plv, needs, *rest, **kw)
        seen.append(([t.data_ptr() for t in (g_mu, g_lv, g_plv)],
                     [t.data_ptr() for t in out]))
        return out

    monkeypatch.setattr(torch_backend, "sample_with_kl_bwd", spy)
    return seen


def test_backward_writes_over_the_saved_gradients(kernel, monkeypatch):
    """The public call drops the KL's gradient outputs: its backward writes d mu_q,
    d logvar_q and d logvar_p over them (d mu_p gets a buffer of its own)."""
    seen = _saved_and_outputs(monkeypatch)
    mu, lv, pm, plv = (leaf(torch.randn(6, 16)) for _ in range(4))
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend="torch")
    torch.autograd.backward([z, kl], [torch.randn(6, 16), torch.randn(6)])
    (saved, out), = seen
    assert out[0] == saved[0] and out[1] == saved[1] and out[3] == saved[2]
    assert out[2] not in saved


def test_a_direct_op_call_keeps_its_gradient_outputs(kernel, monkeypatch):
    """torch.ops.fastvae.sample_with_kl returns the KL's gradients to its caller: backward
    must leave them as they were."""
    from fastvae.backends import torch_backend
    seen = _saved_and_outputs(monkeypatch)
    mu, lv, pm, plv = (leaf(torch.randn(6, 16)) for _ in range(4))
    noise = torch_backend.reparameterize_noise(mu, 0, None)
    out = torch.ops.fastvae.sample_with_kl(mu, lv, pm, plv, noise, [True] * 4, "torch")
    kept = [t.detach().clone() for t in out[2:]]
    torch.autograd.backward([out[0], out[1]], [torch.randn(6, 16), torch.randn(6)])
    for a, b in zip(out[2:], kept):
        assert torch.equal(a, b)
    (saved, got), = seen
    assert not set(got) & set(saved)

"""What is specific to the "torch" backend's implementation (fastvae/backends/torch_backend/:
row chunks in its rows.py, and the optional compiled kernel, native.py and
bernoulli_rows.c): row chunking, the compiled/aten switch and its fallback, the kernel's
SIMD tails and strides, and the memory it saves for backward. The kernel's accuracy
sweep, threading and cache durability are in test_native_kernel_accuracy.py, _threads.py
and _cache.py. The op-level contract (all options, dtypes, reductions) is tested for
every backend in test_elbo.py and friends."""
from __future__ import annotations

import shutil

import pytest
import torch

import fastvae
from fastvae import reference
from fastvae.backends import torch_backend
from fastvae.backends.torch_backend import native as _native
from fastvae.backends.torch_backend import rows

F64 = torch.float64


@pytest.fixture(params=["native", "aten"])
def path(request, monkeypatch):
    """Run a test with the compiled kernel, then with the aten fallback."""
    if request.param == "aten":
        monkeypatch.setenv("FASTVAE_NATIVE", "0")
    _native.reset()
    if request.param == "native" and _native.load() is None:
        pytest.skip(f"compiled kernel unavailable here: {_native.status()}")
    yield request.param
    monkeypatch.undo()
    _native.reset()


def _inputs(b, d, l, dtype, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, d, generator=g, dtype=F64)
    recon = torch.randn(b, d, generator=g, dtype=F64) * spread
    mu = torch.randn(b, l, generator=g, dtype=F64)
    lv = torch.randn(b, l, generator=g, dtype=F64)
    z = mu + torch.exp(0.5 * lv) * torch.randn(b, l, generator=g, dtype=F64)
    return [t.to(dtype) for t in (x, recon, mu, lv, z)]


def _value_and_grads(backend, x, recon, mu, lv, z, **opts):
    ins = [t.detach().clone().requires_grad_() for t in (x, recon, mu, lv)]
    zz = z.detach().clone().requires_grad_() if opts.get("kl") == "mc" else None
    obs = opts.pop("obs_logvar", 0.0)
    obs = obs.detach().clone().requires_grad_() if isinstance(obs, torch.Tensor) else obs
    v = fastvae.elbo(*ins, z=zz, obs_logvar=obs, backend=backend, **opts)
    w = torch.linspace(0.5, 1.5, v.numel(), dtype=v.dtype).reshape(v.shape)
    leaves = ins + [t for t in (zz, obs) if isinstance(t, torch.Tensor)]
    return v, torch.autograd.grad((v * w).sum(), leaves)


def _assert_matches_reference(tol, *args, **opts):
    v, g = _value_and_grads("torch", *args, **dict(opts))
    v_ref, g_ref = _value_and_grads("reference", *args, **dict(opts))
    torch.testing.assert_close(v, v_ref, **tol)
    for a, b in zip(g, g_ref):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)


# -- row chunks: B not a multiple of the chunk, chunks of one row -------------------------

@pytest.mark.parametrize("chunk_elems", [1, 3 * 13 + 5, 1 << 16])
@pytest.mark.parametrize("likelihood,obs_kind", [("bernoulli", None), ("continuous_bernoulli", None),
                                                 ("gaussian", "D"), ("gaussian", "BD")])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_chunk_boundaries_match_reference(path, monkeypatch, chunk_elems, likelihood, obs_kind,
                                          reduction):
    monkeypatch.setattr(rows, "CHUNK_ELEMS", chunk_elems)
    b, d, l = 11, 13, 3  # 13 // (3*13+5) -> 3 rows a chunk: chunks of 3, 3, 3, 2
    x, recon, mu, lv, z = _inputs(b, d, l, F64)
    obs = 0.0
    if obs_kind == "D":
        obs = torch.randn(d, dtype=F64) * 0.3
    elif obs_kind == "BD":
        obs = torch.randn(b, d, dtype=F64) * 0.3
    _assert_matches_reference(dict(rtol=1e-10, atol=1e-10), x, recon, mu, lv, z,
                              likelihood=likelihood, reduction=reduction, obs_logvar=obs,
                              kl="mc", beta=0.7)
    # fp32 and half inputs take the compiled kernel (fp32 math) where it is loaded
    for dtype, tol in ((torch.float32, dict(rtol=1e-5, atol=1e-5)),
                       (torch.bfloat16, dict(rtol=2e-2, atol=2e-2))):
        x, recon, mu, lv, z = _inputs(b, d, l, dtype)
        o = obs.to(dtype) if isinstance(obs, torch.Tensor) else obs
        _assert_matches_reference(tol, x, recon, mu, lv, z, likelihood=likelihood,
                                  reduction=reduction, obs_logvar=o)


def test_gradcheck_through_small_chunks(path, monkeypatch):
    monkeypatch.setattr(rows, "CHUNK_ELEMS", 10)
    x, recon, mu, lv, _ = _inputs(5, 7, 2, F64)
    x.requires_grad_()
    for t in (recon, mu, lv):
        t.requires_grad_()
    for likelihood in ("bernoulli", "continuous_bernoulli", "gaussian"):
        assert torch.autograd.gradcheck(
            lambda *a: fastvae.elbo(*a, likelihood=likelihood, reduction="sum", backend="torch"),
            (x, recon, mu, lv))


# -- the compiled kernel itself ----------------------------------------------------------

def _kernel_or_skip():
    _native.reset()
    if _native.load() is None:
        pytest.skip(f"compiled kernel unavailable here: {_native.status()}")


def _formula(x, l):
    x, l = x.double(), l.double()
    value = (x * l - torch.nn.functional.softplus(l, threshold=1000)).sum(-1)
    return value, x - torch.sigmoid(l)


@pytest.mark.parametrize("d", [1, 7, 8, 9, 17, 784, 1003])
def test_kernel_tails_and_extreme_logits(d):
    """Every D modulo the 8-wide SIMD; logits at 0, tiny, the fp32 exp limits and beyond."""
    _kernel_or_skip()
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-8, 0.5, -0.5, 15.0, -15.0, 40.0, -40.0,
                            86.9, -86.9, 87.5, -87.5, 100.0, -100.0, 1e4, -1e4])
    b = 6
    l = torch.randn(b, d) * 5
    flat = l.view(-1)
    flat[: min(special.numel(), flat.numel())] = special[: flat.numel()]
    x = torch.rand(b, d)
    x[0, ::2] = 0.0
    x[1, ::3] = 1.0
    rows, g = torch.empty(b), torch.empty(b, d)
    _native.bernoulli_rows(x, l, g, 1.0, rows)
    want_v, want_g = _formula(x, l)
    scale = ((x.double() + 1) * l.double().abs()).sum(-1) + d  # size of the summed terms
    assert ((rows.double() - want_v).abs() <= 2e-6 * scale).all()
    assert ((g.double() - want_g).abs() <= 1.5e-7).all()


@pytest.mark.parametrize("xv,lv", [(0.0, 0.0), (1.0, 3.0)])
def test_long_rows_keep_float32_accuracy(path, xv, lv):
    """A row's sum blocked in float and added in double: at a million equal terms a float
    running total was 4e-4 off (286 nats), and two IWAE samples of equal log w weighed
    1 and 0 instead of 1/2 each."""
    d = 1_000_000
    x, l = torch.full((2, d), xv), torch.full((2, d), lv)
    mu = torch.zeros(2, 1)
    got = fastvae.elbo(x, l, mu, mu, reduction="none", backend="torch").double()
    want = fastvae.elbo(x.double(), l.double(), mu.double(), mu.double(), reduction="none",
                        backend="reference")
    assert ((got - want).abs() <= 2e-6 * want.abs()).all(), (got, want)
    # two samples of the same terms in another order: equal log w, so weights of 1/2 each
    # up to the float32 rounding of sums near -2e5 (an ulp, 1/64, moves a weight by 0.004:
    # 0.02 allows five; a float running total gave 0.43 and 0.57)
    g = torch.Generator().manual_seed(0)
    terms = -2.0 + torch.rand(d, generator=g)
    r = torch.stack([terms, terms[torch.randperm(d, generator=g)]])[:, None].requires_grad_()
    fastvae.iwae_bound(torch.zeros(1, d), r, mu[:1], mu[:1], torch.zeros(2, 1, 1),
                       reduction="sum", backend="torch").backward()
    weights = (r.grad[:, 0] / -torch.sigmoid(r.detach()[:, 0])).mean(-1)  # d/dl = -w sigmoid
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5]), atol=0.02, rtol=0)


def test_kernel_strided_rows_and_broadcast_x():
    """Row strides (a column slice, an expanded x with row stride 0) need no copy."""
    _kernel_or_skip()
    b, d = 9, 21
    big = torch.randn(b, d + 5) * 4
    l = big[:, 2:2 + d]                      # row stride d + 5
    x = torch.rand(1, d).expand(b, d)       # row stride 0
    assert _native.usable(x, l)
    rows, g = torch.empty(b), torch.empty(b, d)
    _native.bernoulli_rows(x, l, g, -2.0, rows)
    want_v, want_g = _formula(x, l)
    torch.testing.assert_close(rows.double(), want_v, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(g.double(), -2.0 * want_g, rtol=0, atol=4e-7)


def test_the_elbo_hands_broadcast_and_sliced_rows_to_the_kernel_uncopied(monkeypatch):
    """elbo's chunks reach the kernel as the user's rows: an expanded x (one image for every
    sample) and a column slice of the logits are read in place, not copied to (B, D)."""
    _kernel_or_skip()
    seen = []
    real = _native.bernoulli_rows
    monkeypatch.setattr(_native, "bernoulli_rows", lambda x, l, *a, **k: (
        seen.append((x.stride(0), l.stride(0), x.data_ptr(), l.data_ptr())), real(x, l, *a, **k)))
    b, d = 6, 40
    x = torch.rand(1, d).round().expand(b, d)
    big = torch.randn(b, d + 7)
    l = big[:, 3:3 + d]
    mu = torch.zeros(b, 2)
    got = fastvae.elbo(x, l, mu, mu, reduction="none", backend="torch")
    assert seen == [(0, d + 7, x.data_ptr(), l.data_ptr())]
    want = fastvae.elbo(x.contiguous(), l.contiguous(), mu, mu, reduction="none",
                        backend="torch")
    assert torch.equal(got, want)


def test_kernel_result_independent_of_thread_count():
    """A row's sum is one thread's fixed-order loop: bitwise the same for 1 or 2 threads."""
    _kernel_or_skip()
    b, d = 300, 333
    x, l = torch.rand(b, d), torch.randn(b, d) * 3
    out = []
    for n in (1, 2, 3):
        rows, g = torch.empty(b), torch.empty(b, d)
        _native.bernoulli_rows(x, l, g, 1.0, rows, threads=n)
        out.append((rows, g))
    for rows, g in out[1:]:
        assert torch.equal(rows, out[0][0]) and torch.equal(g, out[0][1])


# -- the fallback is clean ---------------------------------------------------------------

def _elbo_matches_reference():
    x, recon, mu, lv, z = _inputs(37, 50, 4, torch.float32)
    _assert_matches_reference(dict(rtol=1e-5, atol=1e-5), x, recon, mu, lv, z,
                              likelihood="bernoulli", reduction="sum")


def test_fallback_without_compiler(monkeypatch):
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    monkeypatch.setattr(_native, "_warned", True)  # the warning has its own tests
    _native.reset()
    try:
        assert _native.load() is None
        assert "compiler" in _native.status()
        _elbo_matches_reference()
    finally:
        monkeypatch.undo()
        _native.reset()


def test_fallback_when_the_build_fails(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_OPENMP_FLAGS", ["--no-such-flag-for-fastvae"])
    monkeypatch.setattr(_native, "_PLAIN_FLAG_SETS", (["--no-such-flag-for-fastvae"],))
    monkeypatch.setattr(_native, "_warned", True)
    _native.reset()
    try:
        assert _native.load() is None
        assert _native.status().startswith("build failed")
        _elbo_matches_reference()
    finally:
        monkeypatch.undo()
        _native.reset()


@pytest.mark.parametrize("var, value, said", [
    # a typo was read as on, silently
    ("FASTVAE_NATIVE", "banana", "FASTVAE_NATIVE='banana' is neither"),
    # a compiler not on PATH was replaced by cc, silently
    ("CC", "no-such-cc-17", "CC='no-such-cc-17' is not an executable"),
    ("CC", "no-such-launcher-17 gcc", "CC='no-such-launcher-17 gcc': 'no-such-launcher-17' is "
                                      "not an executable"),
    ("CC", "gcc 'unclosed", "CC=\"gcc 'unclosed\" cannot be split into words"),
])
def test_a_setting_that_cannot_be_honoured_is_said_not_replaced(monkeypatch, tmp_path, var,
                                                                 value, said):
    """The aten path, with the one warning that names the variable, and the status."""
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(var, value)
    monkeypatch.setattr(_native, "_warned", False)
    _native.reset()
    try:
        with pytest.warns(RuntimeWarning, match=said):
            assert _native.load() is None
        assert value in _native.status()
        _elbo_matches_reference()
    finally:
        monkeypatch.undo()
        _native.reset()


def test_a_compiler_behind_a_launcher_builds(monkeypatch, tmp_path):
    """CC='ccache gcc', as make takes it: the first word on PATH, the rest its arguments
    (it was refused, and the slower aten path ran). ``env`` stands in for the launcher."""
    cc = _native._compiler()
    if cc is None or shutil.which("env") is None:
        pytest.skip("no C compiler (or no env) here")
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", f"env {cc}")
    _native.reset()
    try:
        assert _native._compiler() == f"{shutil.which('env')} {cc}"
        assert _native.load() is not None, _native.status()
        _elbo_matches_reference()
    finally:
        monkeypatch.undo()
        _native.reset()


def test_an_empty_switch_is_the_default(monkeypatch):
    """FASTVAE_NATIVE= (the shell's way to clear it for one command) is unset: the C kernels,
    as with FASTVAE_BACKEND= ; it turned them off."""
    monkeypatch.delenv("FASTVAE_NATIVE", raising=False)
    _native.reset()
    try:
        default = _native.load() is not None
        monkeypatch.setenv("FASTVAE_NATIVE", " ")
        _native.reset()
        assert (_native.load() is not None) == default, _native.status()
        assert "FASTVAE_NATIVE" not in _native.status()
    finally:
        monkeypatch.undo()
        _native.reset()


def test_fallback_when_disabled(monkeypatch):
    monkeypatch.setenv("FASTVAE_NATIVE", "0")
    _native.reset()
    try:
        assert _native.load() is None and "FASTVAE_NATIVE" in _native.status()
        _elbo_matches_reference()
    finally:
        monkeypatch.undo()
        _native.reset()


def test_fresh_build_into_cache_dir(monkeypatch, tmp_path):
    if _native._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(tmp_path))
    _native.reset()
    try:
        if _native.load() is None:
            pytest.skip(f"compiled kernel unavailable here: {_native.status()}")
        # the library and its hash, no leftovers
        assert sorted(p.name.split(".", 1)[1] for p in tmp_path.iterdir()) == ["so", "so.sha256"]
        _elbo_matches_reference()
    finally:
        monkeypatch.undo()
        _native.reset()


# -- memory: only the gradients are saved ------------------------------------------------

def test_saves_the_gradients_and_the_inputs(path):
    """What autograd keeps: d/drecon, d/dmu, d/dlogvar, and the caller's inputs themselves
    (for higher orders), no intermediate and no copy."""
    b, d, l = 64, 100, 8
    x, recon, mu, lv, _ = _inputs(b, d, l, torch.float32)
    for t in (recon, mu, lv):
        t.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        v = fastvae.elbo(x, recon, mu, lv, reduction="sum", backend="torch")
    inputs = [t for t in saved if any(t.data_ptr() == i.data_ptr() for i in (x, recon, mu, lv))]
    assert len(inputs) == 4 and len(saved) == 7
    assert sum(t.numel() * t.element_size() for t in saved if all(t is not i for i in inputs)) \
        == 4 * (b * d + 2 * b * l)
    v.backward()
    torch.testing.assert_close(recon.grad, x - torch.sigmoid(recon.detach()), rtol=1e-6, atol=1e-6)


def test_deterministic(path):
    x, recon, mu, lv, z = _inputs(257, 300, 5, torch.float32, seed=3)
    first = _value_and_grads("torch", x, recon, mu, lv, z, reduction="mean")
    again = _value_and_grads("torch", x, recon, mu, lv, z, reduction="mean")
    assert torch.equal(first[0], again[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], again[1]))


def test_reference_module_untouched():
    """The oracle is never routed through the fused path (sanity for the comparisons above)."""
    assert fastvae.elbo.__module__ == "fastvae.functional" and reference.elbo is not torch_backend.elbo_fwd

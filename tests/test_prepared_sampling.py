"""Prepared calls of ``sample_with_kl`` (``fastvae.ops.Route``): a signature seen again (a
hierarchical VAE's group, every step) gets a route, and its later calls skip the checks,
the dispatch and the op's generic layers. A routed call must give exactly what an
unprepared call with the same seed gives, z, the KL and every gradient, on every
backend, and leave every other case where it went before (tests/test_prepared_calls.py
does the same for the ELBO).
"""
import pytest
import torch

import fastvae
from fastvae import backends
from fastvae import gaussians as G
from fastvae import validation as V

from _backends import case_dtype
from _routes import backend_switches, unprepared


@pytest.fixture(autouse=True)
def fresh_routes(monkeypatch):
    monkeypatch.setattr(G, "_ROUTES", V.Checked())


def _device(backend):
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _inputs(backend, shape=(5, 7), prior="full", dtype=torch.float32):
    """(mu, logvar, mu_p, logvar_p), fresh values, one layout per arguments; the leaves."""
    dtype, dev = case_dtype(backend, dtype), _device(backend)

    def leaf(s):
        return torch.randn(s, device=dev).to(dtype).requires_grad_()
    mu, lv = leaf(shape), leaf(shape)
    pm = plv = None
    if prior == "full":
        pm, plv = leaf(shape), leaf(shape)
    elif prior == "shared":   # one row for every sample, and a per-sample mean
        pm, plv = leaf(shape), leaf(shape[1:])
    elif prior == "log-variance":
        plv = leaf(shape)
    tensors = (mu, lv, pm, plv)
    return tensors, [t for t in tensors if t is not None]


def _routed(kl) -> bool:
    return type(kl.grad_fn).__name__.endswith("_routeBackward")


def _call(backend, tensors, seed=11, **kw):
    torch.manual_seed(seed)
    return fastvae.sample_with_kl(*tensors, backend=backend, **kw)


def _step(backend, tensors, leaves, use=("z", "kl"), seed=11, **backward):
    """(z, kl, the leaves' gradients, the kl of the graph) of one call and its backward
    with fixed cotangents for the values in ``use``."""
    z, kl = _call(backend, tensors, seed)
    gen = torch.Generator(device="cpu").manual_seed(5)
    dz = torch.randn(z.shape, generator=gen, device="cpu").to(z.device, z.dtype)
    dkl = torch.randn(kl.shape, generator=gen, device="cpu").to(kl.device, kl.dtype)
    outs = [(z, dz)] * ("z" in use) + [(kl, dkl)] * ("kl" in use)
    grads = torch.autograd.grad([o for o, _ in outs], leaves, [c for _, c in outs],
                                allow_unused=True, **backward)
    return z.detach(), kl.detach(), grads, kl


def _unprepared(fn):
    return unprepared(G, "_ROUTES", fn)


def _same(got, want):
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for g, h in zip(got[2], want[2]):
        assert (g is None) == (h is None)
        if g is not None:
            assert g.dtype == h.dtype and torch.equal(g, h)


def _warm(backend, **kw):
    """Inputs of a signature that has a route (two calls made before), and their leaves."""
    for _ in range(2):
        _step(backend, *_inputs(backend, **kw))
    return _inputs(backend, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("prior", ["standard", "full", "shared", "log-variance"])
@pytest.mark.parametrize("shape", [(5, 7), (3, 2, 2, 3)])
def test_a_routed_call_gives_an_unprepared_calls_bits(backend, dtype, prior, shape):
    tensors, leaves = _warm(backend, shape=shape, prior=prior, dtype=dtype)
    got = _step(backend, tensors, leaves)
    assert _routed(got[3]) == (backend != "reference")
    assert backends.last_used() == backend
    _same(got, _unprepared(lambda: _step(backend, tensors, leaves)))


def test_a_signature_seen_once_builds_no_route(backend):
    tensors, leaves = _inputs(backend)
    assert not _routed(_step(backend, tensors, leaves)[3])
    assert not _routed(_step(backend, tensors, leaves)[3])
    assert _routed(_step(backend, tensors, leaves)[3]) == (backend != "reference")


@pytest.mark.parametrize("use", [("z",), ("kl",)])
def test_one_value_unused(backend, use):
    """z or the KL left out of the backward: its grad_output is None, as without routes."""
    tensors, leaves = _warm(backend)
    got = _step(backend, tensors, leaves, use)
    assert _routed(got[3]) == (backend != "reference")
    _same(got, _unprepared(lambda: _step(backend, tensors, leaves, use)))


@pytest.mark.parametrize("how", ["create_graph", "retain_graph", "jacobian"])
def test_every_other_backward_goes_where_it_went(backend, how):
    """A graph of the backward, a retained graph (two backwards: the saved gradients are
    not written over by the first), a vmap over the backward."""
    tensors, leaves = _warm(backend)
    routed = backend != "reference"
    if how == "jacobian":
        def jac():
            torch.manual_seed(3)
            return torch.autograd.functional.jacobian(
                lambda *t: fastvae.sample_with_kl(*t, backend=backend)[1], tensors,
                vectorize=True)
        got = jac()
        assert _routed(_call(backend, tensors)[1]) == routed
        for g, h in zip(got, _unprepared(jac)):
            assert torch.equal(g, h)
        return
    if how == "create_graph":
        def grads():
            z, kl = _call(backend, tensors)
            g = torch.autograd.grad([z.sum(), kl.sum()], leaves, create_graph=True)
            return kl, torch.autograd.grad(sum((t * t).sum() for t in g), leaves)
        kl, got = grads()
        assert _routed(kl) == routed
        for g, h in zip(got, _unprepared(grads)[1]):
            assert torch.equal(g, h)
        return
    got = _step(backend, tensors, leaves, retain_graph=True)
    assert _routed(got[3]) == routed
    again = torch.autograd.grad(got[3].sum(), leaves, allow_unused=True)
    want = _unprepared(lambda: torch.autograd.grad(_call(backend, tensors)[1].sum(), leaves,
                                                   allow_unused=True))
    for g, h in zip(again, want):
        assert torch.equal(g, h)
    _same(got, _unprepared(lambda: _step(backend, tensors, leaves)))


def test_a_changed_signature_is_another_route(backend):
    """A prior that needs no gradient, no grad mode: each its own signature, and the route
    of one never runs a call of another."""
    if backend == "reference":
        pytest.skip("the reference has no fused op")
    (mu, lv, pm, plv), leaves = _warm(backend)
    fixed = plv.detach()
    for _ in range(3):
        got = _step(backend, (mu, lv, pm, fixed), [mu, lv, pm])
    assert _routed(got[3])
    _same(got, _unprepared(lambda: _step(backend, (mu, lv, pm, fixed), [mu, lv, pm])))
    with torch.no_grad():
        for _ in range(3):
            z, kl = _call(backend, (mu, lv, pm, plv))
            assert z.grad_fn is None and kl.grad_fn is None
    want = _unprepared(lambda: _call(backend, (mu, lv, pm, plv)))
    assert torch.equal(z, want[0].detach()) and torch.equal(kl, want[1].detach())


def test_a_passed_generator_draws_as_without_routes(backend):
    tensors, leaves = _warm(backend)
    dev = _device(backend)

    def draw():
        gen = torch.Generator(device=dev).manual_seed(21)
        return fastvae.sample_with_kl(*tensors, generator=gen, backend=backend)
    for _ in range(2):
        z, kl = draw()
    assert _routed(kl) == (backend != "reference")
    want = _unprepared(draw)
    assert torch.equal(z, want[0]) and torch.equal(kl, want[1])
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        fastvae.sample_with_kl(*tensors, generator=3, backend=backend)


def test_strided_inputs_take_a_route_of_their_own(backend):
    """A transposed posterior and a prior expanded along the batch: their strides are
    part of the signature, and the routed call gives an unprepared call's bits."""
    dev = _device(backend)
    dt = case_dtype(backend, torch.float32)

    def inputs():
        mu = torch.randn(7, 5, device=dev, dtype=dt).t().requires_grad_()
        lv = torch.randn(5, 7, device=dev, dtype=dt).requires_grad_()
        row = torch.randn(7, device=dev, dtype=dt).requires_grad_()
        return (mu, lv, row.expand(5, 7), None), [mu, lv, row]
    for _ in range(2):
        _step(backend, *inputs())
    tensors, leaves = inputs()
    got = _step(backend, tensors, leaves)
    assert _routed(got[3]) == (backend != "reference")
    _same(got, _unprepared(lambda: _step(backend, tensors, leaves)))


def test_inference_mode_and_torch_compile_on_a_routed_signature(backend):
    """Calls under inference_mode, and a torch.compile'd function, on a signature that has
    a route: the values an unprepared call gives."""
    tensors, leaves = _warm(backend)
    want = _unprepared(lambda: _call(backend, tensors))
    with torch.inference_mode():
        got = _call(backend, tensors)
    assert torch.equal(got[0], want[0].detach()) and torch.equal(got[1], want[1].detach())
    if backend == "triton" and not torch.cuda.is_available():
        return   # the interpreter's kernels are not traced by torch.compile here
    torch._dynamo.reset()
    compiled = torch.compile(lambda *t: fastvae.sample_with_kl(*t, backend=backend),
                             fullgraph=True, backend="aot_eager")
    torch.manual_seed(11)
    got = compiled(*tensors)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_torch_func_on_a_routed_signature_takes_the_reference(backend):
    (mu, lv, pm, plv), leaves = _warm(backend)

    def kl_sum(m):
        return fastvae.sample_with_kl(m, lv, pm, plv, backend=backend)[1].sum()
    got = torch.func.grad(kl_sum)(mu)
    assert backends.last_used() == "reference"
    want = torch.autograd.grad(fastvae.kl_normal(mu, lv, pm, plv, backend="reference").sum(),
                               mu)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_validation_on_checks_a_routed_signature(backend):
    (mu, lv, pm, plv), leaves = _warm(backend)
    bad = lv.detach().clone()
    bad[0, 0] = float("nan")
    bad.requires_grad_()
    for _ in range(3):
        _call(backend, (mu, bad, pm, plv))
    with pytest.raises(ValueError, match="logvar_q has 1 non-finite"):
        _call(backend, (mu, bad, pm, plv), validate=True)
    with pytest.raises(TypeError, match="validate must be None or a bool"):
        _call(backend, (mu, bad, pm, plv), validate=1)


def test_the_backend_is_chosen_every_call(monkeypatch):
    """FASTVAE_BACKEND is read per call: a route of "torch" never runs a call that now
    asks for the reference."""
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    tensors, leaves = _warm(None)
    assert _routed(_step(None, tensors, leaves)[3]) and backends.last_used() == "torch"
    monkeypatch.setenv("FASTVAE_BACKEND", "reference")
    assert not _routed(_step(None, tensors, leaves)[3])
    assert backends.last_used() == "reference"


def test_a_route_for_another_backend_is_replaced(kernel_device, monkeypatch):
    """A changed FASTVAE_BACKEND between the fused backends (``backend_switches``)."""
    tensors, leaves = _inputs("triton")   # on the device the kernels run on

    def run():
        got = _step(None, tensors, leaves)
        return got, _routed(got[3])
    first, third = backend_switches(monkeypatch, "sample_with_kl_route", run)
    _same(third, first)


def test_a_replaced_backend_function_sees_every_call(backend, monkeypatch):
    """A test or a profiler that wraps the backend's functions after a route was built
    still sees every call: the noise, the forward (the route steps aside) and the
    backward."""
    if backend == "reference":
        pytest.skip("the reference has no fused op")
    compute = backends.get(backend)
    tensors, leaves = _warm(backend)
    seen = []
    names = ("reparameterize_noise", "sample_with_kl_fwd", "sample_with_kl_bwd")
    for name in names:
        real = getattr(compute, name)
        monkeypatch.setattr(compute, name,
                            lambda *a, _n=name, _r=real, **k: seen.append(_n) or _r(*a, **k))
    for _ in range(3):
        _step(backend, tensors, leaves)
    assert seen == list(names) * 3


def test_a_backend_function_replaced_before_the_route_is_built_stays(backend, monkeypatch):
    """A route built while the backend's forward is wrapped prepares the wrapper (no
    prepared copy bypasses it), and every call is still seen."""
    if backend == "reference":
        pytest.skip("the reference has no fused op")
    compute = backends.get(backend)
    seen = []
    real = compute.sample_with_kl_fwd
    monkeypatch.setattr(compute, "sample_with_kl_fwd",
                        lambda *a, **k: seen.append(1) or real(*a, **k))
    tensors, leaves = _warm(backend)
    got = _step(backend, tensors, leaves)
    assert _routed(got[3]) and len(seen) == 3


def test_an_input_changed_in_place_is_still_caught(backend):
    """A routed call saves its inputs as the op's own does: autograd checks their versions."""
    if backend == "reference":
        pytest.skip("the reference has no fused op")
    (mu, lv, pm, plv), leaves = _warm(backend)
    z, kl = _call(backend, (mu, lv, pm, plv))
    assert _routed(kl)
    with torch.no_grad():
        pm.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(kl.sum(), (mu,), create_graph=True)


def test_meta_tensors_always_reach_the_ops_fake_kernel(monkeypatch):
    import importlib
    op_module = importlib.import_module("fastvae.ops.sample_with_kl")
    real, calls = op_module._sample_with_kl.op, []
    monkeypatch.setattr(op_module._sample_with_kl, "op",
                        lambda *a: calls.append(1) or real(*a))
    mu, lv = (torch.empty(6, 3, device="meta", requires_grad=True) for _ in range(2))
    for _ in range(3):
        z, kl = fastvae.sample_with_kl(mu, lv, backend="torch")
        assert kl.device.type == "meta" and not _routed(kl)
    assert calls == [1, 1, 1]

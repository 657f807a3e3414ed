"""Prepared calls (``fastvae.ops.Route``): an ``elbo`` / ``ELBOLoss`` signature seen again
gets a route, and its later calls skip the dispatch layers and the plan lookups. A routed
call must give exactly what an unprepared call on the same values gives, values and every
gradient, on every backend, and leave every other case (a changed signature, higher
orders, a retained graph, a per-row or non-unit grad_output, a vmap over backward,
torch.func, meta tensors, validation, a changed backend choice, a replaced backend
function, another tile mode or SM count) where it went before.
"""
import pytest
import torch

import fastvae
from fastvae import backends
from fastvae import functional as F
from fastvae import validation as V

from _backends import case_dtype
from _routes import backend_switches, unprepared


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(F, "_ELBO_CHECKED", V.Checked())


def _device(backend):
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _leaves(backend, b=5, d=7, l=3, dtype=torch.float32, x_grad=False, shape=None):
    """(x, recon, mu, logvar, leaves); fresh values each call, one layout per arguments."""
    dtype, dev = case_dtype(backend, dtype), _device(backend)
    x = torch.rand(b, d, dtype=dtype, device=dev)
    recon = torch.randn(b, d, dtype=dtype, device=dev)
    if shape is not None:
        x, recon = x.reshape(shape), recon.reshape(shape)
    mu = torch.randn(b, l, dtype=dtype, device=dev)
    lv = torch.randn(b, l, dtype=dtype, device=dev)
    leaves = [recon, mu, lv] + ([x] if x_grad else [])
    for t in leaves:
        t.requires_grad_()
    return x, recon, mu, lv, leaves


def _routed(value) -> bool:
    return type(value.grad_fn).__name__.endswith("_routeBackward")


def _step(call, leaves, cotangent=None, **backward):
    """(value, the leaves' gradients, the graph's value) of one call and its backward."""
    value = call()
    for t in leaves:
        t.grad = None
    if cotangent is None:
        value.backward(**backward)
    else:
        value.backward(cotangent, **backward)
    return value.detach().clone(), [t.grad.clone() for t in leaves], value


def _unprepared(fn):
    return unprepared(F, "_ELBO_CHECKED", fn)


def _same(got, want):
    assert torch.equal(got[0], want[0])
    for g, h in zip(got[1], want[1]):
        assert g.dtype == h.dtype and torch.equal(g, h)


CASES = [
    dict(reduction="sum"),
    dict(reduction="mean", beta=0.5),
    dict(reduction="mean", free_bits=0.3),
    dict(reduction="sum", kl="mc"),
    dict(reduction="sum", likelihood="gaussian", obs_logvar=0.25),
    dict(reduction="sum", likelihood="continuous_bernoulli"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_a_routed_call_gives_an_unprepared_calls_bits(backend, case, dtype):
    loss = fastvae.ELBOLoss(backend=backend, **{k: v for k, v in case.items()
                                                if k != "obs_logvar"})

    def inputs():
        x, recon, mu, lv, leaves = _leaves(backend, dtype=dtype, x_grad=dtype == torch.float32)
        z = None
        if case.get("kl") == "mc":
            z = (mu + 0.1).detach().requires_grad_()
            leaves.append(z)
        return (lambda: loss(x, recon, mu, lv, z=z, obs_logvar=case.get("obs_logvar", 0.0)),
                leaves)
    for _ in range(2):   # the signature seen twice: the next call takes a route
        _step(*inputs())
    call, leaves = inputs()   # new values, the same layout
    got = _step(call, leaves)
    assert _routed(got[2]) == (backend != "reference")
    assert backends.last_used() == backend
    _same(got, _unprepared(lambda: _step(call, leaves)))


def test_a_signature_seen_once_builds_no_route(backend):
    x, recon, mu, lv, leaves = _leaves(backend)
    call = _call(backend, x, recon, mu, lv)
    assert not _routed(_step(call, leaves)[2])
    assert not _routed(_step(call, leaves)[2])
    assert _routed(_step(call, leaves)[2]) == (backend != "reference")


def test_flattened_data_and_the_functional_form_take_it_too(backend):
    def call_of(x, recon, mu, lv):
        return lambda: fastvae.elbo(x, recon, mu, lv, reduction="sum", backend=backend)
    for _ in range(2):
        x, recon, mu, lv, leaves = _leaves(backend, b=4, d=12, shape=(4, 3, 2, 2))
        _step(call_of(x, recon, mu, lv), leaves)
    x, recon, mu, lv, leaves = _leaves(backend, b=4, d=12, shape=(4, 3, 2, 2))
    got = _step(call_of(x, recon, mu, lv), leaves)
    assert _routed(got[2]) == (backend != "reference")
    assert got[1][0].shape == recon.shape
    _same(got, _unprepared(lambda: _step(call_of(x, recon, mu, lv), leaves)))


def _call(backend, x, recon, mu, lv, reduction="sum", **kw):
    return lambda: fastvae.elbo(x, recon, mu, lv, reduction=reduction, backend=backend, **kw)


def _warm(backend, **kw):
    """Inputs whose signature has a route (two calls made), and their call."""
    x, recon, mu, lv, leaves = _leaves(backend, d=kw.pop("d", 7))
    call = _call(backend, x, recon, mu, lv, **kw)
    for _ in range(2):
        value = call()
        (value if value.dim() == 0 else value.sum()).backward()
    return x, recon, mu, lv, leaves, call


def test_a_changed_signature_is_another_route(backend):
    """requires_grad, the grad mode, strides: each its own signature, and the route of one
    never runs a call of another."""
    if backend == "reference":
        pytest.skip("the reference has no fused op")
    x, recon, mu, lv, leaves, call = _warm(backend)
    assert _routed(call())
    fixed_mu = mu.detach()
    for _ in range(3):
        value = fastvae.elbo(x, recon, fixed_mu, lv, reduction="sum", backend=backend)
        recon.grad = lv.grad = None
        value.backward()
        assert recon.grad is not None and lv.grad is not None and fixed_mu.grad is None
    assert _routed(value)
    want = fastvae.elbo(x, recon, mu, lv, reduction="sum", backend="reference")
    with torch.no_grad():
        for _ in range(3):
            value = fastvae.elbo(x, recon, mu, lv, reduction="sum", backend=backend)
            assert value.grad_fn is None
            torch.testing.assert_close(value, want.detach(), rtol=1e-5, atol=1e-4)
    strided = torch.randn(recon.shape[1], recon.shape[0], device=recon.device).t()
    strided.requires_grad_()
    for _ in range(3):
        value = fastvae.elbo(x, strided, mu, lv, reduction="sum", backend=backend)
        strided.grad = None
        value.backward()
        want_s = fastvae.elbo(x, strided, mu, lv, reduction="sum", backend="reference")
        (got,) = torch.autograd.grad(want_s, strided)
        torch.testing.assert_close(strided.grad, got, rtol=1e-5, atol=1e-5)


def test_the_sign_of_a_zero_is_part_of_the_signature(backend):
    """beta = -0.0 after beta = 0.0: -0.0 == 0.0, but the KL's gradients carry its sign."""
    x, recon, mu, lv, leaves = _leaves(backend)
    for _ in range(3):
        _step(_call(backend, x, recon, mu, lv, beta=0.0), leaves)
    got = _step(_call(backend, x, recon, mu, lv, beta=-0.0), leaves)
    want = _unprepared(lambda: _step(_call(backend, x, recon, mu, lv, beta=-0.0), leaves))
    for g, h in zip(got[1], want[1]):
        assert torch.equal(torch.signbit(g), torch.signbit(h))


@pytest.mark.parametrize("how", ["create_graph", "retain_graph", "scaled", "rows",
                                 "jacobian"])
def test_every_other_backward_goes_where_it_went(backend, how):
    """A graph of the backward, a retained graph (two backwards, no in-place scaling of
    what the second reads), a grad_output that is not 1, a per-row one, a vmap over the
    backward: a routed call's results equal an unprepared call's."""
    reduction = "none" if how in ("rows", "jacobian") else "sum"
    x, recon, mu, lv, leaves, call = _warm(backend, reduction=reduction)
    routed = backend != "reference"
    if how == "jacobian":
        def jac():
            return torch.autograd.functional.jacobian(
                lambda r, m, v: fastvae.elbo(x, r, m, v, reduction="none", backend=backend),
                (recon, mu, lv), vectorize=True)
        assert _routed(call()) == routed   # jacobian's inputs have these layouts too
        got = jac()
        want = _unprepared(jac)
        for g, h in zip(got, want):
            assert torch.equal(g, h)
        return
    if how == "create_graph":
        def grads():
            value = call()
            g = torch.autograd.grad(value, (recon, mu, lv), create_graph=True)
            return value, torch.autograd.grad(sum((t * t).sum() for t in g), (recon, mu, lv))
        value, got = grads()
        assert _routed(value) == routed
        want = _unprepared(grads)[1]
        for g, h in zip(got, want):
            assert torch.equal(g, h)
        return
    cotangent = (torch.linspace(-1.0, 2.0, x.shape[0], device=x.device) if how == "rows"
                 else torch.tensor(3.0, device=x.device) if how == "scaled" else None)
    kw = {"retain_graph": True} if how == "retain_graph" else {}
    got = _step(call, leaves, cotangent, **kw)
    assert _routed(got[2]) == routed
    if how == "retain_graph":
        for t in leaves:
            t.grad = None
        got[2].backward()
        for t, h in zip(leaves, got[1]):
            assert torch.equal(t.grad, h)
    _same(got, _unprepared(lambda: _step(call, leaves, cotangent, **kw)))


def test_torch_func_on_a_routed_signature_takes_the_reference(backend):
    """The same signature inside torch.func.grad: the reference's autograd, as before."""
    x, recon, mu, lv, leaves, call = _warm(backend)
    assert _routed(call()) == (backend != "reference")

    def loss(r):
        return fastvae.elbo(x, r, mu, lv, reduction="sum", backend=backend)
    got = torch.func.grad(loss)(recon)
    want = torch.autograd.grad(fastvae.elbo(x, recon, mu, lv, reduction="sum",
                                            backend="reference"), recon)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert backends.last_used() == "reference"


def test_validation_on_checks_a_routed_signature(backend):
    x, recon, mu, lv, leaves = _leaves(backend)
    bad = recon.detach().clone()
    bad[0, 0] = float("nan")
    bad.requires_grad_()
    for _ in range(3):
        fastvae.elbo(x, bad, mu, lv, reduction="sum", backend=backend)
    with pytest.raises(ValueError, match="recon has 1 non-finite"):
        fastvae.elbo(x, bad, mu, lv, reduction="sum", backend=backend, validate=True)
    fastvae.set_validation(True)
    try:
        with pytest.raises(ValueError, match="recon has 1 non-finite"):
            fastvae.elbo(x, bad, mu, lv, reduction="sum", backend=backend)
    finally:
        fastvae.set_validation(False)
    with pytest.raises(TypeError, match="validate must be None or a bool"):
        fastvae.elbo(x, bad, mu, lv, reduction="sum", backend=backend, validate=1)


def test_meta_tensors_always_reach_the_ops_fake_kernel(monkeypatch):
    import importlib
    op_module = importlib.import_module("fastvae.ops.elbo")
    real, calls = op_module._elbo.op, []
    monkeypatch.setattr(op_module._elbo, "op", lambda *a: calls.append(1) or real(*a))
    x = torch.empty(6, 10, device="meta")
    r, m, lv = (torch.empty(s, device="meta", requires_grad=True) for s in ((6, 10), (6, 3),
                                                                            (6, 3)))
    for _ in range(3):
        value = fastvae.elbo(x, r, m, lv, backend="torch")
        assert value.device.type == "meta" and not _routed(value)
    assert calls == [1, 1, 1]


def test_the_backend_is_chosen_every_call(monkeypatch):
    """FASTVAE_BACKEND is read per call: a route of "torch" never runs a call that now
    asks for the reference."""
    x, recon, mu, lv, leaves = _leaves("torch")
    call = _call(None, x, recon, mu, lv)
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    _step(call, leaves)
    _step(call, leaves)
    assert _routed(_step(call, leaves)[2]) and backends.last_used() == "torch"
    monkeypatch.setenv("FASTVAE_BACKEND", "reference")
    assert not _routed(_step(call, leaves)[2]) and backends.last_used() == "reference"


def test_a_route_for_another_backend_is_replaced(kernel_device, monkeypatch):
    """A changed FASTVAE_BACKEND between the fused backends (``backend_switches``)."""
    x, recon, mu, lv, leaves = _leaves("triton")
    call = _call(None, x, recon, mu, lv)

    def run():
        got = _step(call, leaves)
        return got, _routed(got[2])
    first, third = backend_switches(monkeypatch, "elbo_route", run)
    _same(third, first)


def test_a_replaced_backend_function_sees_every_call(backend, monkeypatch):
    """A test or a profiler that wraps a backend's elbo_fwd or scale_saved_ after a route
    was built still sees every call (the route steps aside), and one wrapped before
    never gets a prepared copy that bypasses it."""
    if backend == "reference":
        pytest.skip("the reference has no fused op")
    compute = backends.get(backend)
    x, recon, mu, lv, leaves, call = _warm(backend)
    assert _routed(call())
    seen = []
    for name in ("elbo_fwd", "scale_saved_"):
        real = getattr(compute, name)
        monkeypatch.setattr(compute, name,
                            lambda *a, _n=name, _r=real, **k: seen.append(_n) or _r(*a, **k))
    for _ in range(3):
        _step(call, leaves)
    assert seen == ["elbo_fwd", "scale_saved_"] * 3


def test_an_input_changed_in_place_is_still_caught(backend):
    """A routed call saves its inputs as the op's own does: autograd checks their versions."""
    if backend == "reference":
        pytest.skip("the reference has no fused op")
    x, recon, mu, lv, leaves, call = _warm(backend)
    value = call()
    assert _routed(value)
    with torch.no_grad():
        mu.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(value, (recon,), create_graph=True)


def test_a_route_looks_its_plans_up_again_when_they_change(backend, monkeypatch):
    """The Triton route keeps its row and scale plans; an emptied plan cache, another
    tile mode or another SM count source makes it look them up again (and launch what
    the new plan says)."""
    if backend != "triton":
        pytest.skip("the Triton backend's plans")
    from fastvae.backends.triton_backend import _launch, configs
    from fastvae.backends.triton_backend import elbo as host
    from fastvae.backends.triton_backend import scale as scale_host
    x, recon, mu, lv, leaves, call = _warm(backend)
    first = _step(call, leaves)   # the route's first backward prepares its scaling
    looked_up = []
    for module in (host, scale_host):
        real = module._plan_of
        monkeypatch.setattr(module, "_plan_of", lambda *a, _real=real, _m=module.__name__: (
            looked_up.append(_m.rsplit(".", 1)[1]), _real(*a))[1])
    grids = []
    real_launch = _launch.launch
    monkeypatch.setattr(_launch, "launch", lambda kernel, grid, **args: (
        grids.append((getattr(kernel, "__name__", str(kernel)), grid)),
        real_launch(kernel, grid, **args))[1])
    again = _step(call, leaves)
    assert _routed(again[2]) and looked_up == []
    host._PLANS.clear()
    again = _step(call, leaves)
    assert looked_up == ["elbo", "scale"]
    assert torch.equal(again[0], first[0])
    other = "gpu" if configs.interpreter_tiles() else "interpret"
    monkeypatch.setattr(configs, "CONFIG_MODE", other)
    before = len(grids)
    again = _step(call, leaves)
    assert looked_up == ["elbo", "scale"] * 2
    host._PLANS.clear()
    fresh = host._plan_of(x, recon, mu, lv, None, None, None, None, "bernoulli", "analytic",
                          0.0, "sum", [False, True, True, True, False, False, False, False])
    assert grids[before][1] == fresh["grid"]
    torch.testing.assert_close(again[0], first[0], rtol=1e-6, atol=1e-5)
    # the scale grid is per SM: a new SM count source (the offline capture's) is followed
    monkeypatch.setattr(configs, "scale_block", lambda: 32)   # 10 blocks for 5 x 64
    host._PLANS.clear()
    x, recon, mu, lv, leaves, call = _warm(backend, d=64)
    _step(call, leaves)
    assert grids[-1] == ("scale_grads_kernel", (4,))   # no GPU's SMs: 4 programs
    monkeypatch.setattr(_launch, "sm_count", lambda device: 132)
    _step(call, leaves)
    assert grids[-1] == ("scale_grads_kernel", (10,))

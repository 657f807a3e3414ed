"""Prepared calls (``fastvae.ops.Route``): a repeated ``fastvae.elbo`` / ``ELBOLoss`` call
with one signature skips the dispatch layers and the plan lookups. It must give exactly
what the first (unprepared) call gives, values and every gradient, on every backend, and
leave every other case (a changed signature, higher orders, a retained graph, a per-row or
non-unit grad_output, torch.func, validation, a changed backend choice or tile mode) where
it went before.
"""
import pytest
import torch

import fastvae
from fastvae import backends
from fastvae import functional as F
from fastvae import validation as V

from _backends import case_dtype


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(F, "_ELBO_CHECKED", V.Checked())


def _leaves(backend, b=5, d=7, l=3, dtype=torch.float32, x_grad=False, shape=None):
    dtype = case_dtype(backend, dtype)
    dev = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
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
    value = call()
    for t in leaves:
        t.grad = None
    if cotangent is None:
        value.backward(**backward)
    else:
        value.backward(cotangent, **backward)
    return value.detach().clone(), [t.grad.clone() for t in leaves], value


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
def test_a_repeated_call_takes_the_route_and_gets_the_same_bits(backend, case, dtype):
    x, recon, mu, lv, leaves = _leaves(backend, dtype=dtype, x_grad=dtype == torch.float32)
    if case.get("kl") == "mc":
        z = (mu + 0.1).detach().requires_grad_()
        leaves.append(z)
        case = {**case, "z": z}
    loss = fastvae.ELBOLoss(backend=backend, **{k: v for k, v in case.items()
                                                if k not in ("z", "obs_logvar")})

    def call():
        return loss(x, recon, mu, lv, z=case.get("z"), obs_logvar=case.get("obs_logvar", 0.0))
    first = _step(call, leaves)
    for _ in range(2):
        again = _step(call, leaves)
        assert torch.equal(again[0], first[0])
        for g, h in zip(again[1], first[1]):
            assert g.dtype == h.dtype and torch.equal(g, h)
    assert not _routed(first[2])
    assert _routed(again[2]) == (backend != "reference")
    assert backends.last_used() == backend


def test_flattened_data_and_the_functional_form_take_it_too(backend):
    x, recon, mu, lv, leaves = _leaves(backend, b=4, d=12, shape=(4, 3, 2, 2))

    def call():
        return fastvae.elbo(x, recon, mu, lv, reduction="sum", backend=backend)
    first = _step(call, leaves)
    again = _step(call, leaves)
    assert _routed(again[2]) == (backend != "reference")
    assert torch.equal(again[0], first[0])
    assert all(torch.equal(g, h) for g, h in zip(again[1], first[1]))
    assert again[1][0].shape == recon.shape


def _call(backend, x, recon, mu, lv, reduction="sum"):
    return lambda: fastvae.elbo(x, recon, mu, lv, reduction=reduction, backend=backend)


def test_a_changed_signature_is_another_route(backend):
    """requires_grad, the grad mode, strides, shapes: each its own signature, and the
    route of one never runs a call of another."""
    if backend == "reference":
        pytest.skip("the reference has no fused op")
    x, recon, mu, lv, leaves = _leaves(backend)
    call = _call(backend, x, recon, mu, lv)
    _step(call, leaves)
    _step(call, leaves)
    want = fastvae.elbo(x, recon, mu, lv, reduction="sum", backend="reference")
    fixed_mu = mu.detach()
    value = fastvae.elbo(x, recon, fixed_mu, lv, reduction="sum", backend=backend)
    value.backward()
    value = fastvae.elbo(x, recon, fixed_mu, lv, reduction="sum", backend=backend)
    assert _routed(value)
    recon.grad = lv.grad = None
    value.backward()
    assert recon.grad is not None and lv.grad is not None
    with torch.no_grad():
        for _ in range(2):
            value = fastvae.elbo(x, recon, mu, lv, reduction="sum", backend=backend)
            assert value.grad_fn is None
            torch.testing.assert_close(value, want.detach(), rtol=1e-5, atol=1e-4)
    strided = torch.randn(recon.shape[1], recon.shape[0], device=recon.device).t()
    strided.requires_grad_()
    for _ in range(2):
        value = fastvae.elbo(x, strided, mu, lv, reduction="sum", backend=backend)
        strided.grad = None
        value.backward()
        want_s = fastvae.elbo(x, strided, mu, lv, reduction="sum", backend="reference")
        (got,) = torch.autograd.grad(want_s, strided)
        torch.testing.assert_close(strided.grad, got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", ["create_graph", "retain_graph", "scaled", "rows"])
def test_every_other_backward_goes_where_it_went(backend, how):
    """A graph of the backward, a retained graph (two backwards, no in-place scaling of
    what the second reads), a grad_output that is not 1, a per-row one: the route's
    results equal the first call's (which took the op's own path)."""
    x, recon, mu, lv, leaves = _leaves(backend)
    reduction = "none" if how == "rows" else "sum"
    call = _call(backend, x, recon, mu, lv, reduction=reduction)
    cotangent = (torch.linspace(-1.0, 2.0, x.shape[0], device=x.device) if how == "rows"
                 else torch.tensor(3.0, device=x.device) if how == "scaled" else None)
    kw = {"retain_graph": True} if how == "retain_graph" else {}
    if how == "create_graph":
        def grads():
            value = call()
            g = torch.autograd.grad(value, (recon, mu, lv), create_graph=True)
            return torch.autograd.grad(sum((t * t).sum() for t in g), (recon, mu, lv))
        first, again = grads(), grads()
        for g, h in zip(again, first):
            torch.testing.assert_close(g, h, rtol=0, atol=0)
        return
    first = _step(call, leaves, cotangent, **kw)
    again = _step(call, leaves, cotangent, **kw)
    if how == "retain_graph":
        value = again[2]
        for t in leaves:
            t.grad = None
        value.backward()
        for t, h in zip(leaves, first[1]):
            assert torch.equal(t.grad, h)
    for g, h in zip(again[1], first[1]):
        assert torch.equal(g, h)


def test_torch_func_and_validation_skip_the_route(backend):
    x, recon, mu, lv, leaves = _leaves(backend)
    call = _call(backend, x, recon, mu, lv)
    _step(call, leaves)
    _step(call, leaves)

    def loss(r):
        return fastvae.elbo(x, r, mu.detach(), lv.detach(), reduction="sum", backend=backend)
    got = torch.func.grad(loss)(recon.detach())
    want = torch.autograd.grad(fastvae.elbo(x, recon, mu, lv, reduction="sum",
                                            backend="reference"), recon)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    bad = recon.detach().clone()
    bad[0, 0] = float("nan")
    bad.requires_grad_()
    fastvae.elbo(x, bad, mu, lv, reduction="sum", backend=backend)
    fastvae.elbo(x, bad, mu, lv, reduction="sum", backend=backend)   # a route now
    with pytest.raises(ValueError, match="recon has 1 non-finite"):
        fastvae.elbo(x, bad, mu, lv, reduction="sum", backend=backend, validate=True)
    fastvae.set_validation(True)
    try:
        with pytest.raises(ValueError, match="recon has 1 non-finite"):
            fastvae.elbo(x, bad, mu, lv, reduction="sum", backend=backend)
    finally:
        fastvae.set_validation(False)


def test_the_backend_is_chosen_every_call(monkeypatch):
    """FASTVAE_BACKEND is read per call: a route of "torch" never runs a call that now
    asks for the reference."""
    x, recon, mu, lv, leaves = _leaves("torch")
    call = _call(None, x, recon, mu, lv)
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    _step(call, leaves)
    assert _routed(_step(call, leaves)[2]) and backends.last_used() == "torch"
    monkeypatch.setenv("FASTVAE_BACKEND", "reference")
    assert not _routed(_step(call, leaves)[2]) and backends.last_used() == "reference"


def test_an_input_changed_in_place_is_still_caught(backend):
    """Higher orders of a routed call check the inputs' versions, as the op's own do."""
    if backend == "reference":
        pytest.skip("the reference has no fused op")
    x, recon, mu, lv, leaves = _leaves(backend)
    call = _call(backend, x, recon, mu, lv)
    _step(call, leaves)
    value = call()
    assert _routed(value)
    with torch.no_grad():
        mu.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        torch.autograd.grad(value, (recon,), create_graph=True)


def test_a_route_looks_its_plans_up_again_when_they_change(backend, monkeypatch):
    """The Triton route keeps its row and scale plans; an emptied plan cache or another
    tile mode makes it look them up again (and launch what the new plan says)."""
    if backend != "triton":
        pytest.skip("the Triton backend's plans")
    from fastvae.backends.triton_backend import _launch, configs
    from fastvae.backends.triton_backend import elbo as host
    from fastvae.backends.triton_backend import scale as scale_host
    x, recon, mu, lv, leaves = _leaves(backend, b=6, d=9)
    call = _call(backend, x, recon, mu, lv)
    first = _step(call, leaves)
    _step(call, leaves)   # the route's first backward prepares its scaling
    looked_up = []
    for module in (host, scale_host):
        real = module._plan_of
        monkeypatch.setattr(module, "_plan_of", lambda *a, _real=real, _m=module.__name__: (
            looked_up.append(_m.rsplit(".", 1)[1]), _real(*a))[1])
    grids = []
    real_launch = _launch.launch
    monkeypatch.setattr(_launch, "launch", lambda kernel, grid, **args: (
        grids.append((kernel.__name__ if hasattr(kernel, "__name__") else str(kernel), grid)),
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

"""gaussian_log_prob and kl_standard_normal on the row kernel; the custom-op registration
(opcheck, torch.compile fullgraph) of every op on the Triton path.

Compiled on CUDA when present, else under TRITON_INTERPRET=1 (test_triton_interpreter.py).
"""
import pytest
import torch

pytest.importorskip("triton")
from _triton_testing import skip_module_unless_kernels_run  # noqa: E402

skip_module_unless_kernels_run()

import fastvae
from fastvae import ops
from fastvae.backends import triton_backend as tb
from _triton_testing import (DEVICE, assert_close, grads, launches, leaf, needs_kernels,  # noqa: F401
                             oracle_inputs, poison)

pytestmark = [needs_kernels, pytest.mark.usefixtures("poison")]


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (257, 784), (2, 5, 1003)])
@pytest.mark.parametrize("lv_kind", ["float", "perdim", "full"])
def test_gaussian_log_prob(seed, launches, shape, lv_kind):
    x = leaf(torch.randn(shape, device=DEVICE))
    mean = leaf(torch.randn(shape, device=DEVICE))
    lv = {"float": -0.4, "perdim": leaf(torch.randn(shape[-1:], device=DEVICE) * 0.5),
          "full": leaf(torch.randn(shape, device=DEVICE) * 0.5)}[lv_kind]
    got = fastvae.gaussian_log_prob(x, mean, lv, backend="triton")
    assert len(launches) == 1
    ins = [x, mean] + ([lv] if isinstance(lv, torch.Tensor) else [])
    ref = oracle_inputs(*ins)
    want = fastvae.gaussian_log_prob(ref[0], ref[1], ref[2] if len(ref) > 2 else lv,
                                     backend="reference")
    assert_close(got, want, torch.float32, "log prob")
    w = torch.randn(got.shape, device=DEVICE)
    for name, a, b in zip(("x", "mean", "logvar"), grads(got, ins, w), grads(want, ref, w.double())):
        assert_close(a, b, torch.float32, f"d/d{name}")
    assert len(launches) == 1  # backward: no kernel


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (257, 33), (4, 3, 200)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kl_standard_normal(seed, launches, shape, dtype):
    mu = leaf(torch.randn(shape, device=DEVICE, dtype=dtype))
    lv = leaf(torch.randn(shape, device=DEVICE, dtype=dtype))
    got = fastvae.kl_standard_normal(mu, lv, backend="triton")
    assert len(launches) == 1 and got.dtype == torch.float32
    ref = oracle_inputs(mu, lv)
    want = fastvae.kl_standard_normal(*ref, backend="reference")
    assert_close(got, want, dtype, "kl")
    w = torch.randn(got.shape, device=DEVICE)
    for name, a, b in zip(("mu", "logvar"), grads(got, [mu, lv], w), grads(want, ref, w.double())):
        assert a.dtype == dtype
        assert_close(a, b, dtype, f"d/d{name}")


def test_float64_and_empty_inputs_take_the_closed_form(launches):
    """fp64 (gradcheck) and empty batches: the documented fallback, same contract."""
    mu = leaf(torch.randn(4, 3, device=DEVICE, dtype=torch.float64))
    lv = leaf(torch.randn(4, 3, device=DEVICE, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda m, v: fastvae.kl_standard_normal(m, v, backend="triton"), (mu, lv))
    e = fastvae.elbo(torch.rand(0, 5, device=DEVICE), torch.randn(0, 5, device=DEVICE),
                     torch.randn(0, 2, device=DEVICE), torch.randn(0, 2, device=DEVICE),
                     backend="triton")
    assert float(e) == 0.0
    assert not launches


def _needs(*ts):
    return [t is not None and t.requires_grad for t in ts]


def test_opcheck_every_op(seed):
    b, d, l, k = 3, 10, 4, 2
    x = torch.rand(b, d, device=DEVICE)
    recon = leaf(torch.randn(b, d, device=DEVICE))
    mu, lv, z = (leaf(torch.randn(b, l, device=DEVICE)) for _ in range(3))
    obs = leaf(torch.randn(d, device=DEVICE))
    cases = [
        (ops._elbo_op, (x, recon, mu, lv, None, None, 0.0, "bernoulli", "analytic", 1.0, 0.0, "mean",
                        1.0, _needs(x, recon, mu, lv, None, None), "triton")),
        (ops._elbo_op, (x, recon, mu, lv, z, obs, 0.0, "gaussian", "mc", 0.5, 0.2, "none",
                        -1.0, _needs(x, recon, mu, lv, z, obs), "triton")),
        (ops._elbo_op, (x, recon, mu, lv, z, None, 0.0, "continuous_bernoulli", "mc", 1.0, 0.0,
                        "sum", 1.0, _needs(x, recon, mu, lv, z, None), "triton")),
    ]
    rk = leaf(torch.randn(k, b, d, device=DEVICE))
    zk = leaf(torch.randn(k, b, l, device=DEVICE))
    cases.append((ops._iwae_op, (x, rk, mu, lv, zk, obs, 0.0, "gaussian", "mean",
                                 _needs(x, rk, mu, lv, zk, obs), "triton")))
    cases.append((ops._gauss_op, (x, recon, obs, 0.0, _needs(x, recon, obs), "triton")))
    cases.append((ops._kl_op, (mu, lv, [True, True], "triton")))
    seed_t = tb.draw_seed(DEVICE)
    cases.append((tb.reparameterize_op, (mu, lv, seed_t, 3)))
    cases.append((tb.reparameterize_op, (mu, lv, seed_t, 0)))
    for op, args in cases:
        torch.library.opcheck(op, args)


def _train_step_fn():
    def step(x, w, mu, lv):
        z = fastvae.reparameterize(mu, lv, backend="triton")
        recon = z @ w
        return -fastvae.elbo(x, recon, mu, lv, kl="mc", z=z, backend="triton")
    return step


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_compiled_train_step_has_no_graph_break(seed, compile_backend):
    """torch.compile(fullgraph=True) traces reparameterize (seed drawn by torch.randint,
    a tensor: no .item(), no recompile per seed) and elbo as single custom-op nodes; the
    backward runs through the registered autograd."""
    import torch._dynamo

    torch._dynamo.reset()
    b, d, l = 8, 20, 3
    x = torch.rand(b, d, device=DEVICE)
    w = leaf(torch.randn(l, d, device=DEVICE) * 0.3)
    mu = leaf(torch.randn(b, l, device=DEVICE))
    lv = leaf(torch.randn(b, l, device=DEVICE) * 0.3)
    step = torch.compile(_train_step_fn(), fullgraph=True, backend=compile_backend)
    loss = step(x, w, mu, lv)
    loss.backward()
    for t in (w, mu, lv):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    explain = torch._dynamo.explain(_train_step_fn())(x, w, mu, lv)
    assert explain.graph_break_count == 0 and explain.graph_count == 1
    # a second call draws a new seed (a tensor: no recompile) and so a new loss
    loss2 = step(x, w, mu, lv)
    assert float(loss2.detach()) != float(loss.detach())

"""torch.compile around a ``torch.func`` transform of fastvae's ops
(``torch.compile(torch.func.grad(step))``): inside the traced transform the ops run the
reference math, as they do eagerly under one, since the custom ops' autograd cannot run
under a transform. Against the float64 reference's own gradients; aot_eager keeps the
compiles short."""
from __future__ import annotations

import pytest
import torch

import fastvae

F64 = torch.float64


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 5, generator=g, dtype=F64)
    return x, *(torch.randn(*s, generator=g, dtype=F64) for s in ((4, 5), (4, 3), (4, 3)))


def _elbo(backend, x):
    def f(r, mu, lv):
        return fastvae.elbo(x, r, mu, lv, likelihood="gaussian", beta=0.5, free_bits=0.05,
                            backend=backend)
    return f


def _kl_normal(backend, x):
    def f(r, mu, lv):
        return fastvae.kl_normal(mu, lv, 0.5 * mu.flip(0), r[:, :3], backend=backend).sum()
    return f


@pytest.mark.parametrize("make", [_elbo, _kl_normal], ids=["elbo", "kl_normal"])
def test_compiled_torch_func_grad_runs_the_reference(make):
    torch._dynamo.reset()
    x, *ins = _inputs()
    compiled = torch.compile(torch.func.grad(make("torch", x), argnums=(0, 1, 2)),
                             backend="aot_eager", fullgraph=True)
    got = compiled(*ins)
    want = torch.func.grad(make("reference", x), argnums=(0, 1, 2))(*ins)
    for i, (a, e) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, e, msg=f"gradient {i}")


def test_compiled_vmap_of_grad_and_a_plain_compile_after_it():
    """Per-sample gradients under one compile, then the same function compiled plainly
    (the fused op, not a transform's graph reused)."""
    torch._dynamo.reset()
    x, r, mu, lv = _inputs()

    def one(backend):
        def f(r, mu, lv):
            return fastvae.elbo(x[:1], r[None], mu[None], lv[None], reduction="sum",
                                backend=backend)
        return f

    got = torch.compile(torch.func.vmap(torch.func.grad(one("torch"), argnums=(1, 2))),
                        backend="aot_eager", fullgraph=True)(r, mu, lv)
    want = torch.func.vmap(torch.func.grad(one("reference"), argnums=(1, 2)))(r, mu, lv)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)
    leaves = [t.clone().requires_grad_() for t in (r, mu, lv)]
    f = _elbo("torch", x)
    torch.compile(f, backend="aot_eager", fullgraph=True)(*leaves).backward()
    assert fastvae.last_backend() == "torch"
    want = torch.func.grad(_elbo("reference", x), argnums=(0, 1, 2))(r, mu, lv)
    for t, e in zip(leaves, want):
        torch.testing.assert_close(t.grad, e)

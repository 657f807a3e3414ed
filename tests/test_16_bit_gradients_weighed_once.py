"""16-bit gradients at a grad_output other than 1, on every fused backend: each is the
saved gradient times grad_output formed in float32 and rounded to the input's dtype once.
(The reference is left out: its gradients are autograd's chain in 16 bits, not a saved
gradient weighed once; up to 0.9 ulp off in bf16, 3.2 in fp16 on some inputs.)

The fused ops save their gradients (bfloat16 in bfloat16, float16 in float32) and
backward weighs them by grad_output. Rounding grad_output to bfloat16 before the product
added a second rounding: up to 2.1 bfloat16 ulp off the float64 gradient where one
rounding gives at most 1.35 (per-row grad_output, and a scalar one with a retained graph).

The bound, per element, against the float64 reference on the same 16-bit inputs: half an
ulp of the result (the one rounding), plus |grad_output| times the saved gradient's own
error (read from the gradient at grad_output 1; a float16 one, saved in float32, lies
within half an ulp of that), plus float32's rounding of the product.
"""
from __future__ import annotations

import pytest
import torch

import fastvae
from _backends import BACKENDS, INTERPRET
from _compare import leaf, oracle, ulp16
from _dmol import make

F64 = torch.float64
B, L, D, K = 16, 12, 20, 3


def _cases():
    """name -> (op(*inputs, backend), inputs, which need a gradient, each gradient's row
    dim, whether the op reduces (a scalar grad_output) or gives a row each)."""
    x = (torch.rand(B, D) < 0.5).double()
    recon, mu, lv, z = torch.randn(B, D) * 3, torch.randn(B, L), torch.randn(B, L), torch.randn(B, L)
    rk, zk = torch.randn(K, B, D), torch.randn(K, B, L)
    pm, plv = torch.randn(B, L), torch.randn(B, L)
    xd, p = make(4, 3, 2, 3, 2, dtype=torch.bfloat16)
    cases = {}
    for red in ("mean", "none"):
        for lik, kl in (("bernoulli", "analytic"), ("gaussian", "mc")):
            cases[f"elbo-{lik}-{kl}-{red}"] = (
                lambda x, r, m, v, z, backend, lik=lik, kl=kl, red=red: fastvae.elbo(
                    x, r, m, v, likelihood=lik, kl=kl, z=z if kl == "mc" else None,
                    reduction=red, backend=backend),
                [x, recon, mu, lv, z], [False, True, True, True, kl == "mc"], 0, red)
        cases[f"iwae_bound-{red}"] = (
            lambda x, r, m, v, z, backend, red=red: fastvae.iwae_bound(
                x, r, m, v, z, reduction=red, backend=backend),
            [x, rk, mu, lv * 0.3, zk], [False, True, True, True, True], (1, 0, 0, 1), red)
        cases[f"dmol-{red}"] = (
            lambda x, p, backend, red=red: fastvae.discretized_logistic_mixture_log_prob(
                x, p, reduction=red, backend=backend), [xd, p], [False, True], 0, red)
    cases["elbo-sum"] = (lambda x, r, m, v, backend: fastvae.elbo(
        x, r, m, v, reduction="sum", backend=backend), [x, recon, mu, lv],
        [False, True, True, True], 0, "sum")
    cases["kl_standard_normal"] = (fastvae.kl_standard_normal, [mu, lv], [True] * 2, 0, "none")
    cases["gaussian_log_prob"] = (fastvae.gaussian_log_prob, [recon, recon + torch.randn(B, D),
                                                              torch.randn(B, D)], [True] * 3, 0, "none")
    cases["kl_normal"] = (fastvae.kl_normal, [mu, lv, pm, plv], [True] * 4, 0, "none")

    def sample_kl(*args, backend):   # the KL's gradients: the reference draws another eps
        return fastvae.sample_with_kl(*args, backend=backend)[1]
    cases["sample_with_kl"] = (sample_kl, [mu, lv, pm, plv], [True] * 4, 0, "none")
    return cases


CASES = _cases()


def _grads(op, inputs, need, backend, go, retain):
    ins = [leaf(t) if n else t for t, n in zip(inputs, need)]
    out = op(*ins, backend=backend)
    return torch.autograd.grad(out, [t for t, n in zip(ins, need) if n],
                               go.to(out.dtype).expand(out.shape), retain_graph=retain)


@pytest.mark.parametrize("retain", [False, True], ids=["in_place", "graph_kept"])
@pytest.mark.parametrize("go", [0.3, -1.7, 1e-3, "rows"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"], indirect=True)
def test_gradients_at_a_grad_output_other_than_one(seed, backend, case, dtype, go, retain):
    op, inputs, need, row_dims, red = CASES[case]
    if go == "rows" and red != "none":
        pytest.skip("a reduced value has one grad_output")
    inputs = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
    rows = inputs[0].shape[0] if red == "none" else None
    if go == "rows":
        g = torch.linspace(-1.7, 0.3, rows) + 1e-3
    else:
        g = torch.full((rows,) if rows else (), go)
    ones = torch.ones_like(g)
    got = _grads(op, inputs, need, backend, g, retain)
    at_one = _grads(op, inputs, need, backend, ones, False)
    want = _grads(op, oracle(*inputs), need, "reference", g.double(), False)
    want_one = _grads(op, oracle(*inputs), need, "reference", ones.double(), False)
    dims = row_dims if isinstance(row_dims, tuple) else (row_dims,) * len(got)
    # the Triton interpreter truncates its bfloat16 stores (a GPU rounds to nearest), and
    # its bfloat16 subnormals are its own (numpy bit arithmetic): those it is not held to
    emulated = INTERPRET and backend == "triton" and dtype == torch.bfloat16
    half = 1.0 if emulated else 0.5
    for i, (a, a1, w, w1, d) in enumerate(zip(got, at_one, want, want_one, dims)):
        assert a.dtype == dtype
        shape = [1] * a.dim()
        if rows:
            shape[d] = -1
        ge = g.double().reshape(shape).abs()
        saved_err = (a1.double() - w1).abs()
        if dtype == torch.float16:
            saved_err = saved_err + 0.5 * ulp16(a1.double(), dtype)
        a = a.double()
        bound = half * ulp16(a, dtype) + ge * saved_err + 2.0 ** -23 * a.abs()
        err = (a - w).abs()
        # (a saved gradient the interpreter holds as a bfloat16 subnormal scales to a
        # normal value wrongly: 1.7 x -8e-39 gave 2.6e-39)
        tiny = (w.abs() < 2.0 ** -126) | (a1.double().abs() < 2.0 ** -126) | (w1.abs() < 2.0 ** -126)
        bad = (err > bound) & w.isfinite() & ~(emulated & tiny)
        assert not bool(bad.any()), (
            f"gradient {i}: {int(bad.sum())} of {a.numel()} past the bound, worst "
            f"{float((err / ulp16(w, dtype))[bad].max()):.2f} ulp off the float64 gradient")

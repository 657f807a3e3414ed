"""The check of a Bernoulli IWAE kernel that rounds d/drecon_k twice (the row-warp and
sample-warp kernels, tests/test_triton_iwae_row_warps.py and
tests/test_triton_iwae_sample_warps.py): values and every gradient against float64."""
import torch

import fastvae
from _compare import assert_close, grads, leaf, oracle
from fastvae._env import interpreting
from _iwae import grad_rtol, make_like as iwae_inputs, row_kernel

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
NAMES = ("recon_k", "mu", "logvar", "z_k", "prior_mu", "prior_logvar")
# (prior, estimator, reduction) of each kernel's prior and estimator test
PRIOR_ESTIMATOR_CASES = [
    ("row", "standard", "mean"),
    ("shared", "standard", "none"),
    (None, "dreg", "sum"),          # the softmax weights stored for DReG's hook
    (None, "dreg", "mean"),         # ... without the gradients' factor c (here 1 / B)
    ("row", "dreg", "none"),
    (None, "stl", "mean"),          # no d/dmu, d/dlogvar
]


def _weights_rtol(x, recon, d):
    """The fp32 softmax weights' relative error: ``grad_rtol``'s 4 eps 3D for terms of
    size ~3, or 4 eps times a row's sum of |log p(x_d | z_k)| where that is larger (logits
    of 1e4 make terms of 1e4, and an fp32 row sum rounds by eps of its size)."""
    x, l = x.detach().double(), recon.detach().double()
    terms = x * l - l.clamp(min=0) - torch.log1p(torch.exp(-l.abs()))
    big = 4 * torch.finfo(F32).eps * float(terms.abs().sum(-1).max())
    return max(grad_rtol(d)[F32], big)


def _recon_bound(want, w_rtol, dtype, roundings=2, split_weight=False):
    """The per-element error allowed d/drecon_k: ``roundings`` to its saved dtype (bf16:
    truncations under the interpreter; fp16 and fp32 inputs save it in fp32), the fp32
    weights' error, an fp32 floor at the largest gradient. ``split_weight``: bf16 weighed
    by the weight as bf16 ``hi + lo`` (the sample-warp kernel's sweep), ``2 r^2`` more."""
    r = (2.0 ** (-7 if interpreting() else -8) if dtype == BF16 else 2.0 ** -24)
    split = 1 + 2 * r * r if split_weight and dtype == BF16 else 1
    w = want.abs()
    return ((1 + r) ** roundings * split - 1 + w_rtol) * w + 2.0 ** -22 * w.max()


def check(launches, kernel, k, b, d, l, dtype=BF16, reduction="none", noncontig=False, prior=None,
          estimator="standard", extreme=False, scale=1.0, grad_output=None):
    """Inputs of ``dtype`` through the sample-warp kernel against the reference on float64
    copies. ``prior``: None, "row" (a (B, L) prior) or "shared" (one (L,) row: stride 0).
    ``grad_output``: backward's cotangent (default ones): other than 1, backward weighs
    the saved gradients and rounds d/drecon_k a third time. ``noncontig``: padded rows,
    16-byte aligned (the kernels' loads; unaligned rows take other kernels)."""
    (x, recon, mu, lv, z), _, _ = iwae_inputs(k, b, d, l, "bernoulli", dtype,
                                              noncontig and "aligned")
    x = x.detach()
    if extreme:
        with torch.no_grad():
            recon[:, :, :6] = torch.tensor([1e4, -1e4, 88.0, -88.0, 20.0, -20.0])
            recon[:, :, -3:] = torch.tensor([-1e4, 30.0, -40.0])   # the tail's too
            x[:, :6] = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5, 0.5])
    pshape = (b, l) if prior == "row" else (l,)
    pm = leaf((torch.randn(pshape) * 0.5).to(dtype)) if prior else None
    plv = leaf((torch.randn(pshape) * 0.5).to(dtype)) if prior else None
    opts = dict(reduction=reduction, estimator=estimator, _scale=scale)
    ins = [recon, mu, lv, z, pm, plv]
    got = fastvae.iwae_bound(x, recon, mu, lv, z, prior_mu=pm, prior_logvar=plv,
                             backend="triton", **opts)
    assert row_kernel(launches) == kernel, launches
    o = oracle(x, *ins)
    want = fastvae.iwae_bound(*o[:5], prior_mu=o[5], prior_logvar=o[6], backend="reference",
                              **opts)
    assert got.dtype == F32
    assert_close("bound", got, want, F32, rtol=grad_rtol(d))
    w_rtol = _weights_rtol(x, recon, d)
    leaves = [t for t in ins if t is not None]
    gw = grads(want, [t for t in o[1:] if t is not None], grad_output)
    for name, t, a, w in zip([n for n, t in zip(NAMES, ins) if t is not None], leaves,
                             grads(got, leaves, grad_output), gw):
        if a is None or w is None:   # DReG: no direct gradient of mu, logvar
            assert a is None and w is None, name
            continue
        assert a.dtype == dtype, name
        if name == "recon_k":
            err = (a.double() - w).abs()
            bound = _recon_bound(w, w_rtol, dtype, 2 if grad_output is None else 3,
                                 split_weight=kernel == "sample_warps")
            if dtype == F16:   # saved in fp32, handed back in fp16: one fp16 rounding more
                bound = bound + w.abs() * 2.0 ** -11 + 2.0 ** -24
            assert bool((err <= bound).all()), (
                f"d/drecon_k: {int((err > bound).sum())} past the bound, worst "
                f"{float((err / w.abs().clamp_min(1e-300)).max()):.3g} relative")
        else:
            assert_close(f"d/d{name}", a, w, dtype,
                         rtol={BF16: max(2.0 ** -6, w_rtol), F16: max(2.0 ** -9, w_rtol),
                               F32: w_rtol})


def _rows(t, pad, lead):
    """``t``'s values in rows of n + pad elements, each starting ``lead`` elements in."""
    n = t.shape[-1]
    base = torch.zeros(*t.shape[:-1], n + pad, dtype=t.dtype)
    base[..., lead:n + lead] = t.detach()
    return base[..., lead:n + lead]


def kernels_by_alignment(launches, k, d):
    """The kernel that bf16 training at (K, D) runs on: rows padded to 16 elements and
    16-byte aligned; then, one at a time, x's row stride D + 8, x's base 2 bytes in,
    recon_k's row stride D + 8, recon_k's base 2 bytes in (each load of a kernel that
    reads 16 bytes a lane would then be an element)."""
    (x, recon, mu, lv, z), _, _ = iwae_inputs(k, 3, d, 8, "bernoulli", BF16)

    def kernel(x_rows, r_rows):
        del launches[:]
        fastvae.iwae_bound(_rows(x, *x_rows), _rows(recon, *r_rows).requires_grad_(), mu, lv,
                           z, backend="triton")
        return row_kernel(launches)
    ok = (16, 16)
    return [kernel(ok, ok), kernel((8, 0), ok), kernel((16, 1), ok), kernel(ok, (8, 0)),
            kernel(ok, (16, 1))]

"""``reparameterize``: ``z = mu + exp(0.5 * logvar) * eps``, forward and backward (a
fixed random cotangent ``dz``), one sample (B, L) or K samples (K, B, L).

Variants: ``eager`` (pytorch/examples), ``distributions`` (``Normal.rsample``),
``compile`` of eager, ``compile-eager-rng`` (the same drawing with aten's RNG, as eager
does), ``fastvae-torch``, ``fastvae-triton``.

Samples cannot be compared draw for draw across RNG streams, so each variant is
checked alone (:func:`check`): its ``eps = (z - mu) / std`` must look standard normal
and its gradients must be the closed form of its own ``z``.
"""

import torch
from torch.distributions import Normal

import fastvae

from ..._dtypes import in_float64
from ..check import assert_agrees
from ..core import AgreementError, Op
from ._common import check_noise, standard_variants, vae_inputs

ORDER = 3


def eager_reparameterize(mu, logvar, k):
    """pytorch/examples' ``reparameterize``; ``k > 1`` stacks K samples ``(K, B, L)``."""
    std = torch.exp(0.5 * logvar)
    eps = torch.randn_like(std) if k == 1 else torch.randn((k,) + tuple(std.shape),
                                                           dtype=std.dtype, device=std.device)
    return mu + eps * std


def distributions_reparameterize(mu, logvar, k):
    q = Normal(mu, torch.exp(0.5 * logvar), validate_args=False)
    return q.rsample() if k == 1 else q.rsample((k,))


def fastvae_reparameterize(backend):
    def draw(mu, logvar, k):
        return fastvae.reparameterize(mu, logvar, n_samples=None if k == 1 else k,
                                      backend=backend)
    return draw


def _z_shape(case):
    return (case.batch, case.latent) if case.k == 1 else (case.k, case.batch, case.latent)


def make_inputs(case, gen):
    d = vae_inputs(case, gen, grad=True)
    dz = torch.randn(_z_shape(case), generator=gen, device=case.device).to(case.dtype)
    return {"mu": d["mu"], "logvar": d["logvar"], "dz": dz}


def _make(get_fn, backend):
    def build(case, inputs):
        draw, mu, logvar, dz = get_fn(), inputs["mu"], inputs["logvar"], inputs["dz"]

        def release():
            mu.grad = logvar.grad = None

        def step():
            release()
            z = draw(mu, logvar, case.k)
            z.backward(dz)
            return z.detach(), mu.grad, logvar.grad
        step.release = release
        return step
    return build


def check(case, inputs, out, name):
    """z must be ``mu + std * eps`` with eps ~ N(0, 1), and the gradients the closed
    form of that same z: ``dmu = sum_k dz``, ``dlogvar = 0.5 * sum_k dz * (z - mu)``."""
    z, g_mu, g_lv = (in_float64(t) for t in out)
    mu, lv, dz = (in_float64(inputs[n]) for n in ("mu", "logvar", "dz"))
    if tuple(z.shape) != _z_shape(case):
        raise AgreementError(f"{name}: z has shape {tuple(z.shape)}, expected {_z_shape(case)}")
    # bf16 z rounds eps by about |z| / std * 2^-8; allow for it beyond sampling noise.
    slack = 0.0 if case.dtype in (torch.float32, torch.float64) else 0.05
    check_noise(name, (z - mu) / torch.exp(0.5 * lv), slack)
    dims = (0,) if case.k > 1 else ()
    want_mu = dz.sum(dims) if dims else dz
    prod = 0.5 * dz * (z - mu)
    want_lv = prod.sum(dims) if dims else prod
    assert_agrees(f"{name}: dmu", g_mu, want_mu, case.dtype)
    assert_agrees(f"{name}: dlogvar", g_lv, want_lv, case.dtype)


def elements_moved(case):
    """With the noise drawn in the kernel: forward reads mu, logvar and writes z
    (``2BL + KBL``); backward reads dz and logvar, writes dmu, dlogvar (``KBL + 3BL``)."""
    return 5 * case.batch * case.latent + 2 * case.k * case.batch * case.latent


OPS = [Op(
    "reparameterize", make_inputs,
    standard_variants(_make, eager_reparameterize, distributions_reparameterize,
                      fastvae_reparameterize, sampler=True),
    elements_moved=elements_moved, uses_dim=False, k_values=(1, 16), k_flag="--k-reparam",
    self_check=check,
    grids={"quick": dict(batch=[4096], k=[16]),
           "cpu": dict(batch=[256, 4096, 32768], k=[1, 16]),
           "cuda": dict(batch=[65536], k=[1, 16]),
           "quick_cuda": dict(batch=[65536], k=[16])},
)]

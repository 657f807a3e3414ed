"""``sample_with_kl`` and ``kl_normal``: one latent group of a hierarchical VAE with a
learned prior, forward and backward (fixed random cotangents for z and the KL).

Shapes: ``L`` is the latents per sample; ``L = 16 * s * s`` runs as a ``(B, 16, s, s)``
latent map (``L=16384``: ``(B, 16, 32, 32)``), any other L as ``(B, L)``.

Variants of ``sample_with_kl``: ``eager`` (the VDVAE pattern: ``z = mu + exp(lv/2) *
randn``, then the analytic KL term by term, autograd for the backward), ``distributions``
(``Normal.rsample`` and ``kl_divergence``), ``compile`` of eager, ``compile-eager-rng``
(the same drawing with aten's RNG, as eager does), ``fastvae-torch``, ``fastvae-triton``. Samples differ across RNG streams, so each variant is checked alone
(:func:`check`). ``kl_normal``: the KL alone, checked against eager.
"""
import math

import torch
from torch.distributions import Normal, kl_divergence

import fastvae

from ..._dtypes import in_float64
from ..check import assert_agrees
from ..core import Op
from ._common import check_noise, standard_variants

ORDER = 4


def latent_shape(case):
    side = math.isqrt(case.latent // 16) if case.latent % 16 == 0 else 0
    if side > 1 and 16 * side * side == case.latent:
        return (case.batch, 16, side, side)
    return (case.batch, case.latent)


def eager_sample_with_kl(mu, logvar, mu_p, logvar_p):
    """Draw the sample and compute the analytic KL as a hierarchical VAE's eager code does."""
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn_like(std)
    return z, eager_kl(mu, logvar, mu_p, logvar_p)


def distributions_sample_with_kl(mu, logvar, mu_p, logvar_p):
    q = Normal(mu, torch.exp(0.5 * logvar), validate_args=False)
    p = Normal(mu_p, torch.exp(0.5 * logvar_p), validate_args=False)
    return q.rsample(), kl_divergence(q, p).flatten(1).sum(1)


def fastvae_sample_with_kl(backend):
    return lambda mu, logvar, mu_p, logvar_p: fastvae.sample_with_kl(mu, logvar, mu_p, logvar_p,
                                                                     backend=backend)


def eager_kl(mu, logvar, mu_p, logvar_p):
    """The textbook KL between diagonal Gaussians, term by term (VDVAE's
    ``gaussian_analytical_kl`` in log-variances)."""
    kl = 0.5 * (logvar_p - logvar + (torch.exp(logvar) + (mu - mu_p) ** 2) / torch.exp(logvar_p)
                - 1)
    return kl.flatten(1).sum(1)


def distributions_kl(mu, logvar, mu_p, logvar_p):
    q = Normal(mu, torch.exp(0.5 * logvar), validate_args=False)
    p = Normal(mu_p, torch.exp(0.5 * logvar_p), validate_args=False)
    return kl_divergence(q, p).flatten(1).sum(1)


def fastvae_kl(backend):
    return lambda mu, logvar, mu_p, logvar_p: fastvae.kl_normal(mu, logvar, mu_p, logvar_p,
                                                                backend=backend)


NAMES = ("mu", "logvar", "mu_p", "logvar_p")


def make_inputs(case, gen):
    shape = latent_shape(case)
    dev, dt = case.device, case.dtype

    def draw(scale=1.0):
        t = torch.randn(shape, generator=gen, device=dev) * scale
        return t.to(dt).requires_grad_(True)
    inputs = {"mu": draw(), "logvar": draw(0.5), "mu_p": draw(), "logvar_p": draw(0.5)}
    inputs["dz"] = torch.randn(shape, generator=gen, device=dev).to(dt)
    inputs["dkl"] = torch.randn(case.batch, generator=gen, device=dev).to(torch.float32)
    return inputs


def _make(get_fn, backend, with_z=True):
    def build(case, inputs):
        fn = get_fn()
        leaves = [inputs[n] for n in NAMES]

        cotangents = {}

        def dkl(dtype):
            # once per dtype: a cast in each call is a copy that eager's 16-bit KL pays and
            # fastvae's float32 KL does not
            if dtype not in cotangents:
                cotangents[dtype] = inputs["dkl"].to(dtype)
            return cotangents[dtype]

        def release():
            for t in leaves:
                t.grad = None

        def step():
            release()
            out = fn(*leaves)
            if with_z:
                z, kl = out
                torch.autograd.backward([z, kl], [inputs["dz"], dkl(kl.dtype)])
                return (z.detach(), kl.detach(), *(t.grad for t in leaves))
            out.backward(dkl(out.dtype))
            return (out.detach(), *(t.grad for t in leaves))
        step.release = release
        return step
    return build


def check(case, inputs, out, name):
    """z is ``mu + std * eps`` with eps ~ N(0, 1); the KL and every gradient are the closed
    forms of that same z (kl_normal's formula, ``dmu = dz + g dKL/dmu`` and so on)."""
    z, kl, g_mu, g_lv, g_pm, g_plv = (in_float64(t) for t in out)
    mu, lv, pm, plv, dz = (in_float64(inputs[n]) for n in (*NAMES, "dz"))
    gk = in_float64(inputs["dkl"]).reshape(-1, *([1] * (mu.dim() - 1)))
    slack = 0.0 if case.dtype in (torch.float32, torch.float64) else 0.05
    check_noise(name, (z - mu) / torch.exp(0.5 * lv), slack)
    r, u = torch.exp(lv - plv), (mu - pm) * torch.exp(-0.5 * plv)
    assert_agrees(f"{name}: kl", kl, (0.5 * (plv - lv + r + u * u - 1)).flatten(1).sum(1),
                  case.dtype)
    d_mu = u * torch.exp(-0.5 * plv)
    assert_agrees(f"{name}: dmu", g_mu, dz + gk * d_mu, case.dtype)
    assert_agrees(f"{name}: dlogvar", g_lv, 0.5 * dz * (z - mu) + gk * 0.5 * (r - 1), case.dtype)
    assert_agrees(f"{name}: dmu_p", g_pm, -gk * d_mu, case.dtype)
    assert_agrees(f"{name}: dlogvar_p", g_plv, gk * 0.5 * (1 - r - u * u), case.dtype)


def elements_moved(case):
    """Fused, per latent: forward reads mu, logvar, mu_p, logvar_p and writes z and three
    KL gradients (8), backward reads dz, logvar and the three, writes four gradients (9)."""
    return 17 * case.batch * case.latent


def kl_elements_moved(case):
    """The least any implementation moves under the benchmark's per-row cotangent dkl:
    read the four inputs for the value, then again for the gradients, which depend on dkl,
    and write the four (12). fastvae's forward writes three gradients (dKL/dmu_p is
    -dKL/dmu_q) and its backward scales them into the four (14)."""
    return 12 * case.batch * case.latent


GRIDS = {"quick": dict(batch=[32], latent=[16384]),
         "cpu": dict(batch=[32, 4096], latent=[16384, 64]),
         "cuda": dict(batch=[16, 256, 4096], latent=[16384, 64, 65536]),
         "quick_cuda": dict(batch=[16], latent=[16384]),
         "suite_cpu": dict(batch=[32, 4096], latent=[64, 16384])}

OPS = [
    Op("sample_with_kl", make_inputs,
       standard_variants(_make, eager_sample_with_kl, distributions_sample_with_kl,
                         fastvae_sample_with_kl, sampler=True),
       elements_moved=elements_moved, uses_dim=False, self_check=check, grids=GRIDS),
    Op("kl_normal", make_inputs,
       standard_variants(lambda get_fn, backend: _make(get_fn, backend, with_z=False), eager_kl,
                         distributions_kl, fastvae_kl),
       elements_moved=kl_elements_moved, uses_dim=False, fused_fp32=True,
       grids={k: v for k, v in GRIDS.items() if k != "quick"}),
]

"""``iwae`` (``fastvae.iwae_bound``): the importance-weighted bound of Burda et al.
2016 with K samples, forward and backward, Bernoulli likelihood, as a loss
``-sum_b [logsumexp_k log w_k - log K]``. Each variant returns the loss and its
gradients w.r.t. recon_k, mu, logvar, z_k.
"""
import math

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal

import fastvae

from ..core import Op, leaf, loss_step
from ._common import standard_variants, vae_inputs

ORDER = 4
NAMES = ("x", "recon_k", "mu", "logvar", "z_k")


def eager_iwae_loss(x, recon_k, mu, logvar, z_k):
    """The bound written by hand."""
    k = recon_k.shape[0]
    log_px = -F.binary_cross_entropy_with_logits(
        recon_k, x.expand_as(recon_k), reduction="none").sum(-1)
    log_pz = -0.5 * (z_k * z_k).sum(-1)
    log_qz = -0.5 * ((z_k - mu) ** 2 * torch.exp(-logvar) + logvar).sum(-1)
    bound = torch.logsumexp(log_px + log_pz - log_qz, dim=0) - math.log(k)
    return -bound.sum()


def distributions_iwae_loss(x, recon_k, mu, logvar, z_k):
    k = recon_k.shape[0]
    log_px = Bernoulli(logits=recon_k, validate_args=False).log_prob(x.expand_as(recon_k)).sum(-1)
    prior = Normal(torch.zeros_like(mu), torch.ones_like(mu), validate_args=False)
    q = Normal(mu, torch.exp(0.5 * logvar), validate_args=False)
    log_w = log_px + prior.log_prob(z_k).sum(-1) - q.log_prob(z_k).sum(-1)
    return -(torch.logsumexp(log_w, dim=0) - math.log(k)).sum()


def fastvae_iwae_loss(backend):
    """``fastvae.IWAELoss``: the loss as fastvae's users (and ``fastvae train``) write it,
    the sign inside the op, so backward does not read and write every gradient again to
    negate it, as ``-fastvae.iwae_bound(...)`` would."""
    return fastvae.IWAELoss(reduction="sum", backend=backend)


def make_inputs(case, gen):
    """x, mu, logvar as the ELBO's; K decoder outputs (K, B, D) and samples z_k (K, B, L)
    drawn from q."""
    d = vae_inputs(case, gen, grad=True)
    dev, dt, k = case.device, case.dtype, case.k
    recon_k = 2.0 * torch.randn(k, case.batch, case.dim, generator=gen, device=dev)
    mu, lv = d["mu"].detach().float(), d["logvar"].detach().float()
    eps = torch.randn(k, case.batch, case.latent, generator=gen, device=dev)
    z_k = mu + torch.exp(0.5 * lv) * eps
    return {"x": d["x"], "recon_k": leaf(recon_k.to(dt), True), "mu": d["mu"],
            "logvar": d["logvar"], "z_k": leaf(z_k.to(dt), True)}


def _make(get_fn, backend):
    return lambda case, inputs: loss_step(get_fn(), inputs, NAMES, True)


def elements_moved(case):
    """Read x, recon_k, z_k, mu, logvar; write d recon_k, d z_k, d mu, d logvar:
    ``BD + 2KBD + 2KBL + 4BL``."""
    b, d, l, k = case.batch, case.dim, case.latent, case.k
    return b * d + 2 * k * b * d + 2 * k * b * l + 4 * b * l


OPS = [Op(
    "iwae", make_inputs,
    standard_variants(_make, eager_iwae_loss, distributions_iwae_loss, fastvae_iwae_loss,
                      aten=True),
    elements_moved=elements_moved, fused_fp32=True, k_values=(5, 50), k_flag="--k-iwae",
    grids={"quick": dict(batch=[256], dim=[784], k=[5]),
           "cpu": dict(batch=[256, 4096], dim=[784], k=[5, 50]),
           "cuda": dict(batch=[4096], dim=[784], k=[5, 50])},
)]

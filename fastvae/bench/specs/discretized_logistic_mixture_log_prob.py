"""``dmol`` (``fastvae.discretized_logistic_mixture_log_prob``): the discretized mixture
of logistics of PixelCNN++/NVAE on 8-bit RGB images, forward and backward, as a loss
``-sum_b log p(x_b)``. Each variant returns the loss and d loss / d params.

A case's axes are read as images: ``batch`` B, ``dim`` the pixels per channel H*W
(square when H*W is a square, else 1 x H*W), ``latent`` the mixture's M; C = 3, so
``params`` is ``(B, 10*M, H, W)``. The eager baseline is NVAE's ``DiscMixLogistic.log_prob``
in our words (every B x 3 x M x H x W intermediate materialized and saved by autograd),
with its two bugs fixed so the variants can agree: the edge bins are decided by the
integer bin, not ``x > 0.99`` (NVAE gives pixel 254 the top bin's mass), and the interior
is ``log(sigmoid(u+) - sigmoid(u-))`` in log space, not the ``cdf_delta > 1e-5`` switch
to a midpoint density (off by nats for sharp components).
"""
import math

import torch
import torch.nn.functional as F

import fastvae

from ..core import Op, Variant, leaf, loss_step
from ._common import aten_variant, compiled

ORDER = 6
NAMES = ("x", "params")
BITS = 8


def image_size(case):
    """(H, W) of a case: square where ``dim`` is a square, else one row."""
    side = math.isqrt(case.dim)
    return (side, side) if side * side == case.dim else (1, case.dim)


def needs(axis: str, value: int):
    """Its sizes (:attr:`Op.needs`): any H*W (0 too), M >= 1 mixture components."""
    return "L (the mixture's M) >= 1" if axis == "latent" and value < 1 else None


def label(case):
    h, w = image_size(case)
    return f"B={case.batch} 3x{h}x{w} M={case.latent}"


def eager_dmol_loss(x, params):
    """-sum log p(x) of NVAE's DMoL, as eager tensor code (see the module's docstring)."""
    b, _, h, w = x.shape
    m = params.shape[1] // 10
    n = 2 ** BITS - 1
    logit_probs = params[:, :m]
    rest = params[:, m:].reshape(b, 3, 3 * m, h, w)
    means, log_scales = rest[:, :, :m], rest[:, :, m:2 * m].clamp(min=-7.0)
    coeffs = torch.tanh(rest[:, :, 2 * m:])
    # the bin decides the edges; the grid in float64 for float64 parameters (float32 x
    # made it drift by 1e-4 nats from fastvae's exact float64 value, a false failure)
    k = torch.round(x.to(torch.promote_types(x.dtype, params.dtype)) * n)
    y = (2.0 * k / n - 1.0).unsqueeze(2)                    # (B, 3, 1, H, W)
    m1 = means[:, 1] + coeffs[:, 0] * y[:, 0]
    m2 = means[:, 2] + coeffs[:, 1] * y[:, 0] + coeffs[:, 2] * y[:, 1]
    means = torch.stack([means[:, 0], m1, m2], dim=1)
    centered = y - means
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered + 1.0 / n)
    min_in = inv_stdv * (centered - 1.0 / n)
    log_cdf_plus = F.logsigmoid(plus_in)
    log_one_minus_cdf_min = F.logsigmoid(-min_in)
    # log(sigmoid(u+) - sigmoid(u-)) = log sigmoid(u+) + log sigmoid(-u-) + log(1 - e^-w),
    # w = u+ - u- the bin's width in units of the scale: each full-size intermediate once,
    # as eager code writes it (redundant passes would inflate every ratio against eager).
    # The inputs' log-scales (<= 0) keep w >= 2/255, far from the denormal w for which
    # fastvae.reference writes log w + log((1 - e^-w) / w).
    log_gap = torch.log(-torch.expm1(inv_stdv * (-2.0 / n)))
    k = k.unsqueeze(2)
    log_probs = torch.where(k == 0, log_cdf_plus,
                            torch.where(k == n, log_one_minus_cdf_min,
                                        log_cdf_plus + log_one_minus_cdf_min + log_gap))
    log_px = torch.logsumexp(log_probs.sum(1) + F.log_softmax(logit_probs, dim=1), dim=1)
    return -log_px.sum()


def fastvae_dmol_loss(backend):
    # the sum and the sign inside the fused op, as a user's loss module has them: backward
    # then finds d/dparams ready, where -op(...).sum() would scale it by a (B,) tensor of -1
    return fastvae.DiscretizedLogisticMixtureNLLLoss(bits=BITS, reduction="sum",
                                                     backend=backend)


def make_inputs(case, gen):
    """x on the 8-bit grid (both edge bins present); logits ~ N(0, 1), means in [-1, 1],
    log-scales in [-4, 0], coefficients ~ N(0, 1)."""
    h, w = image_size(case)
    b, m, dev, dt = case.batch, case.latent, case.device, case.dtype
    x = torch.randint(0, 256, (b, 3, h, w), generator=gen, device=dev) / 255.0
    p = torch.randn(b, 10 * m, h, w, generator=gen, device=dev)
    for c in range(3):
        base = m + 3 * m * c
        p[:, base:base + m] = torch.rand(b, m, h, w, generator=gen, device=dev) * 2 - 1
        p[:, base + m:base + 2 * m] = -4.0 * torch.rand(b, m, h, w, generator=gen, device=dev)
    return {"x": x, "params": leaf(p.to(dt), True)}


def _variant(name, get_fn, **kw):
    return Variant(name, lambda case, inputs: loss_step(get_fn(), inputs, NAMES, True), **kw)


def elements_moved(case):
    """Read params and x, write d params: ``2 * B*10M*HW + 3 B*HW``."""
    hw = case.dim
    return 2 * case.batch * 10 * case.latent * hw + 3 * case.batch * hw


_TORCH = _variant("fastvae-torch", lambda: fastvae_dmol_loss("torch"))

OPS = [Op(
    "dmol", make_inputs,
    {"eager": _variant("eager", lambda: eager_dmol_loss),
     "compile": _variant("compile", lambda: compiled(eager_dmol_loss)),
     "fastvae-torch": _TORCH,
     "fastvae-aten": aten_variant(_TORCH),   # float32 on aten ops, without the C kernel
     "fastvae-triton": _variant("fastvae-triton", lambda: fastvae_dmol_loss("triton"),
                                cuda_only=True)},
    elements_moved=elements_moved, label=label, needs=needs, fused_fp32=True,
    largest=lambda case: case.batch * 10 * case.latent * case.dim,
    grids={"quick": dict(batch=[8], dim=[1024], latent=[10]),
           "cpu": dict(batch=[64, 8], dim=[1024, 4096], latent=[10]),
           "cuda": dict(batch=[64], dim=[4096], latent=[10]),
           "suite_cpu": dict(batch=[64, 8], dim=[1024, 4096], latent=[10]),
           "suite_cuda": dict(batch=[64], dim=[4096], latent=[10])},
)]

"""What every fastvae model shares on the data side: the data shape, the observation
model (likelihood) with its learnable log-variance for "gaussian", the shape of the
decoder's output (the data's, or a discretized logistic mixture's parameters), and the
pictures of that output: its mean, and a draw for samples. A leaf module:
``fastvae.models`` and ``fastvae.hvae`` both build on it."""
from __future__ import annotations

import math

import torch
from torch import nn

from ._compiler import script_refusal
from ._dtypes import to_widest, widened
from .dispatch import check_generator
from .dmol_sampling import dmol_mean, dmol_sample
from .validation import (DMOL, DMOL_DEFAULT_BITS, LIKELIHOODS, check_count, check_number,
                         check_option, check_size, check_sizes, check_tensor, check_values,
                         dmol_slots, resolve_validate)

# NVAE's and PixelCNN++'s mixture size: what a DMoL decoder gets unless told.
DEFAULT_N_MIX = 10
# The models' DMoL data grid: the default ``bits`` (8-bit images, k / 255) of
# fastvae.elbo / iwae_bound, which the models call without it.
DMOL_BITS = DMOL_DEFAULT_BITS
# One chunk of ``sample``: about 16 MiB of float32 in the widest tensor a decoder pass
# holds (row_elements: the output, or a wider feature map), so the memory of n
# draws does not grow with n beyond the images; but never fewer than SAMPLE_CHUNK_MIN
# images, so a picture of up to 64 draws (samples.png) is one chunk, drawn from the
# seed's stream exactly as when every draw was decoded at once.
SAMPLE_CHUNK_ELEMENTS = 1 << 22
SAMPLE_CHUNK_MIN = 64
# One chunk of ``iwae_nll``'s samples: about 16 MiB of float32 in the widest per-sample
# tensor, small enough for any machine and large enough that K=1000 is a few chunks.
IWAE_CHUNK_ELEMENTS = 1 << 22


def chunk_lengths(n: int, size: int) -> list:
    """``n`` split into lengths of at most ``size``; ``[0]`` for ``n = 0``, so an empty
    draw still yields one (empty) chunk of the right shape."""
    return [min(size, n - start) for start in range(0, n, size)] or [0]


class RunningLogSumExp:
    """``logsumexp`` over dim 0 of every ``(n, B)`` block given to :meth:`add`, in float64
    (float32 on MPS, which has none: :func:`~fastvae._dtypes.widest`), holding only two
    ``(B,)`` tensors however many blocks come: the running max and ``sum exp(x - max)``,
    rescaled when the max rises. ``iwae_nll`` folds its K samples in chunk by chunk with
    it, so its memory does not grow with K. It shifts as ``torch.logsumexp`` does (by the
    max, 0 where that is not finite), so it equals that of the blocks concatenated to that
    dtype's rounding: rows all -inf give -inf, a +inf gives +inf and a NaN stays NaN."""

    def __init__(self):
        self.max = self.total = None

    @staticmethod
    def _shift(m):
        return torch.where(torch.isfinite(m), m, torch.zeros_like(m))

    def add(self, block: torch.Tensor) -> None:
        block = to_widest(block)
        m = block.amax(0)
        if self.max is not None:
            m = torch.maximum(self.max, m)  # NaN propagates, as in torch.logsumexp
        shift = self._shift(m)
        total = (block - shift).exp().sum(0)
        if self.total is not None:
            # a total of 0 (every earlier x -inf) stays 0: its factor can be inf when the
            # old shift was 0 and the new one is far below
            old = self.total * (self._shift(self.max) - shift).exp()
            total = total + torch.where(self.total == 0, torch.zeros_like(old), old)
        self.max, self.total = m, total

    def result(self) -> torch.Tensor:
        return self.total.log() + self._shift(self.max)


def check_chunk_size(chunk_size):
    """None (the caller's default), or ``chunk_size`` as an int >= 1: int() would truncate
    2.5 to 2 and read True as 1, and a size below 1 has no chunk to draw."""
    if chunk_size is None:
        return None
    return int(check_number("chunk_size", chunk_size, minimum=1, integer=True))


# B_2n / (2n)! for n = 1..11: the series of 1/(1 - exp(-l)) - 1/l - 1/2 in odd powers of l
CB_MEAN_SERIES = (0.08333333333333333, -0.001388888888888889, 3.306878306878307e-05,
                  -8.267195767195768e-07, 2.08767569878681e-08, -5.284190138687493e-10,
                  1.3382536530684679e-11, -3.3896802963225827e-13, 8.586062056277845e-15,
                  -2.174868698558062e-16, 5.5090028283602295e-18)
CB_MEAN_SERIES_BELOW = 1.0  # |l|


def cb_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean of the continuous Bernoulli with natural parameter ``logits``.

    ``E[x] = p/(2p-1) + 1/(2 artanh(1-2p))``, written in logits as
    ``1/(1-exp(-l)) - 1/l``. Its two terms of size ``1/l`` cancel near ``l = 0`` (an error
    of about ``eps / |l|``: 20 eps relative at |l| = 0.1, in float32 and float64 alike),
    so below ``|l| = 1`` the series ``1/2 + sum_n B_2n l^(2n-1) / (2n)!`` (radius 2 pi) is
    used, to l^21, whose next term is under 2e-19 there: both sides of the switch are
    within a few eps of the exact mean.
    """
    small = logits.abs() < CB_MEAN_SERIES_BELOW
    safe = torch.where(small, torch.ones_like(logits), logits)
    mean = -torch.expm1(-safe).reciprocal() - safe.reciprocal()
    l2 = logits * logits
    poly = torch.full_like(logits, CB_MEAN_SERIES[-1])
    for c in CB_MEAN_SERIES[-2::-1]:
        poly = poly * l2 + c
    return torch.where(small, 0.5 + logits * poly, mean)


class ObservationModel(nn.Module):
    """``data_shape``, ``likelihood`` and, for "gaussian", the learnable per-dimension
    ``obs_logvar`` (starting at 0, unit variance: the usual neutral choice).

    "discretized_logistic_mixture" (DMoL) needs ``(C, H, W)`` images with C = 1 or 3 on
    the 8-bit grid ``k / 255``; the decoder then outputs the ``n_mix``-component mixture's
    parameters, :attr:`out_shape` = ``(10*M, H, W)`` (RGB) or ``(3*M, H, W)`` (gray),
    in the layout of :func:`fastvae.discretized_logistic_mixture_log_prob`."""

    def __init__(self, data_shape, likelihood: str, n_mix=None):
        super().__init__()
        check_option("likelihood", likelihood, LIKELIHOODS)
        self.data_shape = check_sizes("data_shape", data_shape)
        self.likelihood = likelihood
        self.n_mix = None
        self.out_shape = self.data_shape
        if likelihood == DMOL:
            if len(self.data_shape) != 3 or self.data_shape[0] not in (1, 3):
                raise ValueError(f"likelihood {DMOL!r} needs (C, H, W) images with C = 1 or 3 "
                                 f"channels, got data shape {self.data_shape}")
            self.n_mix = check_size("n_mix", DEFAULT_N_MIX if n_mix is None else n_mix)
            c, h, w = self.data_shape
            self.out_shape = (dmol_slots(c) * self.n_mix, h, w)
        elif n_mix is not None:
            raise ValueError(f"n_mix is the number of mixture components of likelihood "
                             f"{DMOL!r}, not of {likelihood!r}")
        if likelihood == "gaussian":
            self.obs_logvar = nn.Parameter(torch.zeros(self.data_shape))
        else:
            self.register_parameter("obs_logvar", None)

    def _obs(self):
        return self.obs_logvar if self.obs_logvar is not None else 0.0

    def __prepare_scriptable__(self):
        # torch.jit.script asks this of a module and of each submodule before compiling
        raise script_refusal(type(self).__name__)

    def extra_repr(self) -> str:
        """The settings the layers do not show (a Bernoulli and a Gaussian decoder print
        the same layers), with the model's latent size where it has one."""
        latent = getattr(self, "latent_dim", None)
        return ", ".join([f"data_shape={self.data_shape}", f"likelihood={self.likelihood!r}"]
                         + ([f"n_mix={self.n_mix}"] if self.n_mix is not None else [])
                         + ([f"latent_dim={latent}"] if latent is not None else []))

    def check_images(self, x) -> torch.Tensor:
        """x itself, a floating-point ``(B, *data_shape)`` tensor; else the error that says
        so (the layers would fail later, or run on another size and leave the blame to
        the loss's shape check)."""
        check_tensor("x", x)
        if x.dim() == 0 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"x must be (B, *data_shape) = (B, "
                             f"{', '.join(map(str, self.data_shape))}) for this model, got "
                             f"shape {tuple(x.shape)}")
        self.check_like_parameters("x", x)
        # with validation on (fastvae.set_validation), x's values too: a NaN in x is named
        # here, not as the posterior the encoder makes of it (mu_q has ... non-finite)
        check_values(resolve_validate(None), x=x)
        return x

    def check_like_parameters(self, name: str, t: torch.Tensor) -> None:
        """``t`` on the parameters' device and in their dtype, else the error that names
        ``name`` (the first layer's would name neither it nor the model)."""
        p = next(self.parameters(), None)
        if p is not None and t.device != p.device:
            raise ValueError(f"{name} is on {t.device}, the model on {p.device}: move one to "
                             f"the other ({name}.to(device) or model.to(device))")
        # under autocast the layers cast t and the weights themselves, but never a
        # float64 one (autocast leaves float64 alone), so that mismatch stays an error here
        if (p is not None and t.dtype != p.dtype
                and (not torch.is_autocast_enabled(t.device.type)
                     or torch.float64 in (t.dtype, p.dtype))):
            raise TypeError(f"{name} is {t.dtype}, the model's parameters {p.dtype}: pass "
                            f"{name}.to({p.dtype}) or convert the model (model.to({t.dtype}))")

    def mean(self, recon: torch.Tensor) -> torch.Tensor:
        """Decoder output -> the observation model's mean (an image)."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(recon)
        if self.likelihood == "continuous_bernoulli":
            # 16-bit logits in float32 (the closed form cancels near 0), float64 kept
            return cb_mean(widened(recon)).to(recon.dtype)
        if self.likelihood == DMOL:
            return dmol_mean(recon, self.data_shape[0])
        return recon

    def row_elements(self) -> int:
        """Elements of the widest tensor a decoder pass holds per image, by which the
        chunks of :meth:`sample` and :meth:`iwae_nll` are sized. The decoder output here,
        which the MLP keeps (its hidden vectors are of the output's order); the conv and
        hierarchical models, whose feature maps can be many times wider, count those."""
        return max(1, math.prod(self.out_shape))

    def sample_chunk_size(self, chunk_size=None) -> int:
        """Images per chunk of :meth:`sample_chunks`: ``chunk_size``, else
        :data:`SAMPLE_CHUNK_ELEMENTS` of :meth:`row_elements`, at least
        :data:`SAMPLE_CHUNK_MIN`."""
        size = check_chunk_size(chunk_size)
        if size is None:
            return max(SAMPLE_CHUNK_MIN, SAMPLE_CHUNK_ELEMENTS // self.row_elements())
        return size

    @staticmethod
    def check_k(k) -> int:
        """An importance-sample count ``k`` (an int >= 1), checked as :meth:`sample` checks
        its ``n``: int() would run k=2.7 with K=2 and k=True with K=1, an estimate of
        another K under the asked one's name."""
        return check_count("k", k)   # chunked: the time grows with k, not the memory

    def iwae_sizes(self, k, chunk_size, batch: int):
        """``iwae_nll``'s ``k`` (:meth:`check_k`) and samples per chunk: ``chunk_size``
        (:func:`check_chunk_size`), else as many as keep a chunk's widest tensor within
        :data:`IWAE_CHUNK_ELEMENTS`; at most ``k``."""
        k = self.check_k(k)
        size = check_chunk_size(chunk_size)
        if size is None:
            size = max(1, IWAE_CHUNK_ELEMENTS // (max(1, batch) * self.row_elements()))
        return k, min(size, k)

    def sample_chunks(self, n: int, generator=None, chunk_size=None):
        """The ``n`` images of :meth:`sample` as an iterator of ``(b, *data_shape)`` chunks
        of at most :meth:`sample_chunk_size` images, each decoded when it is asked for
        (keep only what you need: ``fastvae sample`` moves each to the CPU)."""
        n = check_count("n", n, minimum=0)  # expand(-1) would keep 1
        # here for every model: an mlp or conv model's first draw is torch.randn, whose
        # error for a bad generator is a list of signatures naming no argument
        check_generator(generator, next(self.parameters()).device)
        return self._sample_chunks(n, generator, self.sample_chunk_size(chunk_size))

    @torch.no_grad()
    def sample(self, n: int, generator=None, chunk_size=None) -> torch.Tensor:
        """``n`` images ``(n, *data_shape)`` from the model's prior (the mean of each
        decoder output, or a draw from a DMoL decoder: :meth:`draw`), decoded in chunks
        of :meth:`sample_chunk_size`. Up to the first chunk's size the draws are those of
        one batch; past it a DMoL decoder's pixel draws, and an hvae's latents, follow
        chunk by chunk in the generator's stream. What a seed fixes is the draw of one
        ``n``, on any backend: a smaller n's images are not always the first ones of a
        larger n's, for any model (an mlp or conv model's latents come from one torch.randn
        of all n, an hvae's group by group: their ``_sample_chunks`` say when they agree)."""
        return torch.cat(list(self.sample_chunks(n, generator, chunk_size)))

    def _sample_chunks(self, n: int, generator, size: int):
        raise NotImplementedError

    def draw(self, recon: torch.Tensor, generator=None) -> torch.Tensor:
        """Decoder output -> the picture of a sample: for DMoL an image drawn from the
        mixture (Gumbel-max over components, logistic inversion channel by channel, on
        the 8-bit grid: :func:`fastvae.dmol_sampling.dmol_sample`); for the other
        likelihoods the mean (their per-pixel noise shows nothing of the model)."""
        if self.likelihood == DMOL:
            return dmol_sample(recon, self.data_shape[0], DMOL_BITS, generator=generator)
        return self.mean(recon)

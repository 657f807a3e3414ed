"""A hierarchical VAE (top-down inference, Ladder VAE / VDVAE style) built on
:func:`fastvae.sample_with_kl`.

Architecture, for ``(C, H, W)`` images and ``channels = (c_1, ..., c_S)``:

* bottom-up (deterministic): a 3x3 stem, then per stage ``s`` a stride-2 convolution to
  ``c_s`` channels at ``ceil(H / 2^s)`` and a residual block; the stage's output ``f_s``
  is what the posterior sees at that resolution.
* top-down (generative and inference at once): a learned state ``h`` at the coarsest
  resolution; per stage, from coarse to fine, ``groups`` stochastic groups, then an
  upsampling (nearest, and a 1x1 convolution to the next stage's width); finally an
  upsampling to ``H x W``, a residual block and a 3x3 convolution to the decoder output
  (logits, or the mean for "gaussian").
* one group ``i``: prior ``p(z_i | z_>i) = N(mu_p, exp(logvar_p))`` from ``h``, posterior
  ``q(z_i | x, z_>i) = N(mu_q, exp(logvar_q))`` from ``h`` and ``f_s``, both
  ``latent_channels`` maps at the stage's resolution; ``z_i, KL_i =
  sample_with_kl(mu_q, logvar_q, mu_p, logvar_p)`` (one fused op: in a training step the
  sampling and the KL of a group cost one launch forward and one backward on a GPU);
  ``h <- res(h + conv1x1(z_i))``.

**Initialization for depth** (VDVAE, Child 2021): both heads of every group start at zero,
so each group starts with ``q = p = N(0, I)`` and a KL of exactly 0; the residual branch of
each top-down block and its ``conv1x1(z_i)`` start with weights scaled by
``1 / sqrt(groups in all)`` and zero biases, so ``h`` keeps its scale however many groups
are stacked (default biases alone would add up over the blocks like a random walk). With
PyTorch's default initialization instead, 40 groups started at a KL of ~3e8 nats (``h``
grew with every block until the soft clamp below saturated, ``exp(logvar_q - logvar_p)``
near ``e^20``) and five epochs later were still at a test ELBO of -174 on digits, against
-28 now.

ELBO per sample: ``log p(x | z) - sum_i KL_i``; each ``KL_i`` is the analytic KL of the
group given the sampled ``z_>i`` (so its expectation is the hierarchical KL term).

**Bounded parameterization.** Every mean and log-standard-deviation the network emits
goes through NVAE's soft clamp ``5 * tanh(x / 5)`` (Vahdat & Kautz 2020): means in
[-5, 5], log-variances in [-10, 10]. Why: the log-variance enters ``exp`` in the
sample, the KL and its gradients; unbounded, one large step sends it to where ``exp``
overflows (or the KL's ``exp(-logvar_p)`` does), the loss turns NaN, and the run is
lost - the most reported VAE failure (pythae, NVAE and AntixK/PyTorch-VAE issues). A
hard ``clamp`` would stop the gradient at the bound; ``tanh`` is the identity near 0
and its gradient fades smoothly (only where ``tanh`` rounds to exactly +-1, past a raw
value of about 45 in float32 or about 20 in 16-bit, is it the bound with a gradient of
0). ``exp(10)`` is far inside float16's range, so the bound also holds under mixed
precision; the KL's gradients, up to 2e8 inside it, are kept in float32
for float16 posteriors by the fused ops, as all their saved gradients of float16 inputs
(``fastvae._dtypes.saved_grad_dtype``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .functional import elbo as _elbo
from .functional import gaussian_log_prob, reparameterize, sample_with_kl
from .observation import ObservationModel, RunningLogSumExp, chunk_lengths
from ._dtypes import reduce_scale, result_dtype, to_widest
from .validation import REDUCTIONS, check_number, check_option, check_size, check_widths

BOUND = 5.0  # the soft clamp of means and log-standard-deviations


def soft_clamp(x: torch.Tensor, bound: float = BOUND) -> torch.Tensor:
    """``bound * tanh(x / bound)``: the identity near 0, smoothly bounded in (-bound, bound)."""
    return bound * torch.tanh(x / bound)


def gaussian_params(raw: torch.Tensor):
    """A ``2k``-channel map -> (mean, log-variance) of ``k`` channels, bounded."""
    mu, log_sigma = raw.chunk(2, dim=1)
    return soft_clamp(mu), 2.0 * soft_clamp(log_sigma)


class _Res(nn.Module):
    """``x + conv(act(conv(act(x))))`` at one width and resolution."""

    def __init__(self, width: int):
        super().__init__()
        self.a = nn.Conv2d(width, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return x + self.b(F.silu(self.a(F.silu(x))))


class _Group(nn.Module):
    """One stochastic group: its prior from ``h``, its posterior from ``h`` and the
    bottom-up features, and the update of ``h`` by the sampled ``z``."""

    def __init__(self, width: int, z_channels: int):
        super().__init__()
        self.prior = nn.Conv2d(width, 2 * z_channels, 3, padding=1)
        self.posterior = nn.Conv2d(2 * width, 2 * z_channels, 3, padding=1)
        self.z_in = nn.Conv2d(z_channels, width, 1)
        self.res = _Res(width)

    def prior_params(self, h):
        return gaussian_params(self.prior(F.silu(h)))

    def posterior_params(self, h, f):
        return gaussian_params(self.posterior(F.silu(torch.cat([h, f], 1))))

    def update(self, h, z):
        return self.res(h + self.z_in(z))


class HierarchicalVAE(ObservationModel):
    """Top-down hierarchical VAE for ``(C, H, W)`` images (see the module docstring).

    Args:
        data_shape: ``(C, H, W)``.
        latent_channels: channels of every group's latent map.
        (Every size here, each of ``channels`` included, is an int >= 1: a bad one is a
        ``ValueError`` (a ``TypeError`` for a non-int) that names it.)
        channels: width of each stage, fine to coarse; one resolution per stage
            (``channels[i]`` at ``ceil(H / 2^(i+1))``: the first stage already halves); an
            int is one stage (as ``--channels 32`` is, and as the other models' widths take it).
        groups: stochastic groups per stage (the default 2 stages x 2 groups: 4 groups
            at two resolutions).
        likelihood, n_mix: as in :class:`fastvae.models.VAE` (a DMoL decoder's last
            convolution gives the mixture's parameters).

    ``forward(x)`` -> ``(recon, kl)`` with ``kl`` of shape ``(groups total, B)``, top
    group first; :meth:`sample`, :meth:`reconstruct` and :meth:`iwae_nll` as for the
    other models; :meth:`elbo` too, but with no ``kl`` or ``free_bits`` argument (each
    group's KL is analytic, from ``sample_with_kl``).
    """

    hierarchical = True

    def __init__(self, data_shape=(1, 8, 8), latent_channels=8, channels=(32, 64), groups=2,
                 likelihood="bernoulli", n_mix=None):
        super().__init__(data_shape, likelihood, n_mix)
        if len(self.data_shape) != 3:
            raise ValueError(f"HierarchicalVAE needs (C, H, W) data, got {self.data_shape}")
        c, h, w = self.data_shape
        self.channels = check_widths("channels", channels)  # an int: one stage, as --channels 8
        self.groups_per_stage = check_size("groups", groups)
        self.latent_channels = check_size("latent_channels", latent_channels)
        sizes = [(h, w)]
        for _ in self.channels:
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        self.sizes = sizes
        self.stem = nn.Conv2d(c, self.channels[0], 3, padding=1)
        downs, ups, stages = [], [], []
        width = self.channels[0]
        for ch in self.channels:
            downs.append(nn.Sequential(nn.Conv2d(width, ch, 3, stride=2, padding=1), _Res(ch)))
            width = ch
        for s in reversed(range(len(self.channels))):  # top-down: coarse to fine
            stages.append(nn.ModuleList(_Group(self.channels[s], self.latent_channels)
                                        for _ in range(self.groups_per_stage)))
            ups.append(nn.Conv2d(self.channels[s], self.channels[max(s - 1, 0)], 1))
        self.down, self.stages, self.up = nn.ModuleList(downs), nn.ModuleList(stages), \
            nn.ModuleList(ups)
        self.h_top = nn.Parameter(torch.zeros(1, self.channels[-1], *sizes[-1]))
        self.out = nn.Sequential(_Res(self.channels[0]), nn.SiLU(),
                                 nn.Conv2d(self.channels[0], self.out_shape[0], 3, padding=1))
        # latent dims per sample, top group first
        self.group_dims = [self.latent_channels * sizes[s + 1][0] * sizes[s + 1][1]
                           for s in reversed(range(len(self.channels)))
                           for _ in range(self.groups_per_stage)]
        self.latent_dim = sum(self.group_dims)
        self._init_for_depth()

    def _init_for_depth(self):
        """Zero heads and depth-scaled residual branches (module docstring)."""
        scale = self.num_groups ** -0.5
        with torch.no_grad():
            for groups in self.stages:
                for group in groups:
                    for layer in (group.res.b, group.z_in):
                        layer.weight.mul_(scale)
                        layer.bias.zero_()
                    for head in (group.prior, group.posterior):
                        head.weight.zero_()
                        head.bias.zero_()

    def row_elements(self) -> int:
        """The widest top-down tensor per image: ``h`` at each stage's resolution, before
        and after its 1x1 up-projection (the last one at full resolution), or the output."""
        area = [h * w for h, w in self.sizes]
        stages = range(len(self.channels))
        return max([math.prod(self.out_shape), self.latent_dim]
                   + [self.channels[s] * area[s + 1] for s in stages]
                   + [self.channels[max(s - 1, 0)] * area[s] for s in stages])

    @property
    def num_groups(self) -> int:
        return len(self.group_dims)

    # -- the two passes ---------------------------------------------------------------
    def _bottom_up(self, x):
        """The posterior's features per stage, coarsest first (the top-down order)."""
        f = self.stem(self.check_images(x))
        feats = []
        for down in self.down:
            f = down(f)
            feats.append(f)
        return feats[::-1]

    def _top_down(self, batch, feats, draw):
        """Run the top-down path; ``draw(q, p)`` returns ``(z, stat)`` for one group from
        its posterior ``q`` (``(mu, logvar)``, None without features) and prior ``p``.
        Returns the decoder output and the list of stats, top group first."""
        h = self.h_top.expand(batch, -1, -1, -1)
        stats = []
        for s, groups in enumerate(self.stages):
            for group in groups:
                p = group.prior_params(h)
                q = None if feats is None else group.posterior_params(h, feats[s])
                z, stat = draw(q, p)
                stats.append(stat)
                h = group.update(h, z.to(h.dtype))
            size = self.sizes[len(self.stages) - s - 1]  # the next finer resolution
            h = self.up[s](F.interpolate(h, size=size, mode="nearest"))
        return self.out(h), stats

    # -- public API ---------------------------------------------------------------------
    def forward(self, x, generator=None, backend=None):
        """``x (B, C, H, W)`` -> ``(recon, kl)``: the decoder output of one posterior draw
        and each group's KL ``(groups, B)``, top group first (:func:`sample_with_kl`)."""
        def draw(q, p):
            return sample_with_kl(*q, *p, generator=generator, backend=backend)
        feats = self._bottom_up(x)
        recon, kls = self._top_down(x.shape[0], feats, draw)
        return recon, torch.stack(kls)

    def log_px(self, x, recon, backend=None):
        """``log p(x | z)`` per sample, ``(B,)``: :func:`fastvae.elbo` with no latents."""
        none = x.new_zeros(x.shape[0], 0)
        return _elbo(x, recon, none, none, likelihood=self.likelihood, obs_logvar=self._obs(),
                     reduction="none", backend=backend)

    def elbo(self, x, beta=1.0, reduction="mean", generator=None, backend=None):
        """``log p(x|z) - beta * sum_i KL_i`` of one posterior draw, reduced like
        :func:`fastvae.elbo` ("mean", "sum" or "none"; the mean of no samples is 0)."""
        check_option("reduction", reduction, REDUCTIONS)
        beta = check_number("beta", beta, minimum=0.0)
        recon, kl = self(x, generator=generator, backend=backend)
        per_sample = self.log_px(x, recon, backend) - beta * kl.sum(0)
        if reduction == "none":
            return per_sample
        return per_sample.sum() * reduce_scale(per_sample.shape[0], reduction)

    @torch.no_grad()
    def _sample_chunks(self, n: int, generator, size: int):
        """From the learned prior: ``z_i ~ p(z_i | z_>i)`` top-down, chunk by chunk, each
        group's latents of the whole chunk drawn before the next group's. A seed fixes the
        draw of one ``n`` (at one chunk size), as for the other models, not a prefix:
        ``sample(3)`` need not be ``sample(5)[:3]``. Where eps is the float32 Philox
        stream (the C kernel, Triton) it is indexed by element, so in the first chunk the
        two agree to the rounding of convolutions of another batch size; with
        ``torch.randn``'s eps (float64, ``FASTVAE_NATIVE=0``) each group's draw of all n
        shifts the next group's, and a DMoL decoder's pixel draws do likewise."""
        def draw(q, p):
            mu, logvar = p
            # "auto", not FASTVAE_BACKEND: a seed gives the same images whatever it says
            # (its torch and triton choices draw one Philox stream)
            z = reparameterize(mu.flatten(1), logvar.flatten(1), generator=generator,
                               backend="auto")
            return z.reshape(mu.shape), None
        for b in chunk_lengths(n, size):
            yield self.draw(self._top_down(b, None, draw)[0], generator=generator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean with every group at its posterior mean (deterministic)."""
        feats = self._bottom_up(x)
        return self.mean(self._top_down(x.shape[0], feats, lambda q, p: (q[0], None))[0])

    @torch.no_grad()
    def iwae_nll(self, x: torch.Tensor, k: int = 1000, chunk_size=None, generator=None,
                 backend=None) -> torch.Tensor:
        """Per-sample importance-sampled NLL estimate ``-L_K`` (nats), ``(B,)``, from the
        per-group log-densities: ``log w_k = log p(x|z_k) + sum_i (log p(z_i | z_>i) -
        log q(z_i | x, z_>i))`` (each by :func:`fastvae.gaussian_log_prob`), ``L_K =
        logsumexp_k log w_k - log K``. The bottom-up pass runs once; the K top-down
        passes ``chunk_size`` at a time (default: as many as keep the widest top-down
        activation of a chunk within ~16 MiB of float32, :meth:`row_elements`), each
        chunk's log-weights folded into :class:`RunningLogSumExp` (the memory does not
        grow with K). Float64 for a float64 model, float32 otherwise."""
        feats = self._bottom_up(x)
        k, chunk_size = self.iwae_sizes(k, chunk_size, x.shape[0])
        batch = x.shape[0]

        def draw(q, p):   # the z sample_with_kl draws (its seed contract), without its KL
            mu, lv, pm, plv = (t.flatten(1) for t in (*q, *p))
            z = reparameterize(mu, lv, generator=generator, backend=backend)
            log_q = gaussian_log_prob(z, mu, lv, backend=backend)
            log_p = gaussian_log_prob(z, pm, plv, backend=backend)
            return z.view_as(q[0]), log_p - log_q

        lse, done = RunningLogSumExp(), 0
        while done < k:
            kc = min(chunk_size, k - done)
            rep = [f.repeat(kc, 1, 1, 1) for f in feats]  # sample-major: row j*B + b
            xs = x.repeat(kc, *([1] * (x.dim() - 1)))
            recon, stats = self._top_down(kc * batch, rep, draw)
            log_w = (to_widest(self.log_px(xs, recon, backend))
                     + to_widest(torch.stack(stats).sum(0)))
            lse.add(log_w.reshape(kc, batch))
            done += kc
        return -(lse.result() - math.log(k)).to(result_dtype(feats[0]))

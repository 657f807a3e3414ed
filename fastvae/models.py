"""Standard PyTorch VAEs built on the fastvae ops.

``HierarchicalVAE`` (top-down, several latent groups with learned priors) lives in
``fastvae.hvae`` and is exported here too.

``VAE`` (MLP) and ``ConvVAE`` (convolutional, any ``(C, H, W)``) share one API:

* ``forward(x)`` -> ``(recon, mu, logvar, z)``; recon has x's shape (logits for the
  Bernoulli-type likelihoods, the mean for "gaussian"), or for
  ``likelihood="discretized_logistic_mixture"`` the mixture's parameters
  ``(B, 10*M, H, W)`` (RGB) / ``(B, 3*M, H, W)`` (gray), ``M = n_mix``.
* ``elbo(x, ...)`` -> :func:`fastvae.elbo` of a forward pass (maximize it).
* ``iwae_bound(x, k, estimator=...)`` -> :func:`fastvae.iwae_bound` of ``k`` samples,
  averaged over the batch by default (``reduction="mean"``, as a loss; the function's
  default is ``"none"``).
* ``sample(n)`` -> ``n`` images from the prior, as the decoder's mean (DMoL: an image
  drawn from the decoder's mixture).
* ``reconstruct(x)`` -> the decoder's mean at ``z = mu`` (no noise; DMoL: the mixture mean).
* ``iwae_nll(x, k)`` -> per-sample ``-L_K`` (Burda et al. 2016), batched over K.

``eval()`` changes nothing in these models (they have no dropout or batch norm):
``forward``, ``elbo``, ``iwae_bound``, ``iwae_nll`` and ``sample`` draw noise in either
mode (the same ``generator=`` seed repeats a draw); ``reconstruct`` is the deterministic
one.

Every size a model is built from (``data_shape``, ``latent_dim``, widths, counts) is an
int >= 1, checked before any layer is made: a bad one is an error that names it.

Their losses use the public ops only (``fastvae.reparameterize``, ``elbo``, ``iwae_bound``;
the hierarchical VAE's ``sample_with_kl`` and ``gaussian_log_prob``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._dtypes import result_dtype, to_widest
from .dmol_sampling import dmol_mean, dmol_sample  # noqa: F401  (pictures of DMoL decoders)
from .functional import elbo as _elbo
from .functional import iwae_bound, reparameterize
from .hvae import HierarchicalVAE
from .observation import ObservationModel, RunningLogSumExp, chunk_lengths
from .observation import cb_mean as _cb_mean  # noqa: F401 (its old home; tests use it)
from .validation import check_size, check_tensor, check_widths

__all__ = ["VAE", "ConvVAE", "HierarchicalVAE", "build_model"]


class _VAEBase(ObservationModel):
    """Shared logic; subclasses define ``_encode(x) -> (mu, logvar)`` of checked images and
    ``_decode(z)`` of checked latents ``(B, L)``."""

    def __init__(self, data_shape, latent_dim: int, likelihood: str, n_mix=None):
        super().__init__(data_shape, likelihood, n_mix)
        self.latent_dim = check_size("latent_dim", latent_dim)

    # -- pieces ---------------------------------------------------------------
    def check_latents(self, z, lead: str = "B") -> torch.Tensor:
        """z itself, a floating-point ``(*lead, L)`` tensor on the model's device and in
        its dtype; else the error that names z (a layer's would say "mat1 and mat2 shapes
        cannot be multiplied")."""
        check_tensor("z", z)
        if (z.dim() < 1 or z.shape[-1] != self.latent_dim
                or (lead == "B" and z.dim() != 2)):
            raise ValueError(f"z must be ({lead}, latent_dim) = ({lead}, {self.latent_dim}) "
                             f"for this model, got shape {tuple(z.shape)}")
        self.check_like_parameters("z", z)
        return z

    def decode_any(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``(..., L)`` latents to ``(..., *out_shape)``."""
        lead = self.check_latents(z, lead="...").shape[:-1]
        out = self._decode(z.reshape(-1, self.latent_dim))   # its rows are checked with z
        return out.reshape(*lead, *self.out_shape)

    # -- public API -----------------------------------------------------------
    def encode(self, x):
        """``(B, *data_shape)`` -> ``mu, logvar`` each ``(B, L)``; any other shape (a
        flattened batch included), dtype or device of x is refused (:meth:`check_images`)."""
        return self._encode(self.check_images(x))

    def decode(self, z):
        """``(B, L)`` -> ``(B, *out_shape)`` decoder output; any other z is refused
        (:meth:`check_latents`)."""
        return self._decode(self.check_latents(z))

    def forward(self, x: torch.Tensor, generator=None, backend=None, n_samples=None):
        """``x (B, *data_shape)`` -> ``(recon, mu, logvar, z)``, one posterior sample; with
        ``n_samples=K``, K of them: ``recon (K, B, *data_shape)``, ``z (K, B, L)``."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, n_samples=n_samples, generator=generator, backend=backend)
        return (self.decode(z) if n_samples is None else self.decode_any(z)), mu, logvar, z

    def elbo(self, x, beta=1.0, kl="analytic", reduction="mean", free_bits=0.0,
             generator=None, backend=None):
        """The ELBO of ``x`` under one posterior sample (see :func:`fastvae.elbo`)."""
        recon, mu, logvar, z = self(x, generator=generator, backend=backend)
        return _elbo(x, recon, mu, logvar, likelihood=self.likelihood, kl=kl,
                     z=z if kl == "mc" else None, beta=beta, free_bits=free_bits,
                     obs_logvar=self._obs(), reduction=reduction, backend=backend)

    def iwae_bound(self, x, k: int, estimator="standard", reduction="mean", generator=None,
                   backend=None):
        """The importance-weighted bound of ``x`` from ``k`` posterior samples, with the
        gradient ``estimator`` (see :func:`fastvae.iwae_bound`), reduced over the batch
        as ``reduction`` says (default "mean", a scalar; "none" for ``(B,)``, the
        function's default). "dreg" needs z_k to reach the decoder as a tensor of its
        own: compile ``encode`` and ``decode``, not the whole module (``fastvae train
        --compile`` does that)."""
        k = self.check_k(k)   # named k here, not forward's n_samples
        recon_k, mu, logvar, z_k = self(x, generator=generator, backend=backend, n_samples=k)
        return iwae_bound(x, recon_k, mu, logvar, z_k, likelihood=self.likelihood,
                          obs_logvar=self._obs(), reduction=reduction, backend=backend,
                          estimator=estimator)

    @torch.no_grad()
    def _sample_chunks(self, n: int, generator, size: int):
        """Decoded from ``z ~ N(0, I)``. Every z is drawn first, as when sample decoded
        all at once (n x L values, small beside the images): for one n, a seed gives the
        same latents whatever the chunk size. Not across n: ``sample(3)`` need not be
        ``sample(5)[:3]``: the CPU's torch.randn draws 16 values at a time, fewer than 16
        and a request's last partial 16 by another method (a DMoL decoder's pixel draws,
        of all n, are no prefix either)."""
        p = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)
        for zc in z.split(chunk_lengths(n, size)):
            yield self.draw(self.decode(zc), generator=generator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at the posterior mean ``z = mu`` (deterministic)."""
        mu, _ = self.encode(x)
        return self.mean(self.decode(mu))

    @torch.no_grad()
    def iwae_nll(self, x: torch.Tensor, k: int = 1000, chunk_size=None, generator=None,
                 backend=None) -> torch.Tensor:
        """Per-sample importance-sampled NLL estimate ``-L_K`` (nats), shape ``(B,)``.

        The K samples are drawn ``chunk_size`` at a time (default: as many as keep the
        widest decoder tensor, :meth:`row_elements`, within ~16 MiB of float32) so K=1000
        fits in memory. Each chunk's
        :func:`fastvae.iwae_bound` is ``logsumexp(log w) - log k_c``, so the chunk's
        logsumexp is ``bound + log k_c``; the chunks combine as
        ``L_K = logsumexp_c(lse_c) - log K``, folded in as they come
        (:class:`RunningLogSumExp`: the memory does not grow with K). Float64 for a
        float64 model, float32 otherwise (a bfloat16 one's NLL would keep only ~3
        significant digits).
        """
        mu, logvar = self.encode(x)
        k, chunk_size = self.iwae_sizes(k, chunk_size, x.shape[0])
        lse = RunningLogSumExp()
        done = 0
        while done < k:
            kc = min(chunk_size, k - done)
            z_k = reparameterize(mu, logvar, n_samples=kc, generator=generator, backend=backend)
            recon_k = self.decode_any(z_k)
            bound = iwae_bound(x, recon_k, mu, logvar, z_k, likelihood=self.likelihood,
                               obs_logvar=self._obs(), reduction="none", backend=backend)
            lse.add(to_widest(bound)[None] + math.log(kc))
            done += kc
        total = lse.result() - math.log(k)
        return -total.to(result_dtype(mu))


class VAE(_VAEBase):
    """MLP VAE: ``D -> hidden... -> (mu, logvar)``; ``L -> ...hidden -> D``.

    Args:
        data_shape: one sample's shape, e.g. ``(1, 8, 8)`` or ``(784,)``.
        latent_dim: L.
        hidden: hidden layer widths (encoder; the decoder mirrors them): a sequence of
            ints (a numpy array too), or one int for one layer.
        likelihood: "bernoulli" (decoder gives logits), "continuous_bernoulli"
            (logits), "gaussian" (mean, with a learnable per-dimension
            ``obs_logvar``) or "discretized_logistic_mixture" (``(C, H, W)`` images,
            C = 1 or 3, on the 8-bit grid; the last layer gives the mixture's
            parameters).
        n_mix: mixture components of "discretized_logistic_mixture" (default 10).
    """

    def __init__(self, data_shape=(1, 8, 8), latent_dim=8, hidden=(256,), likelihood="bernoulli",
                 n_mix=None):
        super().__init__(data_shape, latent_dim, likelihood, n_mix)
        # no hidden layer: a linear encoder and decoder
        hidden = check_widths("hidden", hidden, allow_empty=True)
        d = math.prod(self.data_shape)
        self.hidden = tuple(hidden)
        enc, width = [], d
        for h in hidden:
            enc += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.encoder = nn.Sequential(*enc)
        self.to_stats = nn.Linear(width, 2 * self.latent_dim)
        dec, width = [], self.latent_dim
        for h in reversed(hidden):
            dec += [nn.Linear(width, h), nn.ReLU()]
            width = h
        dec.append(nn.Linear(width, math.prod(self.out_shape)))
        self.decoder = nn.Sequential(*dec)

    def _encode(self, x):
        stats = self.to_stats(self.encoder(x.flatten(1)))
        mu, logvar = stats.chunk(2, dim=-1)
        return mu, logvar

    def _decode(self, z):
        return self.decoder(z).reshape(z.shape[0], *self.out_shape)


class ConvVAE(_VAEBase):
    """Convolutional VAE for ``(C, H, W)`` images of any size.

    Each encoder stage is a stride-2 3x3 convolution (``H -> ceil(H/2)``); the
    decoder mirrors it with transposed convolutions whose ``output_padding`` is
    chosen per stage so the output is exactly ``H x W`` again (8x8, 28x28, odd sizes).

    Args:
        data_shape: ``(C, H, W)``.
        latent_dim: L.
        channels: channels of each encoder stage: a sequence, or an int for one stage
            (as ``--channels 32`` is; the spellings of :class:`VAE`'s ``hidden``).
        hidden: width of the fully connected layer between convolutions and latents:
            an int, or a one-element sequence as :class:`VAE` takes it.
        likelihood, n_mix: as in :class:`VAE`; a DMoL decoder's last transposed
            convolution gives the mixture's ``10*M`` (RGB) or ``3*M`` (gray) channels.
    """

    def __init__(self, data_shape=(1, 8, 8), latent_dim=8, channels=(32, 64), hidden=256,
                 likelihood="bernoulli", n_mix=None):
        super().__init__(data_shape, latent_dim, likelihood, n_mix)
        if len(self.data_shape) != 3:
            raise ValueError(f"ConvVAE needs (C, H, W) data, got shape {self.data_shape}")
        widths = check_widths("hidden", hidden, allow_empty=True)  # the MLP's spellings
        if len(widths) != 1:  # the rest would be dropped without a word
            raise ValueError(f"hidden: the conv model has one fully connected layer, so one "
                             f"width; got {list(widths)}")
        hidden = widths[0]
        channels = check_widths("channels", channels)  # hidden's spellings: an int, one stage
        c, h, w = self.data_shape
        sizes = [(h, w)]
        for _ in channels:
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        self.channels, self.hidden, self._sizes = tuple(channels), hidden, sizes
        enc, cin = [], c
        for cout in channels:
            enc += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU()]
            cin = cout
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        flat = cin * sizes[-1][0] * sizes[-1][1]
        self.enc_fc = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
        self.to_stats = nn.Linear(hidden, 2 * self.latent_dim)
        self.dec_fc = nn.Sequential(nn.Linear(self.latent_dim, hidden), nn.ReLU(),
                                    nn.Linear(hidden, flat), nn.ReLU())
        dec = []
        outs = list(reversed(channels[:-1])) + [self.out_shape[0]]
        for i, cout in enumerate(outs):
            (hi, wi), (ho, wo) = sizes[-1 - i], sizes[-2 - i]
            # ConvTranspose2d(k=3, s=2, p=1) gives 2*n - 1 + output_padding.
            pad = (ho - (2 * hi - 1), wo - (2 * wi - 1))
            dec.append(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=pad))
            if i < len(outs) - 1:
                dec.append(nn.ReLU())
            cin = cout
        self.decoder = nn.Sequential(*dec)

    def _encode(self, x):
        stats = self.to_stats(self.enc_fc(self.encoder(x)))
        mu, logvar = stats.chunk(2, dim=-1)
        return mu, logvar

    def row_elements(self) -> int:
        """The widest decoder tensor per image: the fully connected layers' or a transposed
        convolution's output (a wide first stage at half resolution is many times a
        one-channel image's size)."""
        outs = list(reversed(self.channels[:-1])) + [self.out_shape[0]]
        maps = [c * h * w for c, (h, w) in zip(outs, reversed(self._sizes[:-1]))]
        flat = self.channels[-1] * self._sizes[-1][0] * self._sizes[-1][1]
        return max([self.hidden, flat] + maps)

    def _decode(self, z):
        h, w = self._sizes[-1]
        t = self.dec_fc(z).reshape(z.shape[0], self.channels[-1], h, w)
        return self.decoder(t)


MODELS = ("mlp", "conv", "hvae")  # build_model's kinds, the CLI's --model choices


def build_model(config: dict) -> ObservationModel:
    """A model from a plain config dict (``model``, ``data_shape``, ``latent``,
    ``hidden``, ``likelihood``, optional ``channels``, ``n_mix`` (DMoL) and, for "hvae",
    ``groups``), as stored in checkpoints. Every value is checked under its key's name
    before any layer is made (the constructors' own names, such as ``latent_dim``, are not
    the keys of a checkpoint's config); a missing ``data_shape`` or ``latent`` is a
    ValueError."""
    for key in ("data_shape", "latent"):   # the two sizes with no default
        if key not in config:
            raise ValueError(f"the config lacks '{key}', needed to build the model")
    kind = config.get("model", "mlp")
    # the sizes go to the constructors as given: their checks name these keys, where
    # int() or tuple() first would turn 2.7 into 2 and True into 1
    common = dict(data_shape=config["data_shape"],
                  latent_dim=check_size("latent", config["latent"]),
                  likelihood=config.get("likelihood", "bernoulli"),
                  n_mix=config.get("n_mix"))
    hidden = config.get("hidden", [256])
    if kind == "mlp":
        return VAE(hidden=hidden, **common)
    if kind == "conv":
        return ConvVAE(channels=config.get("channels", (32, 64)), hidden=hidden, **common)
    if kind == "hvae":
        return HierarchicalVAE(data_shape=common["data_shape"],
                               latent_channels=common["latent_dim"],
                               channels=config.get("channels", (32, 64)),
                               groups=config.get("groups", 2),
                               likelihood=common["likelihood"], n_mix=common["n_mix"])
    raise ValueError(f"model must be one of {', '.join(MODELS)}, got {kind!r}")

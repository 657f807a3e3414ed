"""What ``fastvae train --likelihood discretized_logistic_mixture`` adds to training:
its settings (``n_mix``), its data (images with 1 or 3 channels on the 8-bit grid)
and its unit, bits per dimension.

* Data: the decoder models 8-bit pixels ``k / 255`` (``observation.DMOL_BITS``).
  MNIST, Fashion-MNIST and uint8 arrays (CIFAR-10 as ``(N, 32, 32, 3)`` or
  ``(N, 3, 32, 32)``) are on that grid already (``fastvae.data`` divides bytes by
  255). The embedded digits have 17 gray levels ``v / 16``; they are put on the 8-bit
  grid as ``round(255 v / 16) / 255`` (17 distinct 8-bit values, nothing merged), so
  their bits/dim are those of 8-bit images. Anything else must already be on the grid
  in [0, 1] (a :class:`~fastvae.data.DataError` says where it is not).
* Bits per dimension: ``-log p(x) / (C*H*W * ln 2)``, from the ELBO (a bound) and from
  the IWAE estimate of ``-log p(x)``.
"""
from __future__ import annotations

import math

import torch

from .data import DIGITS_LEVELS, DataError, Dataset
from .observation import DEFAULT_N_MIX, DMOL_BITS
from .validation import DMOL

# Largest distance from the grid, in bins, still taken as on it: float32 data written
# as k / 255 is off by ~1e-5 bins; a genuinely different grid is off by >= 0.0625
# (float16 files: _on_grid also takes the float16 rounding of k / 255 itself).
GRID_TOLERANCE = 1e-3


def check_config(cfg: dict) -> None:
    """ValueError naming the setting when ``n_mix`` or the objective does not go with the
    likelihood (``n_mix``'s range is checked with the other numbers)."""
    likelihood, n_mix = cfg.get("likelihood"), cfg.get("n_mix")
    if likelihood != DMOL:
        if n_mix is not None:
            raise ValueError(f"n_mix: --n-mix is the number of mixture components of "
                             f"--likelihood {DMOL}, not of --likelihood {likelihood}")
        return
    if cfg.get("estimator") == "dreg":
        raise ValueError(f"estimator: dreg is not available with --likelihood {DMOL}; use "
                         "--estimator stl or standard")


def setup(data: Dataset, cfg: dict, log=None) -> Dataset:
    """A training run's data (:func:`prepare`); a DMoL run's config gets its mixture size
    filled in (saved in the checkpoint, so --resume, eval and sample rebuild the same
    model)."""
    if cfg.get("likelihood") == DMOL and cfg.get("n_mix") is None:
        cfg["n_mix"] = DEFAULT_N_MIX
    return prepare(data, cfg["likelihood"], log)


def prepare(data: Dataset, likelihood: str, log=None) -> Dataset:
    """The dataset a DMoL decoder trains on: ``data`` itself for other likelihoods; the
    digits put on the 8-bit grid; other images checked to lie on it (and snapped onto it
    exactly). DataError for a channel count other than 1 or 3 or values off the grid."""
    if likelihood != DMOL:
        return data
    if len(data.shape) != 3 or data.shape[0] not in (1, 3):
        raise DataError(f"{data.name}: --likelihood {DMOL} models images with 1 (gray) or 3 "
                        f"(RGB) channels, got images of shape {data.shape}")
    n = 2 ** DMOL_BITS - 1
    if data.levels == DIGITS_LEVELS:   # by what the data is, not by its name: a file may be
        if log is not None:             # called "digits" too
            log(f"{data.name}: the 17 gray levels v/{DIGITS_LEVELS} put on the {DMOL_BITS}-bit "
                f"grid as round({n} v / {DIGITS_LEVELS}) / {n}")
        return Dataset(data.name, _digits_on_grid(data.train, n), _digits_on_grid(data.test, n),
                       levels=n)
    return Dataset(data.name, _on_grid(data.train, n, data), _on_grid(data.test, n, data),
                   data.scaled, levels=n)


def _digits_on_grid(x: torch.Tensor, n: int) -> torch.Tensor:
    return torch.round(torch.round(x * DIGITS_LEVELS) * (n / DIGITS_LEVELS)) / n


def _on_grid(x: torch.Tensor, n: int, data: Dataset) -> torch.Tensor:
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{data.name}: --likelihood {DMOL} needs pixels in [0, 1] on the "
                        f"{DMOL_BITS}-bit grid k/{n}, got values in {data.quote(lo, hi)}; "
                        "store the images as uint8 (0..255)")
    k = torch.round(x.double() * n)
    dist = (x.double() * n - k).abs()
    # a float16 file holds k/255 rounded to float16 (up to 0.062 of a bin off): a value
    # that is exactly that rounding of its nearest k is on the grid too. (bfloat16, whose
    # roundings are up to half a bin off, would let other grids through; numpy has none.)
    dist = torch.where((k / n).half().float() == x.float(), 0.0, dist)
    off = float(dist.max())
    if off > GRID_TOLERANCE:
        raise DataError(f"{data.name}: --likelihood {DMOL} needs pixels on the {DMOL_BITS}-bit "
                        f"grid k/{n}; a value is {off:.3g} of a bin off it; quantize the images to "
                        "uint8 (0..255) first")
    return (k / n).to(x.dtype)


def bits_per_dim(nats: float, data_shape) -> float:
    """``nats / (C*H*W * ln 2)``: a per-image negative log-likelihood in bits per
    dimension."""
    return nats / (math.prod(data_shape) * math.log(2))


def add_bpd(metrics: dict, core) -> dict:
    """``metrics`` with ``bpd`` (from its ``elbo``) and, where it has an ``iwae_nll`` key,
    ``iwae_bpd`` (None with it, as metrics.json's ``test_iwae_bpd``) for a DMoL model;
    unchanged for other likelihoods."""
    if getattr(core, "likelihood", None) != DMOL:
        return metrics
    out = dict(metrics)
    if out.get("elbo") is not None:
        out["bpd"] = bits_per_dim(-out["elbo"], core.data_shape)
    if "iwae_nll" in out:   # None where there is none (--k 0) or it is not finite (said so)
        nll = out["iwae_nll"]
        out["iwae_bpd"] = (bits_per_dim(nll, core.data_shape)
                           if nll is not None and math.isfinite(nll) else None)
    return out


def add_final_bpd(final: dict, core) -> dict:
    """metrics.json's ``final`` with ``test_bpd`` and ``test_iwae_bpd`` for a DMoL model."""
    got = add_bpd({"elbo": final.get("test_elbo"), "iwae_nll": final.get("test_iwae_nll")}, core)
    if core.likelihood == DMOL:
        final = dict(final, test_bpd=got.get("bpd"), test_iwae_bpd=got.get("iwae_bpd"))
    return final


def bpd_text(metrics: dict, prefix: str = "") -> str:
    """``, 3.210 bits/dim`` (and `` (IWAE 3.100)``) for a log line, from ``bpd`` and
    ``iwae_bpd`` (``test_bpd``... with ``prefix="test_"``); "" without them."""
    bpd, iwae = metrics.get(prefix + "bpd"), metrics.get(prefix + "iwae_bpd")
    text = f", {bpd:.3f} bits/dim" if bpd is not None else ""
    return text + (f" (IWAE {iwae:.3f})" if iwae is not None else "")

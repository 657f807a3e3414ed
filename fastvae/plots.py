"""Pictures of a run: image grids (samples, reconstructions, latent traversal) and
training curves. matplotlib with the Agg backend (no display needed). Each PNG is
rendered in memory and written atomically, like every other run file, so a crash or a
full disk never leaves half a picture."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int, format=None) -> Path:
    """Render a matplotlib figure in memory, close it, and write it atomically.
    ``format``: default the path's suffix (PNG without one), as ``savefig`` infers it; an
    unknown one fails before any file is touched."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=format or Path(path).suffix[1:].lower() or "png", dpi=dpi)
    finally:
        pyplot().close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def picture_range(lo: float, hi: float) -> tuple:
    """The values drawn black to white for data within ``[lo, hi]``: [0, 1], widened to
    the data's own range where it passes it (Gaussian data in [-1, 1] is not clipped to
    its upper half; data within [0, 1] is not stretched)."""
    return (min(0.0, lo), max(1.0, hi))


def saved_picture_range(config: dict) -> tuple:
    """A run's :func:`picture_range` from its config; [0, 1] for a run saved without one
    (older runs) or with one that is no pair of finite numbers, low first."""
    got = config.get("picture_range")
    if (isinstance(got, (list, tuple)) and len(got) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in got)):
        try:   # an int past float's range (math.isfinite's OverflowError) is none either
            lo, hi = float(got[0]), float(got[1])
        except OverflowError:
            return 0.0, 1.0
        if math.isfinite(lo) and math.isfinite(hi) and lo < hi:
            return lo, hi
    return 0.0, 1.0


def grid(images: torch.Tensor, ncol: int, pad: int = 1, value_range=(0.0, 1.0)) -> np.ndarray:
    """``(N, C, H, W)`` drawn from ``value_range`` (black) to its top (white) -> one
    ``(rows*(H+pad)+pad, ...)`` array in [0, 1]: RGB for 3 channels and for 4 (RGBA: the
    alpha channel is not drawn), gray for 1, and the first channel, gray, for any other
    count (no colour mapping is known for it)."""
    lo, hi = value_range
    x = ((images.detach().float() - lo) / (hi - lo)).clamp(0, 1).cpu().numpy()
    n, c, h, w = x.shape
    if c == 4:
        x, c = x[:, :3], 3
    elif c != 3:
        x, c = x[:, :1], 1
    rows = max(1, math.ceil(n / ncol))
    out = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), 0.5, dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncol)
        out[pad + r * (h + pad):pad + r * (h + pad) + h,
            pad + col * (w + pad):pad + col * (w + pad) + w] = x[i].transpose(1, 2, 0)
    return out[..., 0] if c == 1 else out


# Upscaling makes small images visible; it never makes a picture enormous. A cell's
# longer side stops at MAX_CELL (a 1 x 784 strip stays 784 px wide, not 37,632) and the
# whole picture at MAX_UPSCALED_PIXELS, about a 4096 x 4096 screen's worth.
MAX_CELL = 512
MAX_UPSCALED_PIXELS = 1 << 24


def as_pictures(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` images as they are drawn. Flat data, ``(N, D)`` or the
    ``(N, 1, 1, D)`` the data loader makes of it, is drawn as ``sqrt(D) x sqrt(D)``
    squares when D is a perfect square (a flattened 28 x 28 digit looks like one), else
    as one-pixel-high strips (no other layout is known). Strips of several channels
    are no flattened images (flat data has one channel) and stay strips."""
    if images.dim() == 2:
        images = images[:, None, None, :]
    elif images.dim() == 3:
        images = images[:, None]
    n, c, h, w = images.shape
    side = math.isqrt(w)
    if c == 1 and h == 1 and side > 1 and side * side == w:
        images = images.reshape(n, c, side, side)
    return images


def upscale_factor(h: int, w: int, grid_pixels: int, min_cell: int = 48) -> int:
    """The integer factor an ``h x w`` image's grid of ``grid_pixels`` is scaled up by:
    enough for the shorter side to reach ``min_cell``, within :data:`MAX_CELL` for the
    longer side and :data:`MAX_UPSCALED_PIXELS` for the picture; at least 1."""
    scale = math.ceil(min_cell / max(1, min(h, w)))
    scale = min(scale, MAX_CELL // max(1, h, w),
                math.isqrt(MAX_UPSCALED_PIXELS // max(1, grid_pixels)))
    return max(1, scale)


def save_grid(images: torch.Tensor, path, ncol: int = 8, min_cell: int = 48,
              value_range=(0.0, 1.0)) -> Path:
    """Save ``(N, C, H, W)`` images within ``value_range`` (:func:`grid`; values past it
    clip) as a PNG grid, ``ncol`` a row (fewer for fewer images: columns of filler only
    widen the picture); small images are scaled up by an integer factor (nearest
    neighbour, :func:`upscale_factor`) so an 8x8 digit is still visible. Flat images are
    drawn as :func:`as_pictures` says.
    Returns the path; the picture's size is :func:`grid_size`'s."""
    images = as_pictures(images)
    n, _, h, w = images.shape
    ncol, scale, _, _ = _geometry(n, h, w, ncol, min_cell)
    g = grid(images, ncol, value_range=value_range)
    # 8-bit before upscaling (in place, no float copy): the picture's memory is a byte a
    # value, not a float32 one times the colormap's copies
    g = np.round(np.multiply(g, 255.0, out=g), out=g).astype(np.uint8)
    if scale > 1:
        g = g.repeat(scale, axis=0).repeat(scale, axis=1)
    from PIL import Image  # what matplotlib writes PNGs with: no new dependency

    buf = io.BytesIO()
    Image.fromarray(g).save(buf, format="png")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def grid_size(images: torch.Tensor, ncol: int = 8, min_cell: int = 48, pad: int = 1) -> tuple:
    """``(width, height)`` in pixels of the picture :func:`save_grid` makes of
    ``images`` (a tensor or just its shape), without drawing it."""
    shape = tuple(images.shape if isinstance(images, torch.Tensor) else images)
    n, _, h, w = as_pictures(torch.empty(shape, device="meta")).shape
    return _geometry(n, h, w, ncol, min_cell, pad)[2:]


def most_images(image_shape: tuple, ncol: int = 8, min_cell: int = 48) -> int:
    """The most images of ``image_shape`` whose picture (:func:`grid_size`) stays within
    :data:`MAX_UPSCALED_PIXELS`: an upscaled picture never passes it, so only the count
    at which one unscaled is too large bounds it, and past that count every one is. 0 where
    a single image is too large."""
    def fits(n):
        w, h = grid_size((n, *image_shape), ncol, min_cell)
        return w * h <= MAX_UPSCALED_PIXELS
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:   # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _geometry(n: int, h: int, w: int, ncol: int, min_cell: int, pad: int = 1) -> tuple:
    """(columns, upscale factor, width, height) of the picture of ``n`` ``h x w`` images:
    at most ``ncol`` columns, no more than there are images, laid out as :func:`grid`."""
    ncol = max(1, min(int(ncol), n))
    rows = max(1, math.ceil(n / ncol))
    gh, gw = rows * (h + pad) + pad, ncol * (w + pad) + pad
    scale = upscale_factor(h, w, gh * gw, min_cell)
    return ncol, scale, gw * scale, gh * scale


def _pairs_drawn(n: int, ncol: int) -> int:
    """How many of ``n`` inputs :func:`save_reconstructions` draws: whole rows of
    ``ncol``, or all of them where they fill no row."""
    return (n // ncol) * ncol or n


def most_reconstructions(image_shape: tuple, most: int = 32, ncol: int = 8) -> int:
    """The most inputs, up to ``most``, whose :func:`save_reconstructions` picture stays
    within :data:`MAX_UPSCALED_PIXELS`; 0 where not one pair does. Not half of
    :func:`most_images`: fewer than ``ncol`` pairs are drawn in two rows, which for
    images taller than wide is a larger picture than one row of as many images."""
    for n in range(min(most, most_images(image_shape, ncol) // 2), 0, -1):
        drawn = _pairs_drawn(n, ncol)
        w, h = grid_size((2 * drawn, *image_shape), min(ncol, drawn))
        if w * h <= MAX_UPSCALED_PIXELS:
            return n
    return 0


def save_reconstructions(inputs: torch.Tensor, recons: torch.Tensor, path, ncol: int = 8,
                         value_range=(0.0, 1.0)) -> Path:
    """Rows of inputs, each directly above the row of their reconstructions."""
    n = _pairs_drawn(min(len(inputs), len(recons)), ncol)
    ncol = min(ncol, n)
    rows = []
    for start in range(0, n, ncol):
        rows += [inputs[start:start + ncol], recons[start:start + ncol]]
    return save_grid(torch.cat(rows).reshape(-1, *inputs.shape[1:]), path, ncol=ncol,
                     value_range=value_range)


def latent_traversal(model, steps: int = 15, span: float = 0.95) -> torch.Tensor:
    """Decode a ``steps x steps`` grid of 2-D latents at Gaussian quantiles in
    ``[1-span, span]`` (so the grid covers the prior's mass, not its tails)."""
    q = torch.linspace(1 - span, span, steps, dtype=torch.float64)
    vals = torch.special.ndtri(q).float()
    zy, zx = torch.meshgrid(vals.flip(0), vals, indexing="ij")
    z = torch.stack([zx.reshape(-1), zy.reshape(-1)], dim=1)
    p = next(model.parameters())
    with torch.no_grad():
        return model.mean(model.decode(z.to(p.device, p.dtype)))


_GROUP_MARKERS = "sox^vD*<>P"


def save_curves(history: list, path) -> Path:
    """Train/test ELBO, KL and reconstruction term per epoch (one panel each), and for a
    hierarchical model the KL of every latent group (a fourth panel)."""
    plt = pyplot()
    groups = len(history[0]["test"].get("kl_groups") or []) if history else 0
    # the groups' legend beside its panel, 10 entries a column (tens of groups fit)
    cols = -(-groups // 10)
    fig, axes = plt.subplots(1, 4 if groups else 3,
                             figsize=(16 + 1.6 * cols if groups else 12, 3.5))
    epochs = [h["epoch"] for h in history]
    for ax, key, title in zip(axes, ("elbo", "kl", "rec"),
                              ("ELBO (nats, higher is better)", "KL(q(z|x) || p(z))",
                               "reconstruction  E[log p(x|z)]")):
        for split, style in (("train", "-o"), ("test", "-s")):
            ys = [h[split][key] for h in history]
            ax.plot(epochs, ys, style, markersize=3, label=split)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if groups:
        ax = axes[3]
        for g in range(groups):
            # ten colours, then the next marker: past ten groups, each pair is one group's
            color, marker = f"C{g % 10}", _GROUP_MARKERS[(g // 10) % len(_GROUP_MARKERS)]
            ax.plot(epochs, [h["test"]["kl_groups"][g] for h in history], "-" + marker,
                    color=color, markersize=3, label=f"group {g + 1} (test)")
            # hollow markers: a line alone draws nothing for a run of one epoch
            ax.plot(epochs, [h["train"]["kl_groups"][g] for h in history], "--" + marker,
                    color=color, markersize=3, markerfacecolor="none")
        ax.set_title("KL per latent group (1 = top; dashed, hollow: train)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=cols, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_figure(fig, path, dpi=100, format="png")

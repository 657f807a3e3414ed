"""What the run's pictures hold: a grid's pixels are its values times 255 rounded to the
nearest byte (not truncated); reconstructions.png shows whole rows only, each row of
inputs above its reconstructions; the latent traversal reads like a plot, z1 growing to
the right and z2 upward; curves.png draws each split's own numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from fastvae import plots  # noqa: E402


def test_grid_pixels_are_rounded_to_the_nearest_byte(tmp_path):
    # 100.8 / 255 is byte 101 (truncated: 100); the grey filler 0.5 is 127.5 -> 128
    images = torch.full((1, 1, 2, 2), 100.8 / 255)
    path = plots.save_grid(images, tmp_path / "g.png")
    pixels = np.asarray(Image.open(path))
    assert set(np.unique(pixels).tolist()) == {101, 128}


def test_reconstructions_show_whole_rows(tmp_path):
    """10 images at 8 a row: one row of 8 inputs above one row of their 8 reconstructions.
    The 4 x 4 cells with a 1 px border make an 11 x 41 grid, scaled x12 (48 / 4)."""
    inputs = torch.zeros(10, 1, 4, 4)
    recons = torch.ones(10, 1, 4, 4)
    path = plots.save_reconstructions(inputs, recons, tmp_path / "r.png", ncol=8)
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (11 * 12, 41 * 12)
    top, bottom = pixels[12:5 * 12], pixels[6 * 12:10 * 12]   # inside each row's cells
    assert top[:, 12:4 * 12].max() == 0 and bottom[:, 12:4 * 12].min() == 255


class _Identity(torch.nn.Module):
    """A 2-D "decoder" whose picture of z is z itself."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def decode(self, z):
        return z

    def mean(self, out):
        return out


def test_the_latent_traversal_puts_z2_up_and_z1_right():
    z = plots.latent_traversal(_Identity(), steps=3, span=0.9)
    # quantiles 0.1, 0.5, 0.9 of N(0, 1): -1.2816, 0, 1.2816; row-major, top row first
    q = 1.2815516
    want = torch.tensor([[-q, q], [0, q], [q, q],
                         [-q, 0], [0, 0], [q, 0],
                         [-q, -q], [0, -q], [q, -q]])
    torch.testing.assert_close(z, want, atol=1e-5, rtol=0)


def test_the_curves_draw_each_splits_numbers(tmp_path, monkeypatch):
    drawn = {}

    def keep(fig, path, dpi, format=None):
        drawn.update({(ax.get_title(), ln.get_label()): list(ln.get_ydata())
                      for ax in fig.axes for ln in ax.lines})
        plots.pyplot().close(fig)
    monkeypatch.setattr(plots, "save_figure", keep)
    history = [{"epoch": e, "train": {"elbo": -10.0 - e, "kl": 1.0 + e, "rec": -9.0},
                "test": {"elbo": -20.0 - e, "kl": 2.0 + e, "rec": -18.0}} for e in (1, 2)]
    plots.save_curves(history, tmp_path / "c.png")
    elbo = "ELBO (nats, higher is better)"
    assert drawn[(elbo, "train")] == [-11.0, -12.0]
    assert drawn[(elbo, "test")] == [-21.0, -22.0]
    assert drawn[("KL(q(z|x) || p(z))", "test")] == [3.0, 4.0]

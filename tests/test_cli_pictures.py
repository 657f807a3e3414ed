"""The command's pictures are normal-sized whatever the data's shape: flat data drawn as
squares, upscaling bounded, samples decoded in chunks, and a picture too large refused
before any decoding."""
import json

import torch

from fastvae import cli

from _cli import TINY


def _png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def test_flat_data_is_drawn_as_squares_at_the_size_of_its_images(tmp_path, capsys):
    """(N, 64) flat digits: the loader keeps them (1, 1, 64), the pictures show them 8x8
    at the digits' sizes (they were 1-pixel strips scaled up 48 times across the width:
    816 x 25,008 px here, 816 x 301,488 for (N, 784), and an OOM kill for (N, 4096))."""
    import numpy as np

    from fastvae.data import load_digits

    digits = load_digits()
    flat = torch.cat([digits.train, digits.test]).reshape(-1, 64).numpy()
    np.save(tmp_path / "flat.npy", flat)
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--dataset", str(tmp_path / "flat.npy"),
                     "--out", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["config"]["data_shape"] == [1, 1, 64]
    # 8 columns of 8x8 cells with 1-px borders, scaled 6x so a cell is 48 px
    assert _png_size(run / "reconstructions.png") == (438, 438)
    assert _png_size(run / "samples.png") == (438, 438)
    assert _png_size(run / "latent.png") == (816, 816)  # 15 x 15 cells
    png = tmp_path / "s.png"
    assert cli.main(["sample", str(run), "--n", "16", "--out", str(png)]) == 0
    assert _png_size(png) == (438, 6 * (2 * 9 + 1))


def test_a_grid_draws_flat_squares_as_squares_and_bounds_its_upscaling(tmp_path):
    from fastvae import plots

    g = torch.Generator().manual_seed(0)
    squares = torch.rand(10, 1, 7, 7, generator=g)
    plots.save_grid(squares, tmp_path / "a.png", ncol=4)
    plots.save_grid(squares.reshape(10, 1, 1, 49), tmp_path / "b.png", ncol=4)
    plots.save_grid(squares.reshape(10, 49), tmp_path / "c.png", ncol=4)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes() \
        == (tmp_path / "c.png").read_bytes()
    assert _png_size(tmp_path / "a.png") == (7 * (4 * 8 + 1), 7 * (3 * 8 + 1))
    # a strip of no square length stays a strip, its long side not scaled up
    strips = torch.rand(4, 1, 1, 1000, generator=g)
    plots.save_grid(strips, tmp_path / "d.png", ncol=2)
    assert _png_size(tmp_path / "d.png") == (2 * 1001 + 1, 2 * 2 + 1)
    # a short one is scaled up until its short side is visible, its long side within 512
    plots.save_grid(strips[:, :, :, :10], tmp_path / "e.png", ncol=2)
    assert _png_size(tmp_path / "e.png") == (48 * (2 * 11 + 1), 48 * (2 * 2 + 1))
    plots.save_grid(strips[:, :, :, :99], tmp_path / "f.png", ncol=2)
    assert _png_size(tmp_path / "f.png") == (5 * (2 * 100 + 1), 5 * (2 * 2 + 1))
    # many small images are scaled up only while the picture stays within its pixel budget
    assert plots.grid_size((64, 1, 8, 8), ncol=8) == (6 * 73, 6 * 73)
    w, h = plots.grid_size((16384, 1, 8, 8), ncol=128)
    assert (w, h) == (3 * 1153, 3 * 1153) and w * h <= plots.MAX_UPSCALED_PIXELS
    for images, ncol in ((squares, 4), (strips, 2), (strips[:, :, :, :10], 2)):
        plots.save_grid(images, tmp_path / "x.png", ncol=ncol)
        assert plots.grid_size(images, ncol) == _png_size(tmp_path / "x.png")


def test_sample_decodes_in_chunks_and_draws_no_more_columns_than_images(tmp_path, capsys,
                                                                        monkeypatch):
    """--n 100000 decoded every image at once (7 GB); --ncol 1000 --n 64 made a 54,006 px
    wide picture, mostly filler."""
    from fastvae import observation
    from fastvae.models import VAE

    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--out", str(run)]) == 0
    capsys.readouterr()
    png = tmp_path / "s.png"
    assert cli.main(["sample", str(run), "--n", "10", "--ncol", "1000", "--out", str(png)]) == 0
    # 10 columns of 8x8 digits, 6x: (10 * 9 + 1) * 6 wide
    assert _png_size(png) == (546, 60)
    assert capsys.readouterr().out == f"wrote 10 samples to {png} (546 x 60 px)\n"
    batches = []
    decode = VAE.decode

    def counted(self, z):
        batches.append(len(z))
        return decode(self, z)
    monkeypatch.setattr(VAE, "decode", counted)
    assert cli.main(["sample", str(run), "--n", "120", "--out", str(tmp_path / "a.png")]) == 0
    assert batches == [120]  # at least 64 images, else 2^22 values of the widest decoder tensor
    batches.clear()
    monkeypatch.setattr(observation, "SAMPLE_CHUNK_MIN", 1)
    monkeypatch.setattr(observation, "SAMPLE_CHUNK_ELEMENTS", 50 * 64)
    assert cli.main(["sample", str(run), "--n", "120", "--out", str(tmp_path / "b.png")]) == 0
    assert batches == [50, 50, 20]
    # a picture past 16 megapixels even unscaled: refused before any decoding
    from fastvae import plots
    most = plots.most_images((1, 8, 8), 8)
    w, h = plots.grid_size((most, 1, 8, 8), 8)
    assert w * h <= plots.MAX_UPSCALED_PIXELS
    w, h = plots.grid_size((most + 1, 1, 8, 8), 8)
    assert w * h > plots.MAX_UPSCALED_PIXELS
    batches.clear()
    assert cli.main(["sample", str(run), "--n", str(most + 1), "--out",
                     str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err == (f"fastvae sample: error: --n {most + 1} makes a picture of {w} x {h} px, "
                   f"past the 16 megapixels a picture may have; draw at most {most} (at "
                   f"--ncol 8)\n") and batches == [] and not (tmp_path / "c.png").exists()


def test_train_draws_no_more_images_than_a_picture_may_hold(tmp_path, monkeypatch):
    """train's pictures keep to the bound ``fastvae sample`` refuses past: fewer images
    where they would pass it, none where one image does, and metrics.json either way."""
    from fastvae import plots

    monkeypatch.setattr(plots, "MAX_UPSCALED_PIXELS", 2000)   # 16 8x8 digits, unscaled
    assert plots.most_images((1, 8, 8)) == 16
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--out", str(run)]) == 0
    assert _png_size(run / "samples.png") == (73, 19)           # 16 in 2 rows of 8
    assert _png_size(run / "reconstructions.png") == (73, 19)   # 8 above their 8
    assert not (run / "latent.png").exists()                    # 225 would not fit
    monkeypatch.setattr(plots, "MAX_UPSCALED_PIXELS", 50)     # not one 10 x 10 cell
    run = tmp_path / "run2"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--out", str(run)]) == 0
    assert {p.name for p in run.glob("*.png")} <= {"curves.png"}
    assert json.loads((run / "metrics.json").read_text())["final"]["test_elbo"] is not None

"""fastvae.plots on its own: how a grid draws each channel count, and how many images a
picture may hold (the sample command's bound)."""
import numpy as np
import pytest
import torch


@pytest.mark.parametrize("channels,drawn", [(1, None), (2, 1), (3, None), (4, 3), (5, 1)])
def test_a_grid_draws_rgb_rgba_without_alpha_and_else_the_first_channel(channels, drawn):
    from fastvae import plots

    images = torch.rand(3, channels, 4, 5, generator=torch.Generator().manual_seed(0))
    shown = images[:, :drawn] if drawn is not None else images
    g = plots.grid(images, ncol=2)
    assert g.shape == ((2 * 5 + 1, 2 * 6 + 1) if shown.shape[1] == 1 else (11, 13, 3))
    cell = g[1:5, 7:12] if shown.shape[1] == 1 else g[1:5, 7:12].transpose(2, 0, 1)
    assert np.array_equal(cell, shown[1].squeeze(0).numpy() if shown.shape[1] == 1
                          else shown[1].numpy())


def test_most_images_of_a_picture_is_0_where_one_image_is_past_the_limit():
    from fastvae import plots

    assert plots.most_images((3, 4097, 4097)) == 0
    assert plots.most_images((1, 1, 1000), ncol=1) > 0   # strips
    most = plots.most_images((1, 1, 1000), ncol=3)
    for n, fits in ((most, True), (most + 1, False)):
        w, h = plots.grid_size((n, 1, 1, 1000), 3)
        assert (w * h <= plots.MAX_UPSCALED_PIXELS) == fits


def test_a_picture_shows_data_past_0_1_in_its_own_range():
    """Gaussian data in [-1, 1] was clipped to [0, 1]: a picture of data in [-1, 0] was
    black. Data within [0, 1] keeps [0, 1] (not stretched to its own min and max)."""
    from fastvae import plots

    assert plots.picture_range(-1.0, 1.0) == (-1.0, 1.0)
    assert plots.picture_range(0.1, 0.9) == (0.0, 1.0)
    assert plots.picture_range(-1.0, 0.0) == (-1.0, 1.0)
    images = torch.tensor([-1.0, -0.5, 0.0, 1.0]).reshape(4, 1, 1, 1)
    g = plots.grid(images, ncol=4, value_range=(-1.0, 1.0))
    assert g[1, 1::2].tolist() == [0.0, 0.25, 0.5, 1.0]
    assert plots.grid(images, ncol=4)[1, 1::2].tolist() == [0.0, 0.0, 0.0, 1.0]
    # a run saved without one, or with a damaged one: [0, 1]
    for bad in ({}, {"picture_range": [1.0, -1.0]}, {"picture_range": "x"},
                {"picture_range": [0.0, float("inf")]}, {"picture_range": [True, 2]}):
        assert plots.saved_picture_range(bad) == (0.0, 1.0)
    assert plots.saved_picture_range({"picture_range": [-1, 1]}) == (-1.0, 1.0)


def test_flat_data_is_drawn_square_and_a_colour_strip_stays_a_strip():
    """A one-channel (N, 1, 1, D) image is what the loader makes of flat data, drawn as a
    square where D is one; a strip of several channels is no flattened image."""
    from fastvae import plots

    assert plots.as_pictures(torch.zeros(2, 16)).shape == (2, 1, 4, 4)
    assert plots.as_pictures(torch.zeros(2, 1, 1, 16)).shape == (2, 1, 4, 4)
    assert plots.as_pictures(torch.zeros(2, 3, 1, 16)).shape == (2, 3, 1, 16)
    assert plots.as_pictures(torch.zeros(2, 1, 1, 15)).shape == (2, 1, 1, 15)



@pytest.mark.parametrize("shape", [(1, 55, 16), (1, 58, 7), (1, 33, 13), (1, 8, 8),
                                   (3, 10, 40), (1, 1, 64), (1, 60, 60)])
def test_train_s_pictures_are_the_files_it_lists_and_keep_to_the_bound(
        shape, tmp_path, monkeypatch):
    """finish draws what written() lists (a resume checks those paths first), each picture
    within the bound. Half of most_images is no count of reconstructions that fits: fewer
    pairs than a row are drawn in two rows, which for an image taller than wide is larger
    than one row of as many images ((1, 55, 16): two fit in a row, the pair stacked
    did not)."""
    from types import SimpleNamespace

    from PIL import Image

    from fastvae import plots
    from fastvae.finish import finish, written
    from fastvae.models import VAE

    monkeypatch.setattr(plots, "MAX_UPSCALED_PIXELS", 2000)
    cfg = {"data_shape": list(shape), "latent": 2, "model": "mlp", "seed": 0, "iwae_k": 0,
           "backend": None, "progress": False, "picture_range": [0.0, 1.0]}
    core = VAE(shape, 2, hidden=8)
    data = SimpleNamespace(test=torch.rand(40, *shape))
    finish(core, data, cfg, torch.device("cpu"), tmp_path, [], None, "torch", 1, 0.0,
           lambda *a, **k: None)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(set(written(cfg)) - {"curves.png"}), made   # no epochs: no curves
    for name in made:
        if name.endswith(".png"):
            with Image.open(tmp_path / name) as im:
                assert im.size[0] * im.size[1] <= 2000, (name, im.size)

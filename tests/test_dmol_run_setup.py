"""What a discretized-logistic-mixture run does with its data and config before training:
pixels within a thousandth of a bin of the 8-bit grid are taken as on it (and snapped
onto it), a hundredth of a bin off is another grid and refused; the run's config
records the mixture size it trains with (10 by default), so a later resume, eval or
sample rebuilds that model."""
from __future__ import annotations

import pytest
import torch

from fastvae import dmol_training
from fastvae.data import DataError, Dataset

DMOL = "discretized_logistic_mixture"
K = torch.tensor([0.0, 3.0, 100.0, 200.0, 254.0, 255.0], dtype=torch.float64)


def _data(values: torch.Tensor) -> Dataset:
    x = values.float().reshape(1, 1, 1, -1)
    return Dataset("arr", x, x.clone())


def test_a_hundredth_of_a_bin_off_the_grid_is_refused():
    # float32 stores (k + 0.01) / 255 to ~1e-5 of a bin: 0.01 stays far above 1e-3
    with pytest.raises(DataError, match="0.01 of a bin off"):
        dmol_training.prepare(_data((K.clamp(max=254) + 0.01) / 255), DMOL)


def test_a_ten_thousandth_of_a_bin_off_is_on_the_grid_and_snapped_onto_it():
    got = dmol_training.prepare(_data((K.clamp(max=254) + 1e-4) / 255), DMOL)
    assert torch.equal(got.train.flatten(), (K.clamp(max=254) / 255).float())


def test_a_dmol_run_records_its_default_mixture_size():
    cfg = {"likelihood": DMOL, "n_mix": None}
    dmol_training.setup(_data(K / 255), cfg)
    assert cfg["n_mix"] == 10
    cfg = {"likelihood": DMOL, "n_mix": 3}
    dmol_training.setup(_data(K / 255), cfg)
    assert cfg["n_mix"] == 3
    cfg = {"likelihood": "bernoulli", "n_mix": None}
    dmol_training.setup(_data(K / 255), cfg)
    assert cfg["n_mix"] is None

"""``fastvae sample`` decodes in chunks; every latent is drawn first, so the picture of a
seed is the same however many chunks it was decoded in: each chunk's images land in
their own cells."""
from __future__ import annotations

import numpy as np
import pytest

from fastvae import cli, observation

Image = pytest.importorskip("PIL.Image")

from _cli import TINY


def test_a_chunked_draw_is_the_picture_of_a_whole_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--out", str(run)]) == 0
    whole, chunked = tmp_path / "whole.png", tmp_path / "chunked.png"
    assert cli.main(["sample", str(run), "--n", "120", "--out", str(whole)]) == 0
    monkeypatch.setattr(observation, "SAMPLE_CHUNK_MIN", 1)
    monkeypatch.setattr(observation, "SAMPLE_CHUNK_ELEMENTS", 50 * 64)   # 50, 50, 20
    assert cli.main(["sample", str(run), "--n", "120", "--out", str(chunked)]) == 0
    a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in (whole, chunked))
    # a batch of 50 may round a matmul otherwise than one of 120: a byte at most
    assert a.shape == b.shape and int(np.abs(a - b).max()) <= 1

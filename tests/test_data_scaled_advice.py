"""train judges data within [-1, 1] as already scaled, so the NaN stop does not advise
scaling it."""
import numpy as np
import pytest

from fastvae import train as T


def test_data_within_minus_one_and_one_counts_as_scaled(tmp_path, monkeypatch):
    seen = []

    class Recording(T.Guard):
        def __init__(self, *a, **kw):
            seen.append(kw["data_scaled"])
            raise KeyboardInterrupt   # nothing past the guard's making is needed

    monkeypatch.setattr(T, "Guard", Recording)
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).uniform(-1, 1, (50, 8, 8)).astype(np.float32))
    for name, ds in (("a", str(data)), ("b", "digits")):
        with pytest.raises(KeyboardInterrupt):
            T.train(dict(out=str(tmp_path / name), dataset=ds, likelihood="gaussian", epochs=1,
                         hidden=[8], latent=2, iwae_k=0, progress=False),
                    log=lambda *a, **k: None)
    assert seen == [True, True]
    np.save(data, np.random.default_rng(0).uniform(-2, 1, (50, 8, 8)).astype(np.float32))
    with pytest.raises(KeyboardInterrupt):
        T.train(dict(out=str(tmp_path / "c"), dataset=str(data), likelihood="gaussian",
                     epochs=1, hidden=[8], latent=2, iwae_k=0, progress=False),
                log=lambda *a, **k: None)
    assert seen == [True, True, False]

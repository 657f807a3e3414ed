"""A stop signal whose KeyboardInterrupt a library swallowed during the last epoch's
checkpoint still stops the run before the final estimate and pictures (hours for a conv
model's K=1000)."""
import signal

import pytest

from fastvae import stops, train as T


def test_a_swallowed_stop_in_the_last_checkpoint_still_stops_before_the_final_stage(
        tmp_path, monkeypatch):
    real_save = T.save_checkpoint

    def save_then_swallow_a_signal(state, path):
        out = real_save(state, path)
        if state["epoch"] == 1:
            try:   # what C code that clears a Python error does to the signal's exception
                stops._on_signal(signal.SIGINT, None)
            except KeyboardInterrupt:
                pass
        return out

    monkeypatch.setattr(T, "save_checkpoint", save_then_swallow_a_signal)
    cfg = dict(out=str(tmp_path / "r"), epochs=1, hidden=[32], latent=4, batch_size=128,
               iwae_k=0, progress=False)
    with stops.handled():
        with pytest.raises(KeyboardInterrupt):
            T.train(cfg, log=lambda *a, **k: None)
    assert (tmp_path / "r" / "checkpoint.pt").is_file()
    assert not (tmp_path / "r" / "metrics.json").exists()

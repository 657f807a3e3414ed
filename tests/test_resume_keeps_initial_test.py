"""A resume keeps the checkpoint's initial_test (the untrained model's test ELBO) in
metrics.json and every later checkpoint."""
from fastvae import train as T
from fastvae.checkpoint import load_checkpoint


def _cfg(out, **kw):
    return dict(dict(out=str(out), epochs=1, hidden=[32], latent=4, batch_size=128,
                     iwae_k=0, progress=False), **kw)


def test_a_resumed_run_keeps_the_untrained_model_s_test_metrics(tmp_path):
    first = T.train(_cfg(tmp_path / "r"), log=lambda *a, **k: None)
    assert first["initial_test"] is not None and "elbo" in first["initial_test"]
    second = T.train(_cfg(tmp_path / "r", epochs=2, resume=True), log=lambda *a, **k: None)
    assert second["initial_test"] == first["initial_test"]
    assert load_checkpoint(tmp_path / "r")["initial_test"] == first["initial_test"]

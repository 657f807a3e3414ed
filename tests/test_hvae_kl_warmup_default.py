"""The hvae's default --kl-warmup is 10 epochs (its latent groups collapse without it),
as --help and train._train say."""
from fastvae import train as T


def test_an_hvae_run_warms_its_kl_up_over_10_epochs_by_default(tmp_path):
    cfg = dict(out=str(tmp_path / "h"), model="hvae", channels=[8], groups=1, latent=2,
               epochs=1, batch_size=256, iwae_k=0, progress=False)
    m = T.train(cfg, log=lambda *a, **k: None)
    assert m["config"]["kl_warmup"] == 10
    m = T.train(dict(cfg, out=str(tmp_path / "m"), model="mlp", channels=None, groups=None,
                     hidden=[16]), log=lambda *a, **k: None)
    assert m["config"]["kl_warmup"] == 0

"""The training bar's running ELBO is the ELBO (beta = 1) of the epoch's batches so far,
the number the epoch's line then prints as its train elbo, not the negated training loss,
which a --beta, a KL warm-up or the IWAE objective make another number."""
import pytest

from fastvae import train as T


class _Bar:
    def __init__(self):
        self.shown = []

    def update(self, n):
        pass

    def set_postfix(self, **kw):
        self.shown.append(kw)

    def close(self):
        pass


@pytest.mark.parametrize("settings", [dict(beta=0.25), dict(kl_warmup=3),
                                      dict(objective="iwae", k=4)])
def test_the_bar_shows_the_running_elbo(tmp_path, monkeypatch, settings):
    bars = []
    monkeypatch.setattr(T, "_progress", lambda *a: bars.append(_Bar()) or bars[-1])
    cfg = dict(out=str(tmp_path / "run"), epochs=2, hidden=[16], latent=2, batch_size=500,
               iwae_k=0, progress=True, **settings)
    m = T.train(cfg, log=lambda *a, **k: None)
    assert len(bars) == 2
    for bar, epoch in zip(bars, m["epochs"]):
        assert bar.shown[-1]["elbo"] == f"{epoch['train']['elbo']:.2f}"
        # the loss differs from the ELBO by more than the rounding shown
        assert abs(epoch["train"]["loss"] + epoch["train"]["elbo"]) > 0.01

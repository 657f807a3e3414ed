"""What the training test modules share: a tiny run's config and a log that prints nothing."""


def tiny(out, **kw):
    """A few seconds of training on the embedded digits."""
    cfg = dict(out=str(out), epochs=2, hidden=[32], latent=4, batch_size=64, lr=3e-3,
               iwae_k=10, progress=False)
    cfg.update(kw)
    return cfg


def quiet(*args, **kw):
    pass

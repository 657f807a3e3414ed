"""What the checkpoint test modules share: one finished tiny run (the ``good_run``
fixture, registered by conftest.py so that one run serves every module), a copy of its
checkpoint to damage, and the check that a command's error is one line."""
import pytest

from fastvae.checkpoint import CHECKPOINT_NAME
from _train import quiet

TINY_CONFIG = dict(epochs=1, hidden=[32], latent=4, batch_size=256, lr=3e-3, iwae_k=0,
                   progress=False)


@pytest.fixture(scope="session")
def good_run(tmp_path_factory):
    """One finished tiny run; tests copy its checkpoint, never change it."""
    from fastvae import train as T   # here, not above: conftest.py imports this module

    out = tmp_path_factory.mktemp("good") / "run"
    T.train(dict(TINY_CONFIG, out=str(out)), log=quiet)
    return out


def copy_run(good_run, dst):
    dst.mkdir(parents=True, exist_ok=True)
    (dst / CHECKPOINT_NAME).write_bytes((good_run / CHECKPOINT_NAME).read_bytes())
    return dst


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert str(n) in err, (n, err)
    return err

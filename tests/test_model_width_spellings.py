"""Every model's width arguments take one shared set of spellings (fastvae.validation.
check_widths): ConvVAE's one fully connected width once refused a numpy array or a
range that the MLP's widths and both conv models' channels took."""
import numpy as np
import pytest

from fastvae.hvae import HierarchicalVAE
from fastvae.models import VAE, ConvVAE

# (model, argument, what the model keeps for one width of 8)
WIDTHS = [(VAE, "hidden", (8,)), (ConvVAE, "hidden", 8), (ConvVAE, "channels", (8,)),
          (HierarchicalVAE, "channels", (8,))]
IDS = [f"{cls.__name__}.{arg}" for cls, arg, _ in WIDTHS]


@pytest.mark.parametrize("cls,arg,kept", WIDTHS, ids=IDS)
@pytest.mark.parametrize("spelling", [[8], (8,), np.array([8]), np.array([8], np.int32),
                                      range(8, 9), (np.int64(8),)],
                         ids=["list", "tuple", "array", "int32-array", "range", "numpy-int"])
def test_one_width_in_any_sequence(cls, arg, kept, spelling):
    assert getattr(cls(**{arg: spelling}), arg) == kept


@pytest.mark.parametrize("cls,arg,kept", WIDTHS, ids=IDS)
@pytest.mark.parametrize("bad,exc,msg", [
    (np.array([8.0]), TypeError, r"\[0\] must be an int, got numpy.float64"),
    ([True], TypeError, r"\[0\] must be an int, got bool"),
    (["8"], TypeError, r"\[0\] must be an int, got str"),
    (np.array(8), TypeError, r"sequence of ints, got numpy.ndarray"),
    (8.0, TypeError, r"sequence of ints, got float"),
    (None, TypeError, r"sequence of ints, got NoneType"),
    (np.array([0]), ValueError, r"\[0\] must be >= 1, got 0"),
    ("88", TypeError, r"sequence of ints, got str"),
    ({8, 16}, TypeError, r"sequence of ints, got set"),
    ({8: 1}, TypeError, r"sequence of ints, got dict")],
    ids=["float-array", "bool", "str", "0-d-array", "float", "none", "zero", "string", "set",
         "dict"])
def test_the_same_spellings_are_refused(cls, arg, kept, bad, exc, msg):
    with pytest.raises(exc, match=arg + msg if msg.startswith(r"\[") else msg) as e:
        cls(**{arg: bad})
    assert str(e.value).startswith(arg)


@pytest.mark.parametrize("cls,arg,kept", WIDTHS, ids=IDS)
def test_one_width_as_a_bare_int(cls, arg, kept):
    """A bare int (a numpy one too) is one width for every width argument, channels too (one
    stage, as ``--channels 8`` is): ConvVAE's and HierarchicalVAE's channels refused it while
    hidden took it. A bool is not an int here."""
    for one in (8, np.int64(8)):
        assert getattr(cls(**{arg: one}), arg) == kept
    with pytest.raises(TypeError, match=f"{arg} must be an int, got bool"):
        cls(**{arg: True})


@pytest.mark.parametrize("model", ["conv", "hvae"])
def test_the_training_config_takes_one_channel_width_as_the_models_do(model):
    """train(channels=8) was refused ("must be a list") where hidden=8 was taken."""
    from fastvae import train as T
    from fastvae.models import build_model
    cfg = T._checked_config(dict(model=model, channels=8, hidden=None))
    assert build_model(dict(cfg, data_shape=[1, 8, 8])).channels == (8,)


@pytest.mark.parametrize("spelling", [256, (256,), [256], np.int64(256)])
def test_a_default_width_in_any_spelling_is_not_refused_as_unused(spelling):
    """hidden=256 is the default [256]: an hvae (which has no hidden layers) takes it as it
    takes the list; another width is refused by name."""
    from fastvae import train as T
    from fastvae.options import check_model_sizes
    check_model_sizes(dict(hidden=spelling), "hvae", T.default_config())
    with pytest.raises(ValueError, match="channels: the mlp model has no convolution"):
        check_model_sizes(dict(channels=np.int64(32)), "mlp", T.default_config())
    with pytest.raises(ValueError, match="hidden: the hvae model has no hidden layers"):
        check_model_sizes(dict(hidden=128), "hvae", T.default_config())

"""check_model_sizes accepts a size equal to its default: a config made from
default_config() holds every size (train's Python API)."""
from fastvae.options import check_model_sizes
from fastvae.train import default_config


def test_a_config_made_from_the_defaults_is_not_refused_for_any_model():
    d = default_config()
    for model in ("mlp", "conv", "hvae"):
        check_model_sizes(d, model, d)   # must not raise

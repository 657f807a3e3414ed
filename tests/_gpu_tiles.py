"""The ``gpu_tiles`` fixture the Triton tile test modules share (each imports it, as
conftest.py does tests/_checkpoint.py's ``good_run``)."""
import pytest


@pytest.fixture
def gpu_tiles(kernels):
    """Launch with the tiles and warps shipped for GPUs (the ones test_kernels_compile.py
    builds), whatever the session."""
    from fastvae.backends.triton_backend import configs
    old = configs.CONFIG_MODE
    configs.CONFIG_MODE = "gpu"
    yield configs
    configs.CONFIG_MODE = old

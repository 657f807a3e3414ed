"""The tile gaussian_log_prob launches the ELBO row kernel with: the one the ELBO itself
takes for the same likelihood (``configs.elbo_config``), so a tensor log-variance gets the
tensor obs_logvar's tile. On the default 16-bit tile (32 x 64 at 4 warps) a (N, D)
log-variance with x's gradient took 255 registers and spilled 56 bytes (Triton 3.6.0,
sm_80 and sm_90, N = D = 1003), a specialization only the ``full`` catalog tier compiles."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
if not hasattr(triton, "knobs"):
    pytest.skip("the capture needs triton.knobs (Triton >= 3.4)", allow_module_level=True)

import fastvae  # noqa: E402
from fastvae.backends.triton_backend import configs  # noqa: E402
from fastvae.bench.offline import capture  # noqa: E402


def _launched_tile(dtype, logvar, d):
    n = d
    x = torch.empty(n, d, dtype=dtype, requires_grad=True)
    mean = torch.empty(n, d, dtype=dtype, requires_grad=True)
    with capture.capturing((90,)) as rec:
        fastvae.gaussian_log_prob(x, mean, logvar, backend="triton", validate=False)
    (launch,) = [la for la in rec.launches if la.short == "elbo_rows_kernel"]
    cx = launch.constexprs()
    return cx["LIK"], (cx["BLOCK_B"], cx["BLOCK_D"], launch.options()["num_warps"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["float", "BD"])
@pytest.mark.parametrize("d", [1003, 1024])   # rows not aligned to 16 take half the rows
def test_the_elbo_s_tile_for_the_likelihood(dtype, layout, d):
    n = d
    logvar = 0.3 if layout == "float" else torch.empty(n, d, dtype=dtype, requires_grad=True)
    lik, tile = _launched_tile(dtype, logvar, d)
    want_lik = configs.GAUSSIAN_SCALAR if layout == "float" else configs.GAUSSIAN_TENSOR
    assert lik == want_lik
    bb, bd, _, warps = configs.elbo_config(n, d, 1, dtype.itemsize, want_lik,
                                           aligned=d % 16 == 0)
    assert tile == (bb, bd, warps)

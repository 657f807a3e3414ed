"""``elbo_eval``: the ELBO's forward only, under ``no_grad`` (evaluation). The same
inputs and variants as ``elbo`` without the backward pass."""
from ..core import Op
from ._common import vae_inputs
from .elbo import variants

ORDER = 2


def elements_moved(case):
    """Read x, recon, mu, logvar: ``2BD + 2BL``."""
    return 2 * case.batch * case.dim + 2 * case.batch * case.latent


OPS = [Op(
    "elbo_eval", lambda case, gen: vae_inputs(case, gen, grad=False), variants(backward=False),
    elements_moved=elements_moved, fused_fp32=True,
    grids={"quick": dict(batch=[4096], dim=[784]),
           "cpu": dict(batch=[256, 4096, 32768], dim=[784, 3072]),
           "cuda": dict(batch=[65536], dim=[784, 3072])},
)]

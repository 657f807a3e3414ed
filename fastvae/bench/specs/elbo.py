"""``elbo``: the ELBO's forward and backward, as the VAE loss of pytorch/examples
(Bernoulli likelihood on logits, analytic KL, summed over the batch).

Variants (every one returns the loss, ``-ELBO`` summed): ``eager`` (the examples'
``loss_function``), ``distributions``, ``compile`` of eager, ``fastvae-torch`` /
``fastvae-aten`` / ``fastvae-triton`` (``fastvae.ELBOLoss(reduction="sum")``). Each
returns the loss and the gradients w.r.t. recon, mu, logvar.
"""
from ..core import Op, loss_step
from ._common import distributions_loss, eager_loss, fastvae_loss, standard_variants, vae_inputs

ORDER = 1
NAMES = ("x", "recon", "mu", "logvar")


def variants(backward: bool):
    """The variants, with or without the backward pass (``elbo_eval`` is without)."""
    def make(get_fn, backend):
        return lambda case, inputs: loss_step(get_fn(), inputs, NAMES, backward)
    return standard_variants(make, eager_loss, distributions_loss, fastvae_loss, aten=True)


def elements_moved(case):
    """Read x, recon, mu, logvar; write d recon, d mu, d logvar (made in the forward
    pass): ``3BD + 4BL``."""
    return 3 * case.batch * case.dim + 4 * case.batch * case.latent


OPS = [Op(
    "elbo", lambda case, gen: vae_inputs(case, gen, grad=True), variants(backward=True),
    elements_moved=elements_moved, fused_fp32=True,
    grids={"quick": dict(batch=[4096], dim=[784]),
           "cpu": dict(batch=[256, 4096, 32768], dim=[784, 3072]),
           "cuda": dict(batch=[4096, 65536], dim=[784, 3072]),
           "quick_cuda": dict(batch=[65536], dim=[784])},
)]

"""DReG's graph check tells z_k from another output of the node that made it: a decoder
that read the other half of one chunked draw (one SplitBackward node, two outputs) never
sends its gradient through the hook on z_k, so the bound refuses it, where a match on the
node alone would let the encoder's gradient come out silently wrong."""
import pytest
import torch

import fastvae


def test_a_decoder_reading_a_sibling_chunk_of_z_k_is_refused():
    torch.manual_seed(0)
    mu = torch.randn(3, 2, requires_grad=True)
    lv = torch.randn(3, 2, requires_grad=True)
    z_a, z_b = fastvae.reparameterize(mu, lv, n_samples=4).chunk(2)
    assert z_a.grad_fn is z_b.grad_fn and z_a.output_nr != z_b.output_nr
    x = torch.rand(3, 5)
    recon_k = z_b @ torch.randn(2, 5)
    with pytest.raises(ValueError, match="recon_k and z_k come out of one autograd node"):
        fastvae.iwae_bound(x, recon_k, mu, lv, z_a, estimator="dreg")
    # the very tensor the decoder read passes
    fastvae.iwae_bound(x, recon_k, mu, lv, z_b, estimator="dreg")

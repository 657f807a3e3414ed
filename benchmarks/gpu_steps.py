"""The fwd+bwd steps the GPU scripts time (gpu_probe.py, gpu_tiles.py), and the shapes
they run at: the bar's, and the CPU smoke run's."""
from __future__ import annotations

import torch

import fastvae
from fastvae.bench.core import Case

BAR = dict(batch=65536, dim=784, latent=64)
SMOKE = dict(batch=64, dim=784, latent=16)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def elbo_step(shape, dtype, device, backend):
    """(step, case): ELBOLoss(sum) fwd+bwd on fixed inputs; ``step.leaves`` holds the
    tensors whose gradients each step writes (recon, mu, logvar)."""
    b, d, l = shape["batch"], shape["dim"], shape["latent"]
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(b, d, device=device, generator=g).to(dtype)
    leaves = [torch.randn(b, d, device=device, generator=g).to(dtype).requires_grad_(),
              torch.randn(b, l, device=device, generator=g).to(dtype).requires_grad_(),
              (0.1 * torch.randn(b, l, device=device, generator=g)).to(dtype).requires_grad_()]
    loss_fn = fastvae.ELBOLoss(reduction="sum", backend=backend)

    def step():
        for t in leaves:
            t.grad = None
        loss = loss_fn(x, *leaves)
        loss.backward()
        return loss
    step.leaves = leaves
    return step, Case("elbo", b, d, l, dtype=dtype, device=device.type)


def iwae_step(shape, k, dtype, device, backend):
    b, d, l = shape["batch"], shape["dim"], shape["latent"]
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(b, d, device=device, generator=g).to(dtype)
    leaves = [torch.randn(k, b, d, device=device, generator=g).to(dtype).requires_grad_(),
              torch.randn(b, l, device=device, generator=g).to(dtype).requires_grad_(),
              (0.1 * torch.randn(b, l, device=device, generator=g)).to(dtype).requires_grad_(),
              torch.randn(k, b, l, device=device, generator=g).to(dtype).requires_grad_()]

    def step():
        for t in leaves:
            t.grad = None
        r, mu, lv, z = leaves
        out = fastvae.iwae_bound(x, r, mu, lv, z, reduction="sum", backend=backend)
        out.backward()
        return out
    return step, Case("iwae", b, d, l, k=k, dtype=dtype, device=device.type)


def reparam_step(shape, k, dtype, device, backend):
    b, l = shape["batch"], shape["latent"]
    mu = torch.randn(b, l, device=device, dtype=dtype).requires_grad_()
    lv = (0.1 * torch.randn(b, l, device=device)).to(dtype).requires_grad_()
    dz = torch.ones((k, b, l) if k > 1 else (b, l), device=device, dtype=dtype)

    def step():
        mu.grad = lv.grad = None
        z = fastvae.reparameterize(mu, lv, n_samples=k if k > 1 else None, backend=backend)
        z.backward(dz)
        return z
    return step, Case("reparameterize", b, 0, l, k=k, dtype=dtype, device=device.type)


def swk_step(device, backend):
    """One sample_with_kl group fwd+bwd at batch 16 (the VDVAE loop's smallest groups)."""
    g = torch.Generator(device=device).manual_seed(0)
    leaves = [torch.randn(16, 16, 8, 8, device=device, generator=g).requires_grad_()
              for _ in range(4)]
    dz = torch.randn(16, 16, 8, 8, device=device, generator=g)
    dkl = torch.randn(16, device=device, generator=g)

    def step():
        for t in leaves:
            t.grad = None
        z, kl = fastvae.sample_with_kl(*leaves, backend=backend)
        torch.autograd.backward([z, kl], [dz, dkl])
        return z
    return step

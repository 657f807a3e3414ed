"""Memory a VAE training step holds from the end of its forward to its backward: an MLP
decoder and the loss, eager PyTorch's (pytorch/examples) against ``fastvae.elbo``, each
plain and inside ``torch.utils.checkpoint`` (decoder and loss in one region).

Measured on the CPU from the allocator's events (``torch.profiler``), so the figures do
not depend on the machine. Before the fused ops saved their inputs through autograd, a
checkpointed fastvae step still held the decoder's output ``recon``. The gradients of
every variant are checked against the plain eager step first.

    .venv/bin/python benchmarks/checkpoint_memory.py [--batch 4096]
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.profiler import profile
from torch.utils.checkpoint import checkpoint

import fastvae
from fastvae import options as o
from fastvae.bench.extras import quiet_stderr

MIB = 2.0 ** -20


def eager_loss(x, recon, mu, logvar):
    bce = F.binary_cross_entropy(torch.sigmoid(recon), x, reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def fastvae_loss(x, recon, mu, logvar):
    return -fastvae.elbo(x, recon, mu, logvar, reduction="sum", backend="torch")


def held_after_forward(forward):
    """(bytes allocated during ``forward()`` and still alive when it returns, from the
    allocator's events; its result)."""
    with quiet_stderr(), profile(profile_memory=True) as prof:
        out = forward()
    held = sum(e.nbytes() for e in prof.profiler.kineto_results.events()
               if e.name() == "[memory]")
    return held, out


def main(argv=None) -> dict:
    p = o.Parser(description=__doc__.splitlines()[0])
    for flag, default in (("--batch", 4096), ("--dim", 784), ("--latent", 32), ("--hidden", 400)):
        p.add_argument(flag, type=o.count, default=default)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    b, d, l = args.batch, args.dim, args.latent
    decoder = torch.nn.Sequential(torch.nn.Linear(l, args.hidden), torch.nn.ReLU(),
                                  torch.nn.Linear(args.hidden, d))
    x = torch.rand(b, d)
    mu = torch.randn(b, l, requires_grad=True)
    logvar = (0.1 * torch.randn(b, l)).requires_grad_()
    z = (mu + torch.randn(b, l) * torch.exp(0.5 * logvar)).detach().requires_grad_()
    leaves = [z, mu, logvar, *decoder.parameters()]

    def region(loss):
        return lambda z, mu, logvar: loss(x, decoder(z), mu, logvar)

    variants = {}
    for name, loss in (("eager", eager_loss), ("fastvae", fastvae_loss)):
        variants[name] = region(loss)
        variants[f"{name} + checkpoint"] = (
            lambda f: lambda *a: checkpoint(f, *a, use_reentrant=False))(region(loss))

    rows, want = {}, None
    print(f"B={b} D={d} L={l} hidden={args.hidden} fp32, torch {torch.__version__}; "
          f"recon (B x D) is {b * d * 4 * MIB:.1f} MiB")
    print(f"{'variant':<22} {'held after forward MiB':>24}")
    for name, step in variants.items():
        for _ in range(2):   # the second call is the one measured (fastvae's prepared route)
            held, loss = held_after_forward(lambda: step(z, mu, logvar))
            got = torch.autograd.grad(loss, leaves)
        if want is None:
            want = got
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=2e-4, atol=2e-3)
        rows[name] = held
        print(f"{name:<22} {held * MIB:>24.1f}")
    return rows


if __name__ == "__main__":
    from fastvae.bench.extras import script_main
    sys.exit(script_main(main, "checkpoint_memory.py"))

"""IWAE loss written two ways, timed side by side: ``fastvae.IWAELoss`` (the sign inside the
fused op: backward gets grad_output 1 and scales nothing) against ``-fastvae.iwae_bound``
(grad_output -1: backward reads and writes every saved gradient once more).

    .venv/bin/python benchmarks/iwae_loss_sign.py [--backend torch] [--rounds 15]

Forward and backward of one step, Bernoulli, ``reduction="sum"``, the bench's IWAE shapes;
the two forms alternate within each round, and the medians over rounds are printed with
their ratio.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

import fastvae
from fastvae import backends
from fastvae import options as o


def step(loss_of, inputs):
    loss = loss_of(*inputs)
    torch.autograd.grad(loss, [inputs[1], inputs[2], inputs[3], inputs[4]])


def main(argv=None) -> int:
    p = o.Parser(prog="iwae_loss_sign.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="torch", choices=[n for n in backends.NAMES
                                                          if n != "auto"])
    p.add_argument("--rounds", type=o.positive_int, default=15)
    p.add_argument("--calls", type=o.positive_int, default=5, help="steps a timed sample")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend "
          f"{args.backend}; ms per fwd+bwd step, median of {args.rounds} rounds")
    forms = {"IWAELoss": fastvae.IWAELoss(reduction="sum", backend=args.backend),
             "-iwae_bound": lambda *a: -fastvae.iwae_bound(*a, reduction="sum",
                                                           backend=args.backend)}
    for b, d, l, k in ((256, 784, 32, 5), (256, 784, 32, 50), (4096, 784, 32, 5)):
        x = torch.rand(b, d).round()
        mu = torch.randn(b, l, requires_grad=True)
        lv = (0.5 * torch.randn(b, l)).requires_grad_()
        recon_k = (2 * torch.randn(k, b, d)).requires_grad_()
        z_k = (mu.detach() + torch.randn(k, b, l)).requires_grad_()
        inputs = (x, recon_k, mu, lv, z_k)
        times = {name: [] for name in forms}
        for fn in forms.values():   # warm-up
            step(fn, inputs)
        for _ in range(args.rounds):
            for name, fn in forms.items():
                t = time.perf_counter()
                for _ in range(args.calls):
                    step(fn, inputs)
                times[name].append((time.perf_counter() - t) / args.calls * 1e3)
        med = {name: statistics.median(v) for name, v in times.items()}
        print(f"B={b} D={d} L={l} K={k}: " + ", ".join(f"{n} {m:.2f}" for n, m in med.items())
              + f"; -iwae_bound / IWAELoss = {med['-iwae_bound'] / med['IWAELoss']:.2f}")
    return 0


if __name__ == "__main__":
    from fastvae.bench.extras import script_main
    sys.exit(script_main(main, "iwae_loss_sign.py"))

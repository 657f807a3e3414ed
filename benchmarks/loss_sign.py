"""A loss written two ways, timed side by side: fastvae's loss module (the sign and the
sum inside the fused op: backward gets grad_output 1 and scales nothing) against the
negated functional form (backward reads and writes every saved gradient once more).

    .venv/bin/python benchmarks/loss_sign.py [--op iwae|dmol] [--backend torch] [--rounds 15]
                                             [--device cpu|cuda]

``iwae``: ``fastvae.IWAELoss`` against ``-fastvae.iwae_bound``, Bernoulli,
``reduction="sum"``, the bench's IWAE shapes. ``dmol``:
``fastvae.DiscretizedLogisticMixtureNLLLoss`` against
``-fastvae.discretized_logistic_mixture_log_prob(...).sum()``, RGB, 10 components, the
bench's DMoL shapes. Forward and backward of one step; the two forms alternate within each
round, and the medians over rounds are printed with their ratio. On a GPU each sample
ends with a synchronize, so it times the kernels, not their launch.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

import fastvae
from fastvae import backends
from fastvae import options as o
from fastvae.bench.timing import sync


def step(loss_of, inputs, wrt):
    torch.autograd.grad(loss_of(*inputs), [inputs[i] for i in wrt])


def iwae_cases(backend, dev):
    forms = {"IWAELoss": fastvae.IWAELoss(reduction="sum", backend=backend),
             "-iwae_bound": lambda *a: -fastvae.iwae_bound(*a, reduction="sum",
                                                           backend=backend)}
    for b, d, l, k in ((256, 784, 32, 5), (256, 784, 32, 50), (4096, 784, 32, 5)):
        x = torch.rand(b, d, device=dev).round()
        mu = torch.randn(b, l, device=dev, requires_grad=True)
        lv = (0.5 * torch.randn(b, l, device=dev)).requires_grad_()
        recon_k = (2 * torch.randn(k, b, d, device=dev)).requires_grad_()
        z_k = (mu.detach() + torch.randn(k, b, l, device=dev)).requires_grad_()
        yield f"B={b} D={d} L={l} K={k}", forms, (x, recon_k, mu, lv, z_k), (1, 2, 3, 4)


def dmol_cases(backend, dev):
    op = fastvae.discretized_logistic_mixture_log_prob
    forms = {"DMoLNLLLoss": fastvae.DiscretizedLogisticMixtureNLLLoss(reduction="sum",
                                                                       backend=backend),
             "-op().sum()": lambda *a: -op(*a, backend=backend).sum()}
    for b, hw, m in ((16, 32, 10), (64, 32, 10)):
        x = torch.randint(0, 256, (b, 3, hw, hw), device=dev) / 255.0
        params = torch.randn(b, 10 * m, hw, hw, device=dev)
        params[:, m:] = params[:, m:].clamp(-4, 1)   # means and log-scales in range
        yield f"B={b} 3x{hw}x{hw} M={m}", forms, (x, params.requires_grad_()), (1,)


CASES = {"iwae": iwae_cases, "dmol": dmol_cases}


def main(argv=None) -> int:
    p = o.Parser(prog="loss_sign.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--op", default="iwae", choices=sorted(CASES))
    p.add_argument("--backend", default="torch", choices=[n for n in backends.NAMES
                                                          if n != "auto"])
    p.add_argument("--rounds", type=o.positive_int, default=15)
    p.add_argument("--calls", type=o.positive_int, default=5, help="steps a timed sample")
    p.add_argument("--device", type=o.device, default="cpu",
                   help="cpu, cuda or cuda:N (where a sample ends with a synchronize)")
    args = p.parse_args(argv)
    if torch.device(o.auto_device(args.device)).type not in ("cpu", "cuda"):
        p.error(f"--device {args.device}: only cpu and cuda are timed (synchronized)")
    try:
        dev = o.resolve_device(args.device)
        backends.select(args.backend, dev)
    except (ValueError, RuntimeError) as e:   # no such device; triton off a GPU
        p.error(str(e))
    torch.manual_seed(0)
    where = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {where}, backend {args.backend}; ms per fwd+bwd "
          f"step, median of {args.rounds} rounds")
    for label, forms, inputs, wrt in CASES[args.op](args.backend, dev):
        times = {name: [] for name in forms}
        for fn in forms.values():   # warm-up
            step(fn, inputs, wrt)
        order = list(forms.items())
        for r in range(args.rounds):
            # alternated: the form that runs second in a round always finds a warm cache
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                sync(str(dev))
                t = time.perf_counter()
                for _ in range(args.calls):
                    step(fn, inputs, wrt)
                sync(str(dev))
                times[name].append((time.perf_counter() - t) / args.calls * 1e3)
        (module, mod_ms), (negated, neg_ms) = [(n, statistics.median(v))
                                               for n, v in times.items()]
        print(f"{label}: {module} {mod_ms:.2f}, {negated} {neg_ms:.2f}; "
              f"{negated} / {module} = {neg_ms / mod_ms:.2f}")
    return 0


if __name__ == "__main__":
    from fastvae.bench.extras import script_main
    sys.exit(script_main(main, "loss_sign.py"))

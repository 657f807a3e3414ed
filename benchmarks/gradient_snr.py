"""Gradient-variance study: the signal-to-noise ratio of the encoder's gradient under the
standard, sticking-the-landing and DReG estimators, K in {1, 5, 50}, on a trained digits VAE.

    python benchmarks/gradient_snr.py                       # trains the default digits model first
    python benchmarks/gradient_snr.py --run runs/digits     # or studies a run of `fastvae train`

For each estimator and K, ``--draws`` independent noise draws each give one gradient of the
mini-batch mean of the IWAE bound ``L_K`` (K = 1: the Monte-Carlo ELBO) w.r.t. the encoder's
parameters, at the trained weights, on a fixed mini-batch of ``--batch`` test images. The
SNR of one parameter is ``|mean over draws| / standard deviation over draws``; the table
reports its average over the encoder's parameters (entries whose gradient is exactly 0 in
every draw, dead ReLU units, are left out and counted) and its median. Rainforth et al.
(2018) show the standard estimator's encoder SNR decays like 1/sqrt(K); Tucker et al.
(2018) that DReG's does not. STL at K = 1 is DReG at K = 1.

Writes ``OUT.json`` (every number and the settings) and ``OUT.png`` (SNR against K per
estimator, log-log) and prints a markdown table. Needs the train extra (matplotlib).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import fastvae
from fastvae.checkpoint import load_checkpoint
from fastvae.data import load_dataset
from fastvae.runs import restore_model

ESTIMATORS = ("standard", "stl", "dreg")
ENCODER_PREFIXES = ("encoder.", "enc_fc.", "to_stats.")  # the modules that make mu, logvar


def encoder_parameters(model):
    return [p for n, p in model.named_parameters() if n.startswith(ENCODER_PREFIXES)]


def snr(model, x, k: int, estimator: str, draws: int, seed: int, backend: str) -> dict:
    """Per-parameter |mean| / std of the encoder gradient over ``draws`` noise draws."""
    params = encoder_parameters(model)
    gen = torch.Generator().manual_seed(seed)
    total = sum(p.numel() for p in params)
    s1 = torch.zeros(total, dtype=torch.float64)
    s2 = torch.zeros(total, dtype=torch.float64)
    t0 = time.perf_counter()
    for _ in range(draws):
        bound = model.iwae_bound(x, k, estimator=estimator, reduction="mean", generator=gen,
                                 backend=backend)
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(bound, params)]).double()
        s1 += g
        s2 += g * g
    mean = s1 / draws
    var = (s2 - draws * mean * mean).clamp(min=0) / (draws - 1)
    alive = var > 0
    ratio = mean[alive].abs() / var[alive].sqrt()
    return {"k": k, "estimator": estimator, "mean_snr": float(ratio.mean()),
            "median_snr": float(ratio.median()), "parameters": int(alive.sum()),
            "dead": int((~alive).sum()), "seconds": time.perf_counter() - t0}


def trained_run(args) -> Path:
    """The run to study: --run, or a fresh `fastvae train` run with its defaults."""
    if args.run:
        return Path(args.run)
    from fastvae.train import train

    out = Path(tempfile.mkdtemp(prefix="fastvae-snr-")) / "run"
    print(f"training the default digits model ({args.epochs} epochs, objective "
          f"{args.objective}) into {out} ...", file=sys.stderr, flush=True)
    train({"out": str(out), "epochs": args.epochs, "objective": args.objective,
           "k": 1 if args.objective == "elbo" else 5, "iwae_k": 0, "progress": False,
           "seed": args.seed}, log=lambda *a, **kw: None)
    return out


def plot(rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    styles = {"standard": ("tab:gray", "o"), "stl": ("tab:blue", "s"), "dreg": ("tab:red", "^")}
    for est in ESTIMATORS:
        pts = sorted((r["k"], r["mean_snr"]) for r in rows if r["estimator"] == est)
        color, marker = styles[est]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                label={"standard": "standard", "stl": "STL (biased for K > 1)",
                       "dreg": "DReG"}[est])
    ks = sorted({r["k"] for r in rows})
    base = next(r["mean_snr"] for r in rows if r["estimator"] == "standard" and r["k"] == ks[0])
    ax.plot(ks, [base * math.sqrt(ks[0] / k) for k in ks], ls=":", color="tab:gray", lw=1,
            label=r"$\propto 1/\sqrt{K}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("K (importance samples)")
    ax.set_ylabel("encoder gradient SNR (mean over parameters)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="run folder of `fastvae train` (default: train one)")
    p.add_argument("--epochs", type=int, default=60, help="epochs when training (default 60)")
    p.add_argument("--objective", choices=["elbo", "iwae"], default="elbo",
                   help="objective when training (iwae: K=5, standard estimator)")
    p.add_argument("--k", type=lambda s: [int(v) for v in s.split(",")], default=[1, 5, 50],
                   help="comma list of K (default 1,5,50)")
    p.add_argument("--draws", type=int, default=1000, help="noise draws per point (default 1000)")
    p.add_argument("--batch", type=int, default=32, help="test images in the mini-batch")
    p.add_argument("--backend", default="torch", help="fastvae backend (default torch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default="benchmarks/gradient_snr",
                   help="writes OUT.json and OUT.png (default benchmarks/gradient_snr)")
    p.add_argument("--replot", metavar="JSON", default=None,
                   help="only redraw OUT.png from the numbers of an earlier run's JSON")
    args = p.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        plot(saved["rows"], Path(args.out).with_suffix(".png"), saved["settings"]["title"])
        return 0
    torch.set_num_threads(args.threads)
    run = trained_run(args)
    state = load_checkpoint(run)
    model = restore_model(state, run).eval()
    cfg = state["config"]
    x = load_dataset(cfg["dataset"], cfg.get("data_dir", "data")).test[:args.batch]
    rows = []
    for k in args.k:
        for est in ESTIMATORS:
            rows.append(snr(model, x, k, est, args.draws, args.seed + k, args.backend))
            r = rows[-1]
            print(f"K={k:3d} {est:8s} mean SNR {r['mean_snr']:.4f} median {r['median_snr']:.4f} "
                  f"({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
    trained = (f"{cfg.get('objective', 'elbo')}"
               + (f" K={cfg['k']}" if cfg.get("k", 1) > 1 else "") + f", {state['epoch']} epochs")
    title = (f"{cfg['dataset']} {cfg.get('model', 'mlp')} VAE, latent {cfg['latent']}, trained: "
             f"{trained}\n{args.draws} noise draws, mini-batch of {args.batch}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, out.with_suffix(".png"), title)
    with open(out.with_suffix(".json"), "w") as f:
        json.dump({"settings": {**vars(args), "run": str(run), "trained": trained, "title": title,
                                "torch": torch.__version__, "fastvae": fastvae.__version__},
                   "rows": rows}, f, indent=1)
    print(f"\n{title.replace(chr(10), '; ')}\n")
    print("| K | estimator | mean SNR | median SNR | x standard (mean) |")
    print("|---|---|---|---|---|")
    for r in rows:
        std = next(q["mean_snr"] for q in rows if q["k"] == r["k"] and q["estimator"] == "standard")
        print(f"| {r['k']} | {r['estimator']} | {r['mean_snr']:.4f} | {r['median_snr']:.4f} | "
              f"{r['mean_snr'] / std:.2f} |")
    dead = statistics.mean(r["dead"] for r in rows)
    print(f"\n({rows[0]['parameters'] + rows[0]['dead']} encoder parameters, {dead:.0f} always-zero "
          f"left out; wrote {out.with_suffix('.png')} and {out.with_suffix('.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

Writes ``OUT.json`` (every number and the settings; first, atomically) and ``OUT.png`` (SNR
against K per estimator, log-log; not with ``--no-plot``) and prints a markdown table. The
flags, the backend, ``--run`` and matplotlib (for the plot, and for training, which draws
the run's pictures) are checked before any work; a model trained here is removed at the end.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import fastvae
from fastvae import options as o
from fastvae.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, write_json
from fastvae.data import DataError, load_dataset
from fastvae.plots import save_figure
from fastvae.runs import check_config, restore_model
from fastvae.validation import DMOL

ESTIMATORS = ("standard", "stl", "dreg")
ENCODER_PREFIXES = ("encoder.", "enc_fc.", "to_stats.")  # the modules that make mu, logvar


def estimators_for(cfg: dict) -> tuple:
    """The estimators a run's model takes: DReG's weights need a likelihood whose IWAE
    bound has them (not the discretized mixture's, ``fastvae.dmol_training``)."""
    if cfg.get("likelihood") == DMOL:
        return tuple(e for e in ESTIMATORS if e != "dreg")
    return ESTIMATORS


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


def train_into(args, out: Path) -> None:
    """A fresh `fastvae train` run with its defaults, into ``out``."""
    from fastvae.train import train

    print(f"training the default digits model ({args.epochs} epochs, objective "
          f"{args.objective}) into {out} ...", file=sys.stderr, flush=True)
    train({"out": str(out), "epochs": args.epochs, "objective": args.objective,
           "k": 1 if args.objective == "elbo" else 5, "iwae_k": 0, "progress": False,
           "seed": args.seed}, log=lambda *a, **kw: None)


def plot(rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    styles = {"standard": ("tab:gray", "o"), "stl": ("tab:blue", "s"), "dreg": ("tab:red", "^")}
    for est in ESTIMATORS:
        pts = sorted((r["k"], r["mean_snr"]) for r in rows if r["estimator"] == est)
        if not pts:   # an estimator the run's model does not take
            continue
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
    save_figure(fig, path, dpi=120)  # atomic, as every picture of a run; closes fig


def draws(value) -> int:
    """--draws: the SNR divides by a standard deviation over the draws, which one draw
    does not have (every entry NaN, then a plot that cannot be log-scaled)."""
    n = o.positive_int(value)
    if n < 2:
        raise o.BadValue(f"must be at least 2 (the SNR divides by the standard deviation over "
                         f"the draws), got {n}")
    return n


def parser():
    p = o.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="run folder of `fastvae train` (default: train one)")
    p.add_argument("--epochs", type=o.positive_int, default=60,
                   help="epochs when training (default 60)")
    p.add_argument("--objective", choices=["elbo", "iwae"], default="elbo",
                   help="objective when training (iwae: K=5, standard estimator)")
    p.add_argument("--k", type=o.positive_ints, default=[1, 5, 50],
                   help="comma list of K (default 1,5,50)")
    p.add_argument("--draws", type=draws, default=1000,
                   help="noise draws per point, at least 2 (default 1000)")
    p.add_argument("--batch", type=o.positive_int, default=32,
                   help="test images in the mini-batch")
    p.add_argument("--backend", default="torch", help="fastvae backend (default torch)")
    p.add_argument("--seed", type=o.seed, default=0)
    p.add_argument("--threads", type=o.positive_threads, default=1,
                   help="torch threads (default 1)")
    p.add_argument("--out", type=o.folder, default="benchmarks/gradient_snr",
                   help="writes OUT.json and OUT.png (default benchmarks/gradient_snr)")
    p.add_argument("--no-plot", action="store_true",
                   help="write OUT.json only (with --run, matplotlib is then not needed)")
    p.add_argument("--replot", metavar="JSON", default=None,
                   help="only redraw OUT.png from the numbers of an earlier run's JSON")
    return p


def check(p, args):
    """Every refusal before any work, as one usage line: a study takes minutes, and its
    numbers used to be lost to a missing matplotlib or folder at the end."""
    if args.no_plot and args.replot:
        p.error("--no-plot and --replot: --replot only draws the plot")
    if not args.no_plot or not args.run:  # the plot, or training's own pictures
        try:
            import matplotlib  # noqa: F401  (an import, not find_spec: a broken one counts)
        except ImportError as e:
            why = "to draw OUT.png" if args.run else "to train (the run's pictures)"
            p.error(f"needs matplotlib {why}, and it does not import ({e}): "
                    "pip install 'fastvae[train]'" + (", or --no-plot" if args.run else ""))
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (() if args.no_plot else (".png",)) + (() if args.replot else (".json",)):
            o.file_to_write(str(out.with_suffix(suffix)))
    except (OSError, o.BadValue) as e:
        p.error(f"argument --out: {e}")
    if args.replot:
        if not os.path.isfile(args.replot):
            p.error(f"argument --replot: no file {args.replot}")
        return
    try:
        fastvae.backends.select(args.backend, torch.device("cpu"))  # the model is on the CPU
    except (ValueError, RuntimeError) as e:
        p.error(f"argument --backend: {e}")
    if args.run:
        try:
            state = load_checkpoint(args.run)
        except CheckpointError as e:
            p.error(f"argument --run: {e}")
        if state.get("config", {}).get("model") == "hvae":
            p.error(f"argument --run: {args.run} is an hvae run; the study takes an mlp or "
                    "conv run (one latent group, the encoder the estimators' gradients reach)")
        try:
            return (state, *open_run(state, args.run))
        except (CheckpointError, DataError) as e:
            p.error(f"argument --run: {e}")
    return None


def open_run(state, run):
    """(the model in eval mode, its test images): what :func:`study` reads of a run, read
    here before any work, so that a config that builds no model, weights that do not fit
    it, or test data not found (a run moved away from its data) is a usage error, not a
    traceback."""
    check_config(state, checkpoint_path(run), ("dataset", "data_dir"), "to study the run")
    model = restore_model(state, run).eval()
    cfg = state["config"]
    return model, load_dataset(cfg["dataset"], cfg.get("data_dir", "data")).test


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    opened = check(p, args)
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        plot(saved["rows"], Path(args.out).with_suffix(".png"), saved["settings"]["title"])
        return 0
    torch.set_num_threads(args.threads)
    if args.run:
        return study(args, *opened)
    # trained here, into a temporary folder: nobody else would remove it, also when the
    # training fails or is interrupted
    tmp = Path(tempfile.mkdtemp(prefix="fastvae-snr-"))
    try:
        train_into(args, tmp / "run")
        state = load_checkpoint(tmp / "run")
        return study(args, state, *open_run(state, tmp / "run"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def study(args, state, model, test) -> int:
    """The study of a run opened by :func:`open_run` (``state`` its checkpoint)."""
    cfg = state["config"]
    x = test[:args.batch]
    rows = []
    for k in args.k:
        for est in estimators_for(cfg):
            rows.append(snr(model, x, k, est, args.draws, args.seed + k, args.backend))
            r = rows[-1]
            print(f"K={k:3d} {est:8s} mean SNR {r['mean_snr']:.4f} median {r['median_snr']:.4f} "
                  f"({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
    trained = (f"{cfg.get('objective', 'elbo')}"
               + (f" K={cfg['k']}" if cfg.get("k", 1) > 1 else "") + f", {state['epoch']} epochs")
    title = (f"{cfg['dataset']} {cfg.get('model', 'mlp')} VAE, latent {cfg['latent']}, trained: "
             f"{trained}\n{args.draws} noise draws, mini-batch of {args.batch}")
    out = Path(args.out)
    # the numbers first (minutes of work), atomically; the plot is drawn from them after
    write_json({"settings": {**vars(args), "run": args.run or "trained here, then removed",
                             "trained": trained, "title": title, "torch": torch.__version__,
                             "fastvae": fastvae.__version__}, "rows": rows},
               out.with_suffix(".json"))
    print(f"\n{title.replace(chr(10), '; ')}\n")
    print("| K | estimator | mean SNR | median SNR | x standard (mean) |")
    print("|---|---|---|---|---|")
    for r in rows:
        std = next(q["mean_snr"] for q in rows if q["k"] == r["k"] and q["estimator"] == "standard")
        print(f"| {r['k']} | {r['estimator']} | {r['mean_snr']:.4f} | {r['median_snr']:.4f} | "
              f"{r['mean_snr'] / std:.2f} |")
    dead = statistics.mean(r["dead"] for r in rows)
    print(f"\n({rows[0]['parameters'] + rows[0]['dead']} encoder parameters, {dead:.0f} always-zero "
          f"left out; wrote {out.with_suffix('.json')})")
    if args.no_plot:
        return 0
    try:
        plot(rows, out.with_suffix(".png"), title)
    except (ValueError, OSError) as e:  # e.g. every SNR NaN: nothing to log-scale
        print(f"gradient_snr.py: error: cannot draw {out.with_suffix('.png')} ({e}); the numbers "
              f"are in {out.with_suffix('.json')} (--replot redraws it)", file=sys.stderr)
        return 1
    print(f"wrote {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    from fastvae.bench.extras import script_main
    sys.exit(script_main(main, "gradient_snr.py"))

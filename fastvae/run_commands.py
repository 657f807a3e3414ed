"""The ``fastvae eval`` and ``fastvae sample`` commands: a saved run loaded onto a device,
then evaluated on its test data or drawn from (:mod:`fastvae.cli` parses their flags)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from . import options as o


def _opened_run(args):
    """(checkpoint dict, model in eval mode on its device, device), with a given --threads
    set as train sets it (main puts torch's own count back after the command). Without
    the flag torch keeps its own count: an IWAE estimate's blocks are wide enough for
    threads, unlike the training batches train's auto rule was measured on."""
    from .options import resolve_device
    from .runs import open_run
    from .train import set_threads

    device = resolve_device(args.device)
    state, model = open_run(args.run, device)
    if args.threads is not None:
        set_threads({"threads": args.threads}, device, math.prod(model.data_shape))
    return state, model, device


def evaluate_run(args):
    """``fastvae eval RUN``: the run's test ELBO, KL and IWAE NLL, printed or as JSON."""
    from .checkpoint import checkpoint_path, json_text
    from .data import load_run_dataset, run_data_source
    from .dmol_training import add_bpd, bpd_text, prepare
    from .evaluation import evaluate, iwae_nll, nll_fields, nll_text
    from .run_data import check_elbo_finite, check_run_data, data_changed
    from .runs import EVAL_CONFIG, check_config, run_backend

    state, model, device = _opened_run(args)
    check_config(state, checkpoint_path(args.run), EVAL_CONFIG, "to evaluate the run")
    cfg = dict(state["config"])
    if args.backend is not None:
        cfg["backend"] = args.backend
    # the flag's own choice is named as the flag, not as the run's
    run_backend(cfg, device, None if args.backend is not None else
                f"pass --backend auto (or torch) to evaluate it on {device}")
    if args.data_dir is not None:
        cfg["dataset"], cfg["data_dir"] = run_data_source(cfg["dataset"], args.data_dir)
    data = load_run_dataset(cfg["dataset"], cfg["data_dir"], run_shape=cfg.get("data_shape"))
    # the files may have changed since training: a traceback or a meaningless number else
    changed = data_changed(data, cfg.get("data_digest"), checkpoint_path(args.run))
    check_run_data(data, model.likelihood, cfg.get("data_shape"), checkpoint_path(args.run),
                   changed=changed)
    test = prepare(data, model.likelihood).test
    if args.limit is not None:
        test = test[:args.limit]
    m = evaluate(model, test, cfg, device)
    check_elbo_finite(m, test, cfg["dataset"], "the model's",
                      *([f"on this data: {changed}"] if changed else []))
    if changed:   # eval has no other data to take: it says so and goes on
        print(f"fastvae eval: note: {changed}; evaluated on it", file=sys.stderr)
    m.update(nll_fields("iwae_nll", iwae_nll(model, test, args.k, device, cfg["seed"],
                                             backend=cfg["backend"],
                                             progress=args.progress is not False)
                        if args.k > 0 else None))
    m.update(k=args.k, n_test=len(test), epoch=state["epoch"])
    m = add_bpd(m, model)
    if args.json:
        print(json_text(m))
    else:
        nll = (nll_text(m["iwae_nll"], args.k, 3) if m["iwae_nll"] is not None
               else "no IWAE NLL (--k 0)")
        groups = m.get("kl_groups")
        per_group = (" [KL per group: " + ", ".join(f"{v:.3f}" for v in groups) + "]"
                     if groups else "")
        print(f"{args.run} (epoch {state['epoch']}, {len(test)} test images): test elbo "
              f"{m['elbo']:.3f} (kl {m['kl']:.3f}, rec {m['rec']:.3f}), {nll}{bpd_text(m)}"
              f"{per_group}")
    return 0


def sample_run(args):
    """``fastvae sample RUN``: ``--n`` images drawn from the prior, in one picture."""
    from .runs import check_extras

    check_extras("sample", pictures=True)
    from . import plots
    from .checkpoint import checkpoint_path

    state, model, device = _opened_run(args)
    shape = (args.n, *model.data_shape)
    width, height = plots.grid_size(shape, ncol=args.ncol)
    if width * height > plots.MAX_UPSCALED_PIXELS:   # refused before decoding any
        fits = plots.most_images(model.data_shape, args.ncol)
        raise ValueError(f"--n {args.n} makes a picture of {width} x {height} px, past the "
                         f"{plots.MAX_UPSCALED_PIXELS / 2**20:g} megapixels a picture may have; "
                         + (f"draw at most {fits} (at --ncol {args.ncol})" if fits else
                            "a single image of this data is that large already"))
    out = getattr(args, "out", None)
    if not out:   # --out was checked as it was parsed; the default is checked here, as early
        try:
            out = o.file_to_write(str(checkpoint_path(args.run).parent
                                      / f"samples-{args.n}-seed{args.seed}.png"))
        except o.BadValue as e:
            raise o.BadValue(f"{e}; pass --out to write the picture elsewhere") from None
    out = Path(out)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    # chunk by chunk onto the CPU: the device holds one chunk's decoding, not n images
    images = torch.empty(args.n, *model.data_shape)
    done = 0
    for chunk in model.sample_chunks(args.n, generator=gen):
        images[done:done + len(chunk)] = chunk.float().cpu()
        done += len(chunk)
    plots.save_grid(images, out, ncol=args.ncol,
                    value_range=plots.saved_picture_range(state["config"]))
    print(f"wrote {args.n} samples to {out} ({width} x {height} px)")
    return 0

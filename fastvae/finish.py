"""The end of a ``fastvae train`` run (rank 0): the final test IWAE estimate, the
pictures and ``metrics.json``, and the line that says it is done."""
from __future__ import annotations

import time

import torch

import fastvae

from . import dmol_training as dmol, stops
from .checkpoint import write_json
from .evaluation import iwae_nll, nll_fields, nll_text


def pictures(cfg: dict) -> dict:
    """The pictures :func:`finish` draws for ``cfg``'s model and ``data_shape``, each with
    how many images it holds: as many as ``fastvae sample`` would put in one picture (large
    images: fewer, or no picture at all)."""
    from . import plots

    shape = tuple(cfg["data_shape"])
    counts = {"reconstructions.png": plots.most_reconstructions(shape),
              "samples.png": min(64, plots.most_images(shape))}
    if (cfg["latent"] == 2 and cfg["model"] != "hvae"
            and plots.most_images(shape, 15) >= 225):   # the 15 x 15 traversal
        counts["latent.png"] = 225
    return {name: n for name, n in counts.items() if n}


def written(cfg: dict) -> list:
    """The files :func:`finish` writes for ``cfg``, so that a resumed run can check them
    before it trains (the curves need one epoch, which every run that reaches finish has)."""
    return [*pictures(cfg), "curves.png", "metrics.json"]


def finish(core, data, cfg, device, out, history, initial, backend_name, world, session_wall,
           say):
    """Final IWAE estimate, pictures and metrics.json (rank 0)."""
    from . import plots

    core.eval()
    t0 = time.perf_counter()
    nll = (iwae_nll(core, data.test, cfg["iwae_k"], device, cfg["seed"], backend=cfg["backend"],
                    progress=cfg["progress"]) if cfg["iwae_k"] else None)
    iwae_s = time.perf_counter() - t0
    last_backend = fastvae.last_backend()
    gen = torch.Generator(device=device).manual_seed(cfg["seed"] + 4)
    drawn = pictures(cfg)
    x = data.test[:drawn.get("reconstructions.png", 0)].to(device)
    shown = dict(value_range=cfg["picture_range"])
    with torch.no_grad():
        if len(x):
            plots.save_reconstructions(x.cpu(), core.reconstruct(x).float().cpu(),
                                       out / "reconstructions.png", **shown)
        if "samples.png" in drawn:
            plots.save_grid(core.sample(drawn["samples.png"], generator=gen).float().cpu(),
                            out / "samples.png", **shown)
        if "latent.png" in drawn:
            plots.save_grid(plots.latent_traversal(core).float().cpu(), out / "latent.png",
                            ncol=15, **shown)
    if history:
        plots.save_curves(history, out / "curves.png")
    final_test = history[-1]["test"] if history else initial
    metrics = {
        "config": cfg, "fastvae": fastvae.__version__, "torch": torch.__version__,
        "backend": last_backend, "backend_selected": backend_name, "device": str(device),
        "world_size": world, "initial_test": initial, "epochs": history,
        "final": dmol.add_final_bpd({"test_elbo": final_test["elbo"] if final_test else None,
                  "test_kl": final_test["kl"] if final_test else None,
                  "test_rec": final_test["rec"] if final_test else None,
                  "test_kl_groups": final_test.get("kl_groups") if final_test else None,
                  **nll_fields("test_iwae_nll", nll), "iwae_k": cfg["iwae_k"],
                  "iwae_s": iwae_s}, core),
        # the whole run's epochs (training and test evaluation), resumes included: a
        # resumed run's own loop alone would read as the run's time
        "train_wall_s": sum(h.get("wall_s_with_eval", h.get("wall_s", 0.0)) for h in history),
        "session_wall_s": session_wall,
    }
    stops.finished()   # only the last file is left: a stop from here on lets it be written
    write_json(metrics, out / "metrics.json")
    nll_txt = ((f", test {nll_text(nll, cfg['iwae_k'], 2)}" if nll is not None else "")
               + dmol.bpd_text(metrics["final"], prefix="test_"))
    if final_test:
        say(f"done: test elbo {final_test['elbo']:.2f}{nll_txt}; pictures and metrics in {out}")
    return metrics

"""What a run trains with: a fresh run's config as given, a resumed run's from its
checkpoint with the settings that belong to this invocation (:data:`RUNTIME_KEYS`) and a
new ``--lr`` (:data:`RESUME_OVERRIDES`) taken from the command line."""
from __future__ import annotations

from pathlib import Path

from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, require
from .data import stored_name
from .runs import RESUME_KEYS, RunFolderError

# The files a run writes in its folder besides the checkpoint (train._finish).
RUN_FILES = ("metrics.json", "reconstructions.png", "samples.png", "curves.png", "latent.png")
# Settings a resumed run takes from the command line instead of the checkpoint.
RUNTIME_KEYS = ("epochs", "device", "out", "progress", "resume", "data_dir", "iwae_k",
                "download", "threads")
# Settings a resumed run may change, with a note (a lower --lr after a divergence).
RESUME_OVERRIDES = ("lr",)


def prepare_config(given: dict, full: dict, log) -> tuple[dict, dict | None]:
    """On --resume take the saved settings (bar RUNTIME_KEYS and RESUME_OVERRIDES) and
    the checkpoint; a fresh run refuses a folder that already holds one."""
    ckpt_file = Path(full["out"]) / CHECKPOINT_NAME
    if not full["resume"]:
        if ckpt_file.exists():
            raise CheckpointError(f"{ckpt_file} already exists; pass --resume to continue that "
                                  "run, or choose another --out")
        # what a run writes: a folder holding any of them (without a checkpoint) is not
        # taken over either, or a fresh run would overwrite them
        held = [n for n in RUN_FILES if (ckpt_file.parent / n).exists()]
        if held:
            raise RunFolderError(f"{ckpt_file.parent} already holds {', '.join(held)}, which a "
                                 "run writes; choose another --out (or move them)")
        return dict(full, dataset=stored_name(full["dataset"])), None
    state = load_checkpoint(ckpt_file)
    require(state, ckpt_file, RESUME_KEYS, "to resume")
    done = int(state["epoch"])
    # --epochs equal to what is done finishes a run stopped after its last epoch (in the
    # final estimate or the pictures: no metrics.json); otherwise there is nothing to do,
    # and a finished run's metrics.json would be rewritten
    finished = (ckpt_file.parent / "metrics.json").exists()
    if full["epochs"] < done or (full["epochs"] == done and finished):
        default = "" if given.get("epochs") is not None else " (the default)"
        raise ValueError(f"--epochs {full['epochs']}{default}: the run in {ckpt_file.parent} "
                         f"has already trained {done} epoch{'s' if done != 1 else ''}; --epochs "
                         f"is the total to reach, so it must exceed {done} to continue the run")
    if full["epochs"] == done:
        log(f"finishing the run in {ckpt_file.parent}: its {done} epochs are trained, its "
            "final estimate, pictures and metrics.json are not")
    saved = dict(state["config"])
    changed = [k for k in given if k not in RUNTIME_KEYS and given[k] is not None
               and k in saved and given[k] != saved[k]]
    for k in RESUME_OVERRIDES:
        if k in changed:
            log(f"resuming with --{k} {given[k]:g} (the checkpoint had {saved[k]:g})")
            saved[k] = given[k]
            changed.remove(k)
    if changed:
        log(f"resuming: using the checkpoint's {', '.join(changed)} (command-line values ignored)")
    saved.update({k: full[k] for k in RUNTIME_KEYS})
    return saved, state

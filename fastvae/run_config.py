"""What a run trains with: a fresh run's config as given, a resumed run's from its
checkpoint with the settings that belong to this invocation (:data:`RUNTIME_KEYS`) and a
new ``--lr`` or ``--backend`` (:data:`RESUME_OVERRIDES`) taken from the command line."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint,
                         refuse_broken_checkpoint, require, run_files_in)
from .data import IDX_NAMES, check_dataset_name, run_data_source, stored_name
from .options import as_listed
from .runs import RESUME_KEYS, SAVED_KINDS, RunFolderError, check_config, check_outputs
from .validation import MAX_COUNT

# Settings a resumed run takes from the command line instead of the checkpoint.
RUNTIME_KEYS = ("epochs", "device", "out", "progress", "resume", "data_dir", "iwae_k",
                "download", "threads")
# Of those, the ones that describe the run rather than this invocation (how long it
# trains, where its data lies, how far its final estimate goes, the thread count its sums
# were ordered by): a resume without the flag keeps the checkpoint's, since the flag's
# default would silently retarget the run (60 epochs, ./data, a K=1000 estimate after a
# run started with --iwae-k 0, a continuation that is not bit-for-bit).
RUN_KEYS_UNLESS_GIVEN = ("epochs", "data_dir", "iwae_k", "threads")
# Settings a resumed run may change, with a note (a lower --lr after a divergence; another
# backend for another device: a run trained with "triton" goes on on a CPU with "torch";
# --no-compile on a machine without a C++ compiler, at the cost of a continuation that is
# not bit for bit, since inductor draws its noise differently).
RESUME_OVERRIDES = ("lr", "backend", "compile")


def resume_command_flags(given: dict, resume: bool, skip=()) -> list:
    """The flags a command that continues the run must repeat: the target and lr asked
    for, and on a resume what it was given besides (the final estimate's K, ...), since
    the last checkpoint may still hold the old ones."""
    keys = RUN_KEYS_UNLESS_GIVEN + RESUME_OVERRIDES if resume else ("epochs", "lr")
    flags = []
    for k in keys:
        if k in skip or given.get(k) is None:
            continue
        flag = k.replace("_", "-")
        if isinstance(given[k], bool):   # --compile / --no-compile take no value
            flags.append(f"--{'' if given[k] else 'no-'}{flag}")
        else:
            flags += [f"--{flag}", str(given[k])]
    return flags


def check_data_flags(cfg: dict, given: dict) -> None:
    """ValueError for --download or a given --data-dir with a dataset that reads neither
    (digits, an array file): ignoring them would let the user believe the data came from
    torchvision, or from that folder. An unknown dataset is said first: a mistyped name
    would else be told to drop the flag it needs."""
    check_dataset_name(cfg["dataset"])
    if cfg["dataset"] in IDX_NAMES:
        return
    only = f"only {' and '.join(IDX_NAMES)} are"
    if cfg.get("download"):
        raise ValueError(f"--download: the dataset {cfg['dataset']} is not downloaded ({only}); "
                         "drop --download")
    if given.get("data_dir") is not None:
        raise ValueError(f"--data-dir: the dataset {cfg['dataset']} is not read from a data "
                         f"folder ({only}); drop --data-dir")


def _stored_data_dir(cfg: dict):
    # absolute, as data.stored_name keeps an array file: eval and --resume read the
    # config from whatever folder they are started in
    if cfg["dataset"] in IDX_NAMES and cfg.get("data_dir") is not None:
        return os.path.abspath(cfg["data_dir"])
    return cfg.get("data_dir")


def _refuse_no_more_epochs(given: dict, epochs: int, done: int, folder, finished: bool):
    """ValueError when a resume to ``epochs`` has nothing to do (see prepare_config)."""
    if epochs > done or (epochs == done and not finished):
        return
    s = "s" if done != 1 else ""
    if given.get("epochs") is None:
        raise ValueError(f"the run in {folder} is finished: it has trained its {done} epoch{s}; "
                         f"pass --epochs with a total above {done} to train it further")
    raise ValueError(f"--epochs {epochs}: the run in {folder} has already trained {done} "
                     f"epoch{s}; --epochs is the total to reach, so it must exceed {done} to "
                     "continue the run")


def _finished(folder: Path, done: int) -> bool:
    """Whether the run in ``folder`` wrote its metrics.json after its epoch ``done``. A
    resumed run stopped in its final stage still holds the metrics.json of the run it
    continued, for fewer epochs: not finished. One this cannot read counts as finished
    (it is left as it is)."""
    path = folder / "metrics.json"
    if not path.exists():
        return False
    try:
        epochs = json.loads(path.read_text())["epochs"]
        return not epochs or int(epochs[-1]["epoch"]) >= done
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return True


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def prepare_config(given: dict, full: dict, log) -> tuple[dict, dict | None]:
    """On --resume take the saved settings (bar RUNTIME_KEYS and RESUME_OVERRIDES, and
    RUN_KEYS_UNLESS_GIVEN only where given) and the checkpoint; a fresh run refuses a
    folder that already holds one."""
    ckpt_file = Path(full["out"]) / CHECKPOINT_NAME
    if not full["resume"]:
        # a fresh run would write its checkpoint over the link, losing where the run is
        refuse_broken_checkpoint(ckpt_file, fix=(
            "to go on with that run, put the file back and pass --resume; to start a new "
            "one, remove the link or choose another --out"))
        if ckpt_file.is_dir():
            raise CheckpointError(f"{ckpt_file} is a folder, not a checkpoint file; move it "
                                  "away, or choose another --out")
        if ckpt_file.exists():
            raise CheckpointError(f"{ckpt_file} already exists; pass --resume to continue that "
                                  "run, or choose another --out")
        # what a run writes: a folder holding any of them (without a checkpoint) is not
        # taken over either, or a fresh run would overwrite them
        held = run_files_in(ckpt_file.parent)
        if held:
            raise RunFolderError(f"{ckpt_file.parent} already holds {', '.join(held)}, which a "
                                 "run writes; choose another --out (or move them)")
        cfg = dict(full, dataset=stored_name(full["dataset"]))
        return dict(cfg, data_dir=_stored_data_dir(cfg)), None
    refuse_broken_checkpoint(ckpt_file, " to resume")
    if not ckpt_file.exists():   # the checkpoint's own advice, `fastvae train --out DIR`,
        # would drop the flags this command was given: a run on an array file trains digits
        held = run_files_in(ckpt_file.parent)
        raise CheckpointError(
            f"no checkpoint at {ckpt_file} to resume; " + (
                f"its folder holds {', '.join(held)}, which a new run there would overwrite: "
                "start the run in another folder: this command without --resume, with "
                "another --out"
                if held else "start the run with this command without --resume"))
    state = load_checkpoint(ckpt_file)
    require(state, ckpt_file, RESUME_KEYS, "to resume")
    check_config(state, ckpt_file, SAVED_KINDS, "to resume")
    saved = as_listed(state["config"])   # an older run kept hidden=256 as given
    full = dict(full, **{k: saved[k] for k in RUN_KEYS_UNLESS_GIVEN
                         if given.get(k) is None and saved.get(k) is not None})
    done = int(state["epoch"])
    if done > MAX_COUNT:   # the next check would ask for an --epochs above it, refused
        raise CheckpointError(f"{ckpt_file}: its epoch cannot be resumed: must be at most "
                              f"{MAX_COUNT} (2**31 - 1), the most --epochs trains to, got {done}")
    # a metrics.json folder reads as a finished run below (it cannot be read), which would
    # ask for --epochs and name the folder only once given it: the folder first, as with
    # --epochs (the other files the run writes: train's check_outputs, before it trains)
    check_outputs(ckpt_file.parent, ["metrics.json"])
    # --epochs equal to what is done finishes a run stopped after its last epoch (in the
    # final estimate or the pictures: no metrics.json of that epoch); otherwise there is
    # nothing to do, and a finished run's metrics.json would be rewritten
    _refuse_no_more_epochs(given, full["epochs"], done, ckpt_file.parent,
                           finished=_finished(ckpt_file.parent, done))
    if full["epochs"] == done:
        log(f"finishing the run in {ckpt_file.parent}: its {done} epochs are trained, its "
            "final estimate, pictures and metrics.json are not")
    # a data file as the config keeps it (absolute): the same file typed relatively is
    # the checkpoint's dataset
    changed = [k for k in given if k not in RUNTIME_KEYS and given[k] is not None
               and k in saved and (stored_name(given[k]) if k == "dataset" else given[k])
               != saved[k]]
    for k in RESUME_OVERRIDES:
        if k in changed:
            if isinstance(given[k], bool):   # --compile / --no-compile
                log(f"resuming with --{'' if given[k] else 'no-'}{k} (the checkpoint had "
                    f"--{'' if saved[k] else 'no-'}{k}; inductor draws its own noise, so "
                    "the run does not go on bit for bit)")
            else:
                log(f"resuming with --{k} {_shown(given[k])} (the checkpoint had "
                    f"{_shown(saved[k])})")
            saved[k] = given[k]
            changed.remove(k)
    if changed:
        log(f"resuming: using the checkpoint's {', '.join(changed)} (command-line values ignored)")
    saved.update({k: full[k] for k in RUNTIME_KEYS})
    if given.get("data_dir") is not None:
        was = saved["dataset"]
        saved["dataset"], saved["data_dir"] = run_data_source(was, given["data_dir"])
        if saved["dataset"] != was:   # kept in the checkpoint: the next resume needs no flag
            log(f"resuming on {saved['dataset']} (the run was trained on {was})")
    check_data_flags(saved, dict(given, data_dir=None))
    return dict(saved, data_dir=_stored_data_dir(saved)), state

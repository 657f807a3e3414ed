"""Run folders (claimed, locked, checked writable) and what is restored from them: the
model a checkpoint describes.

Everything that can be wrong with a checkpoint's content is a :class:`CheckpointError`
naming the file, so the command prints one line instead of a ``KeyError`` or a
``size mismatch`` traceback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from . import ranks
from ._durable import fsync_parents
from .checkpoint import (CHECKPOINT_NAME, CheckpointError, broken_link, checkpoint_path,
                         load_checkpoint, os_words, remove_stale_temps, temp_name)
from .models import build_model
from .options import TRAIN_CHOICES, BadValue, check_train_config, folder, resolve_device
from .options import seed as check_seed
from .options import device as device_name
from .run_data import check_weights_finite
from .validation import type_name

# What build_model cannot default: a checkpoint's config must hold these.
MODEL_KEYS = ("data_shape", "latent")
# The config's sizes of a model, checked before it is built.
MODEL_SIZE_KEYS = ("latent", "hidden", "channels", "groups", "n_mix")
# What --resume needs beyond the weights.
RESUME_KEYS = ("optimizer", "rng", "history")

_NUMBER = (int, float)
# The settings read from a saved config by name, without a default, and the kinds they
# must be (a run saves every key of train.default_config; older runs lack a few others,
# which are read with one): eval reads EVAL_CONFIG, --resume all of them.
SAVED_KINDS = {"dataset": str, "data_dir": (str, type(None)), "seed": int, "backend": str,
               "model": str, "likelihood": str, "kl": str, "lr": _NUMBER, "beta": _NUMBER,
               "batch_size": int, "amp": bool, "compile": bool}
EVAL_CONFIG = ("dataset", "data_dir", "seed", "backend")


def check_config(state: dict, path, keys, purpose: str) -> None:
    """CheckpointError naming ``path`` and the first of ``keys`` its config lacks, holds
    as another kind than :data:`SAVED_KINDS` says (a bool is no number here), holds as
    a text outside ``options.TRAIN_CHOICES`` or holds a seed out of range, instead of a
    KeyError, an AttributeError or an OverflowError where the value is used, or a message
    that does not say which file."""
    config = state["config"]   # a dict: load_checkpoint checked it
    for key in keys:
        if key not in config:
            raise CheckpointError(f"{path}: its config lacks '{key}', needed {purpose}; the "
                                  "file is incomplete")
        value, kind = config[key], SAVED_KINDS[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            names = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
            raise CheckpointError(f"{path}: its config's {key} is {value!r}, not {names}; the "
                                  "file was not written by fastvae train")
        if key in TRAIN_CHOICES and value not in TRAIN_CHOICES[key]:
            raise CheckpointError(f"{path}: its config's {key} is {value!r}, not one of "
                                  f"{TRAIN_CHOICES[key]}; the file was not written by fastvae "
                                  "train")
        if key == "seed" and value is not None:
            try:
                check_seed(value)
            except BadValue as e:
                raise CheckpointError(f"{path}: its config's seed {e}; the file was not "
                                      "written by fastvae train") from None


def load_weights(model: torch.nn.Module, weights, path) -> None:
    """``model.load_state_dict(weights)``, or a CheckpointError naming ``path``."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        detail = [line.strip() for line in str(e).splitlines() if line.strip()]
        first = detail[1] if len(detail) > 1 else (detail[0] if detail else type(e).__name__)
        raise CheckpointError(f"{path}: the weights do not match the model its config "
                              f"describes ({first[:300]})") from None


def load_run(run, device="cpu") -> torch.nn.Module:
    """The trained model of a ``fastvae train`` run, as ``fastvae.load_run``: ``run`` its
    folder (or its checkpoint.pt), in eval mode on ``device`` (what ``--device`` takes:
    "auto", "cpu", "cuda", "cuda:N", "mps", or a torch.device): its ``sample(n)``,
    ``reconstruct(x)`` and losses are the run's (eval mode changes none of them: the
    losses and ``sample`` draw noise in it too, :mod:`fastvae.models`). A missing, damaged
    or foreign checkpoint, or weights that are not finite, is a
    :class:`~fastvae.checkpoint.CheckpointError` naming the file and what is wrong; a
    device torch does not see, a ValueError; a ``run`` that is no str or os.PathLike, a
    TypeError."""
    if isinstance(run, str):   # "" ($RUN unset) would load the current folder's run
        try:
            folder(run)
        except BadValue as e:
            raise ValueError(f"run {e}") from None
    elif not isinstance(run, os.PathLike):   # pathlib's own error names no argument
        raise TypeError(f"run must be a run folder or its checkpoint file (a str or "
                        f"os.PathLike), got {type_name(run)}")
    try:
        where = resolve_device(device_name(str(device)), flag="device")
    except BadValue as e:
        raise ValueError(f"device {e}") from None
    return open_run(run, where)[1]


def open_run(run, device: torch.device) -> tuple[dict, torch.nn.Module]:
    """(the checkpoint's dict, its model in eval mode on ``device``): what :func:`load_run`
    and the eval and sample commands restore, after checking their own arguments."""
    state = load_checkpoint(run)
    return state, restore_model(state, run).to(device).eval()


def restore_model(state: dict, run) -> torch.nn.Module:
    """The model of a loaded checkpoint, weights in place and checked finite (CPU, train
    mode)."""
    path = checkpoint_path(run)
    config = state["config"]   # a dict: load_checkpoint checked it
    for key in MODEL_KEYS:
        if key not in config:
            raise CheckpointError(f"{path}: its config lacks '{key}', needed to build the model")
    try:   # a size past train's limits is refused as train refuses it, not built into an
        # out-of-memory error that tells eval, which has no size flags, to try smaller ones
        check_train_config({k: config.get(k) for k in MODEL_SIZE_KEYS}, combinations=False)
        model = build_model(config)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: its config does not describe a model: {e}") from None
    load_weights(model, state["model"], path)
    check_weights_finite(model, path)
    return model


# -- the run folder ---------------------------------------------------------------------
def run_backend(cfg: dict, device, how: str | None = None) -> str:
    """The backend ``cfg`` selects on ``device``. Where it cannot run there, a ValueError:
    for a saved run (a run trained with "triton", moved to a CPU) it says ``how`` to
    choose another; for a new one (``how`` None) it names the flag."""
    import fastvae

    try:
        return fastvae.select_backend(cfg["backend"], device)
    except (ValueError, RuntimeError) as e:   # RuntimeError: triton is not installed
        if how is None:
            raise ValueError(f"--backend {cfg['backend']}: {e}") from None
        raise ValueError(f"{e}; the run's backend is {cfg['backend']!r}: {how}") from None


class RunFolderError(Exception):
    """The run folder cannot be used (a file, not writable, or in use by another run)."""


def _default_base(dataset: str) -> Path:
    # a file's name without its folders or suffix, whatever its case (UP.NPY -> runs/UP);
    # a named dataset (digits, mnist, fashion-mnist) is its own stem
    return Path("runs") / (Path(dataset).stem or dataset)


def _candidates(base: Path) -> list[Path]:
    return [base] + [Path(f"{base}-{i}") for i in range(2, 10_000)]


def newest_run(dataset: str) -> Path:
    """The default folder --resume continues: the ``runs/<dataset>[-N]`` whose checkpoint
    was written last (the highest N among equals; a deleted ``runs/<dataset>`` is reused
    by the next run, so the highest N need not be the newest run), ``runs/<dataset>``
    when none has one, to say so; also under the earlier rule's name, ``runs/`` joined to
    the dataset as given (what a file not named .npy or .npz in lower case got)."""
    base = _default_base(dataset)
    for b in dict.fromkeys((base, Path("runs") / dataset)):
        written = []
        for i, p in enumerate(_candidates(b)):
            try:
                written.append(((p / CHECKPOINT_NAME).stat().st_mtime_ns, i, p))
            except OSError:   # none there (or gone since)
                continue
        if written:
            return max(written)[2]
    return base


def _mkdirs(path: Path, exist_ok: bool) -> list[Path]:
    """``mkdir -p``; returns the folders it created, outermost first. With
    ``exist_ok=False`` the last one must be new (FileExistsError otherwise): that
    exclusive create is what claims a folder when two runs start together."""
    missing = [p for p in [path, *path.parents] if not p.exists()][::-1]
    created = []
    for p in missing:
        try:
            p.mkdir()
            created.append(p)
        except FileExistsError:
            if p == path and not exist_ok:
                raise
    if not exist_ok and path not in created:
        raise FileExistsError(path)
    return created


def check_outputs(folder, names) -> None:
    """RunFolderError naming the first of ``names`` in ``folder`` that is a folder: the
    rename that writes it would fail there only after the whole training (a link to a
    folder is replaced, not followed)."""
    for name in names:
        p = Path(folder) / name
        if p.is_dir() and not p.is_symlink():
            raise RunFolderError(f"{p} is a folder, where the run writes its {name} when it "
                                 "ends; move it away")


class RunFolder:
    """The folder of one run, held for the run's lifetime by one process (rank 0).

    Claimed: a folder name chosen for the user (``runs/<dataset>-N``) is created
    exclusively, so two runs started together never pick the same one. Locked: an
    advisory lock (``flock`` on the folder; nothing is written for it) refuses a second
    run into the same ``--out`` and lets the first remove stale temporary files safely;
    the OS releases it when the process dies. Where the file system (or the OS: Windows)
    has no flock, the run goes on unlocked with a note on stderr. Checked writable by
    creating and removing a file. Closed after a failure, folders it created and left
    empty are removed.
    """

    def __init__(self, path: Path, created: list[Path]):
        self.path, self.created, self._fd = Path(path), created, None

    @classmethod
    def claim(cls, out, dataset: str, resume: bool) -> "RunFolder":
        if out is None and not resume:
            for cand in _candidates(_default_base(dataset)):
                try:
                    folder = cls(cand, _mkdirs(cand, exist_ok=False))
                    break
                except FileExistsError:
                    continue
                except OSError as e:
                    raise RunFolderError(f"cannot create the run folder {cand}: "
                                         f"{e.strerror or e}") from None
            else:
                raise RunFolderError(f"no free run folder name left under "
                                     f"{_default_base(dataset).parent}; pass --out")
        else:
            path = Path(out) if out is not None else newest_run(dataset)
            if path.exists() and not path.is_dir():
                raise RunFolderError(f"--out {path} is a file, not a folder; " + (
                    "give the run's folder" if resume else "choose another --out"))
            broken = broken_link(path)
            if broken:   # mkdir would take it for a folder
                raise RunFolderError(f"--out {broken}; " + (
                    "link it to the run's folder" if resume else
                    "create that folder, or choose another --out"))
            try:
                folder = cls(path, _mkdirs(path, exist_ok=True))
            except OSError as e:
                raise RunFolderError(f"cannot create the run folder {path}: "
                                     f"{e.strerror or e}") from None
        try:
            folder._lock(resume)
            folder._check_writable(resume)
        except BaseException:
            folder.close(failed=True)
            raise
        fsync_parents(folder.created)
        return folder

    def _lock(self, resume: bool = False) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the exclusive create still holds, but a
            # second run into the same --out is not refused, so say so as below
            self._unlocked("this system has no flock")
            return
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(f"{self.path} is in use by another fastvae run; wait for it"
                                 + ("" if resume else " or choose another --out")) from None
        except OSError as e:
            # a file system without flock (network mounts on clusters): refusing would
            # leave no way to train there, so the run goes on unlocked and says so
            self._unlocked(os_words(e))

    def _unlocked(self, why: str) -> None:
        print(f"note: the run folder {self.path} is not locked ({why}): start no other run "
              "into it while this one runs", file=sys.stderr)

    def _check_writable(self, resume: bool = False) -> None:
        """RunFolderError if a file cannot be created here, with what to do: a resumed
        run lives in its own folder, so another --out is no fix for it."""
        try:   # a probe a hard kill left between its create and its unlink
            remove_stale_temps(self.path / "write-check")
        except OSError:   # a folder that cannot be listed: the probe says what matters
            pass
        probe = temp_name(self.path / "write-check")
        try:
            try:
                open(probe, "xb").close()
            except FileExistsError:
                probe = None   # another's: never removed here
                raise
            finally:  # also when a signal lands just after the create
                if probe is not None and os.path.lexists(probe):
                    os.unlink(probe)
        except OSError as e:
            fix = ("make it writable, or copy the run to a folder that is and resume it "
                   "there with --out" if resume else "choose another --out")
            raise RunFolderError(f"cannot write to the run folder {self.path}: "
                                 f"{e.strerror or e}; {fix}") from None

    def close(self, failed: bool) -> None:
        """Release the lock; after a failure remove the folders this run created if
        they are still empty (a folder that holds anything stays)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        if failed:
            for p in reversed(self.created):
                try:
                    p.rmdir()
                except OSError:
                    break


# -- optional dependencies ----------------------------------------------------------------
class MissingExtra(Exception):
    """A package of the ``train`` extra that this command needs is not installed."""


# import name -> (pip name, what needs it)
_EXTRAS = {"matplotlib": ("matplotlib", "the pictures"),
           "sklearn": ("scikit-learn", "the digits dataset")}


def installed(name: str) -> bool:
    """Whether the top-level package ``name`` can be imported (without importing it)."""
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_extras(command: str, pictures: bool, dataset: str | None = None) -> None:
    """Before any work: the packages ``command`` will import later (matplotlib for
    pictures, scikit-learn for the digits), so a plain ``pip install fastvae`` fails in
    the first second with the fix, not after a whole training run."""
    wanted = (["matplotlib"] if pictures else []) + (["sklearn"] if dataset == "digits" else [])
    missing = [name for name in wanted if not installed(name)]
    if missing:
        what = " and ".join(f"{_EXTRAS[m][0]} (for {_EXTRAS[m][1]})" for m in missing)
        raise MissingExtra(f"fastvae {command} needs {what}, which "
                           f"{'is' if len(missing) == 1 else 'are'} not installed: "
                           "pip install 'fastvae[train]'")
    if pictures:   # installed but broken (built against another numpy): found now, not
        from . import plots   # after the whole run, when the pictures are drawn
        try:
            plots.pyplot()
        except ImportError as e:
            raise MissingExtra(f"fastvae {command} needs matplotlib (for the pictures), which "
                               f"is installed but does not import: {e}") from None


def claim_folder(full: dict, is_main: bool, world: int):
    """Rank 0 claims the run folder (see RunFolder) and tells the other ranks its path,
    or its error (any: an OSError too), so that they fail with it instead of waiting in
    the broadcast."""
    folder, error = None, None
    if is_main:
        try:
            folder = RunFolder.claim(full["out"], full["dataset"], full["resume"])
        except Exception as e:
            error = e
    if world > 1:
        msg = [str(folder.path) if folder else None, str(error) if error else None]
        torch.distributed.broadcast_object_list(msg, src=0)
        if msg[1] is not None:
            raise ranks.alike(error or RunFolderError(msg[1]))
        return folder, msg[0]
    if error is not None:
        raise error
    return folder, str(folder.path)

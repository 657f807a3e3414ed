"""Checkpoints that survive crashes, carry a checksum and load with
``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, dicts, lists and primitives tagged
``format = "fastvae-checkpoint"``, plus ``checksum``: the SHA-256 of everything else
(every tensor's dtype, shape and bytes, every key and value), verified on load. torch's
zip reader checks no CRC, so without it a flipped bit in a weight loads silently.

Every file of a run (checkpoint, metrics, pictures) is written by :func:`atomic_write`:
to a temporary file in the same folder, flushed to disk, then renamed into place
(:func:`os.replace`, atomic on POSIX and Windows), so a crash or a full disk mid-write
leaves the previous file intact and no half-written one. A hard kill can still leave the
temporary file; the next write of the same name removes it. Files get the mode the
umask gives (``0o666 & ~umask``), like any other file the user creates.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import secrets
import shlex
import sys
import warnings
import zipfile
from pathlib import Path

import torch

from ._durable import fsync_dir, fsync_parents

FORMAT = "fastvae-checkpoint"
VERSION = 2            # 2: with checksum; 1 (no checksum) still loads
CHECKPOINT_NAME = "checkpoint.pt"
# The files a run writes in its folder besides the checkpoint (finish.finish): a fresh run
# never takes over a folder holding any of them (run_config.prepare_config).
RUN_FILES = ("metrics.json", "reconstructions.png", "samples.png", "curves.png", "latent.png")
_TMP_PREFIX = ".tmp-"


def run_files_in(folder) -> list:
    """The :data:`RUN_FILES` that ``folder`` holds, in that order."""
    return [n for n in RUN_FILES if (Path(folder) / n).exists()]


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt, or not a fastvae checkpoint."""


class WriteError(OSError):
    """A run file could not be written (disk full, read-only, ...); the previous
    version of the file is intact."""


def _tmp_prefix(path: Path) -> str:
    return f"{_TMP_PREFIX}{path.name}."


def remove_stale_temps(path: Path) -> None:
    """Temporary files of ``path`` left by a killed writer. A temp file is named with its
    writer's process id: one of another process still running is that writer's file in
    progress (two ``fastvae bench --json F`` at once), so it is left; any other is stale
    (this process writes one file at a time)."""
    prefix = _tmp_prefix(path)
    for p in path.parent.iterdir():
        if (p.name.startswith(prefix)
                and not _written_by_another_live_process(p.name[len(prefix):], p)):
            try:
                p.unlink()
            except OSError:
                pass


def _written_by_another_live_process(suffix: str, temp: Path) -> bool:
    """Whether a temp file's ``{pid}-{token}`` suffix names a running process other than
    this one that could have written it: not one started after the file was last written
    (its pid was reused, as it soon is in a container). A name without a pid: a killed
    writer's, or an older fastvae's."""
    pid, sep, _ = suffix.partition("-")
    if not sep or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        pass
    try:
        return _started_at(int(pid)) <= temp.stat().st_mtime + 1.0  # btime: whole seconds
    except (OSError, ValueError, IndexError, StopIteration):
        return True   # no /proc (not Linux): a live process is taken for the writer


def _started_at(pid: int) -> float:
    """When process ``pid`` started, in seconds since the epoch (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def temp_name(path: Path) -> Path:
    """A new temporary name beside ``path``, with this process's id: no other live
    process uses it, so a file by that name is this process's own."""
    return path.parent / f"{_tmp_prefix(path)}{os.getpid()}-{secrets.token_hex(6)}"


def broken_link(path) -> str | None:
    """``PATH is a symbolic link to TARGET, which does not exist`` where ``path`` is one
    (mkdir and is_dir take it for nothing, or for a folder), else None."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
    return None


def refuse_broken_checkpoint(path, doing: str = "", fix: str = "") -> None:
    """CheckpointError where ``path`` (a run's checkpoint.pt) is a symbolic link to nothing:
    the checkpoint kept elsewhere (a disk not mounted), not a run to start over nor one to
    train again. ``fix``: the advice, where it is not to put the file back."""
    broken = broken_link(path)
    if broken:
        raise CheckpointError(f"no checkpoint at {path}{doing}: {broken}; " + (
            fix or "put the file back there, or link it to where the checkpoint is now"))


def error_chain(e: BaseException, outer: BaseException | None = None):
    """``e`` and the exceptions behind it (its cause, else its context), up to ``outer``."""
    while e is not None and e is not outer:
        yield e
        e = e.__cause__ or e.__context__


def os_words(e: OSError) -> str:
    """``File too large (EFBIG)``: the OS's words for ``e`` and its code's name."""
    return f"{os.strerror(e.errno)} ({errno.errorcode.get(e.errno, e.errno)})"


def _reason(e: BaseException) -> str:
    """The OS's words for a failed write; torch's writer wraps the OSError (ENOSPC,
    EFBIG) in a RuntimeError that says only 'enforce fail at inline_container.cc'."""
    for seen in error_chain(e):
        if isinstance(seen, OSError) and seen.errno:
            return os_words(seen)
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def _interrupt_behind(e: BaseException, outer: BaseException | None):
    """The KeyboardInterrupt (a signal) in ``e``'s chain, if any, up to ``outer`` (what
    was being handled when the call began, so a disk error inside a user's own Ctrl-C
    handler stays a disk error): one raised in a file's ``write`` that torch's C++
    checkpoint writer called reaches Python as its RuntimeError ("unexpected pos"), the
    interrupt as its context."""
    return next((seen for seen in error_chain(e, outer) if isinstance(seen, KeyboardInterrupt)),
                None)


def _missing_folders(folder: Path) -> list:
    """The folders ``mkdir(parents=True)`` of ``folder`` would create, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def atomic_write(path, write) -> Path:
    """Write ``path`` via ``write(binary_file)``: temp file, fsync, rename. Raises
    :class:`WriteError` naming the file when the file system refuses."""
    path = Path(path)
    existed = path.exists()
    outer = sys.exc_info()[1]
    tmp = None
    made = _missing_folders(path.parent)   # removed again if the write fails
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(path)
            f = None
            while f is None:
                # named before it exists: a signal handled just after the create, before
                # f is set, still finds the name to remove (and the file object, which
                # nothing holds, closes itself)
                tmp = temp_name(path)
                try:
                    # mode 0o666 less the umask, as for any file (mkstemp forces 0o600)
                    f = open(tmp, "xb")
                except FileExistsError:   # another's: never removed here
                    tmp = None
        except OSError as e:
            raise WriteError(f"cannot write {path}: {_reason(e)}") from None
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # The rename did not happen: the old file is untouched; drop the partial one.
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        for folder in made:   # deepest first; one that is not empty stays
            try:
                folder.rmdir()
            except OSError:
                break
        stop = _interrupt_behind(e, outer)
        if stop is not None and stop is not e:
            raise stop from None   # Ctrl-C or SIGTERM, not a file system's refusal
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, WriteError):
            kept = (f"the previous {path.name} is intact" if existed
                    else f"no {path.name} was written")
            raise WriteError(f"cannot write {path}: {_reason(e)}; {kept}") from None
        raise
    fsync_dir(path.parent)
    fsync_parents(made)
    return path


def _feed(h, obj) -> None:
    """Hash ``obj`` by content: tensors by dtype, shape and bytes; containers in order."""
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"D%d;" % len(obj))
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d;" % len(obj))
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def checksum(state: dict) -> str:
    """SHA-256 of a checkpoint's content, its ``checksum`` entry left out."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "checksum"})
    return h.hexdigest()


def save_checkpoint(state: dict, path) -> Path:
    """Atomically save ``state`` (plus the format tag and its checksum) to ``path``."""
    state = dict(state, format=FORMAT, version=VERSION)
    state["checksum"] = checksum(state)
    return atomic_write(path, lambda f: torch.save(state, f))


def _json_safe(obj):
    """NaN and +-inf -> None: JSON has no tokens for them (json.dumps would write the
    non-standard ``NaN``/``Infinity``, which strict parsers reject)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def json_text(obj, indent=None) -> str:
    """``obj`` as strictly valid JSON (non-finite floats as null)."""
    return json.dumps(_json_safe(obj), indent=indent, allow_nan=False)


def write_json(obj, path) -> Path:
    """Atomically write ``obj`` as pretty, strictly valid JSON (non-finite floats as null)."""
    data = (json_text(obj, indent=2) + "\n").encode()
    return atomic_write(path, lambda f: f.write(data))


def checkpoint_path(run) -> Path:
    """A run folder -> its ``checkpoint.pt``; a file path is returned as is."""
    run = Path(run)
    # a missing path without a suffix is taken for a run folder (for the error message),
    # but a file is a file whatever its name
    return run / CHECKPOINT_NAME if run.is_dir() or not (run.suffix or run.is_file()) else run


def _refused_global(e: BaseException):
    """The type torch's weights-only loader refused, from its message, or None."""
    m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    return m.group(1) if m else None


def _why_unreadable(path: Path, e: BaseException) -> str:
    """What is wrong with a file torch.load refused, judged from the file, not from torch's
    message: that one runs to many lines and advises loading again with weights_only=False,
    which would run whatever code an untrusted file holds."""
    # torch's zip reader fails on a cut-off file with an OSError (EINVAL) too: the file
    # is judged by what it holds, and only a file that cannot be opened is an OS error
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"cannot read it ({err.strerror or err})"
    try:
        whole = zipfile.is_zipfile(path)
    except (OSError, zipfile.BadZipFile):   # a damaged zip64 trailer ("multiple disks")
        whole = False
    if head != b"PK\x03\x04":
        return ("it is corrupt or not a checkpoint at all (not the zip archive torch.save "
                "writes; a zero-filled, text or JSON file?)")
    if not whole:
        return "it is truncated or corrupt (its zip archive is incomplete)"
    refused = _refused_global(e)
    if refused is not None:
        return (f"it holds an object of type {refused}, which a checkpoint never does and "
                "loading without running the file's code refuses")
    return "it is corrupt, or holds objects other than a checkpoint's tensors and plain values"


def _tensors(obj):
    """The tensors in a checkpoint's dicts, lists and tuples."""
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _unhashable(state: dict, e: BaseException) -> str:
    """Why :func:`checksum` could not read a loaded checkpoint's content."""
    if any(t.is_meta for t in _tensors(state)):
        return ("it holds tensors without data (on the 'meta' device): it was saved from a "
                "model whose weights were never made")
    first = (str(e).splitlines() or [type(e).__name__])[0][:200]
    return f"it holds a tensor whose bytes cannot be read ({type(e).__name__}: {first})"


def load_checkpoint(run, map_location="cpu") -> dict:
    """Load and check a checkpoint from a run folder or a file.

    Raises :class:`CheckpointError` with the path and the reason when it is missing,
    unreadable (empty, truncated, corrupt), not written by fastvae, or its content does
    not match its checksum.
    """
    path = checkpoint_path(run)
    outer = sys.exc_info()[1]
    for p in (Path(run), path):  # a run's checkpoint.pt that is a folder, named as such
        if p.name == CHECKPOINT_NAME and p.is_dir():
            raise CheckpointError(f"{p} is a folder, not a checkpoint file; move it away")
    if not path.is_file():
        broken = broken_link(path.parent)
        if broken:   # `fastvae train --out` it would be refused as well
            raise CheckpointError(f"no checkpoint at {path}: {broken}; link it to the run's "
                                  "folder")
        refuse_broken_checkpoint(path)   # not the advice below, training another run
        held = run_files_in(path.parent)
        if held:   # a fresh run refuses this folder: it would overwrite them
            raise CheckpointError(
                f"no checkpoint at {path}, and its folder holds {', '.join(held)}, which a "
                "new run there would overwrite; train one in another folder: "
                "`fastvae train --out OTHER_FOLDER`")
        raise CheckpointError(
            f"no checkpoint at {path}; train one with "
            f"`fastvae train --out {shlex.quote(str(path.parent))}`"
        )
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
        with warnings.catch_warnings():
            # a damaged protocol byte: torch warns and reads on; what it read is judged
            # below (format, version, checksum), and a failed read is the one line below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # pickle, zip, torch and the OS raise many types for a bad file
        stop = _interrupt_behind(e, outer)
        if stop is not None:  # a signal wrapped on its way through torch's C++ reader
            raise stop from None
        raise CheckpointError(f"{path} is not a readable fastvae checkpoint: "
                              f"{_why_unreadable(path, e)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastvae checkpoint (no '{FORMAT}' tag); "
                              "it was written by something else")
    # an int: True == 1 and 2.0 == 2, but a bool or float is no version fastvae writes
    if type(state.get("version")) is not int or state["version"] not in (1, VERSION):
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')!r}, "
                              f"this fastvae reads versions 1 to {VERSION}")
    if state["version"] >= 2:
        want = state.pop("checksum", None)
        if want is None:
            raise CheckpointError(f"{path} has no checksum; the file is incomplete or was "
                                  "edited")
        try:
            got = checksum(state)
        except Exception as e:   # NotImplementedError: a tensor on "meta" has no bytes
            raise CheckpointError(f"{path} is not a readable fastvae checkpoint: "
                                  f"{_unhashable(state, e)}") from None
        if got != want:
            raise CheckpointError(f"{path} does not match its checksum: the file is damaged "
                                  "(disk or copy error) or was edited; use another copy")
    require(state, path, ("config", "model", "epoch"), "to use it")
    # what every use reads first: a config that is no dict, or an epoch no count, is a
    # file written by something else (its checksum can still match)
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: its config is a {type(state['config']).__name__}, not a "
                              "dict")
    epoch = state["epoch"]
    if type(epoch) is not int or epoch < 0:
        raise CheckpointError(f"{path}: its epoch is {epoch!r}, not a count of trained epochs")
    return state


def require(state: dict, path, keys, purpose: str) -> None:
    """CheckpointError naming ``path`` and the first of ``keys`` the checkpoint lacks."""
    for key in keys:
        if key not in state:
            raise CheckpointError(f"{path} lacks '{key}', needed {purpose}; the file is "
                                  "incomplete")

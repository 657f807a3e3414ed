"""Checks of the command's numeric and device settings, shared by argparse (as ``type=``
functions: a bad value is a one-line usage error naming the flag) and by the training API
(:func:`check_train_config`: a ``ValueError`` naming the key). Values that would train a
degenerate model (``--latent 0``) or crash deep inside torch (``--batch-size 0``,
``--device tpu``) are refused before any work."""
from __future__ import annotations

import argparse
import math
import numbers
import os
import tempfile

import torch

from . import backends, dmol_training, ranks
from .estimators import ESTIMATORS
from .models import MODELS
from .validation import KL_MODES, LIKELIHOODS, MAX_COUNT, limit_text

_DEVICE_TYPES = ("cpu", "cuda", "mps")
DEVICES = "auto, cpu, cuda, cuda:N or mps"   # what :func:`device` takes, for every --help
_F32_MAX = torch.finfo(torch.float32).max
_F32_TINY = torch.finfo(torch.float32).tiny


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage block first, which for
    ``train`` is a dozen lines above the one that matters), and no abbreviated flags: a
    prefix is taken for whichever flag it starts (``--iwae 5`` was ``--iwae-k 5``, the
    final estimate's K, on a run that then trained the ELBO)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    @staticmethod
    def _quiet() -> bool:
        # every torchrun rank parses the same flags: rank 0 alone says what they ask for
        # (a broken torchrun environment names no rank: every process says it)
        try:
            return ranks.dist_env()[0] != 0
        except ValueError:
            return False

    def _print_message(self, message, file=None):
        # the one door of --help, --version and the usage: said once under torchrun
        if not self._quiet():
            super()._print_message(message, file)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A setting's value is out of range; argparse reports it with the flag's name."""


def _int(value) -> int:
    if isinstance(value, bool):
        raise BadValue(f"must be an integer, got {value!r}")
    try:
        return int(value) if isinstance(value, str) else int(value.__index__())
    except (TypeError, ValueError, AttributeError):
        raise BadValue(f"must be an integer, got {value!r}") from None


def _float(value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise BadValue(f"must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise BadValue(f"must be a finite number, got {value!r}")
    if abs(out) > _F32_MAX:  # lr and beta scale float32 tensors, where torch's overflow
        # error is a traceback naming no flag
        raise BadValue(f"must be within float32's range (+-{limit_text(_F32_MAX)}), got {value!r}")
    return out


def positive_int(value) -> int:
    n = _int(value)
    if n < 1:
        raise BadValue(f"must be a positive integer, got {n}")
    return n


def non_negative_int(value) -> int:
    n = _int(value)
    if n < 0:
        raise BadValue(f"must be 0 or a positive integer, got {n}")
    return n


def _at_most(n: int, limit: int, why: str = "") -> int:
    if n > limit:
        raise BadValue(f"must be at most {limit}{why}, got {n}")
    return n


# More CPU threads than any machine has cores: OpenMP would try to start them all (libgomp
# aborts the process, out of memory, at 100000).
MAX_THREADS = 1024
# Worker processes (the offline judge's compiles, each importing Triton, ~200 MB): past a
# few per core they only thrash, and a typo like 2147483647 would start one per job.
MAX_PROCESSES = 64
# An hvae's groups per stage: each is layers built (~1 ms) and run one after another.
MAX_GROUPS = 4096


def count(value) -> int:
    """A positive size or count (width, L, K, batch, epochs), at most MAX_COUNT, the Python
    API's bound for the same counts (fastvae.validation); :func:`count_or_zero` also takes 0."""
    return _at_most(positive_int(value), MAX_COUNT, " (2**31 - 1)")


def count_or_zero(value) -> int:
    return _at_most(non_negative_int(value), MAX_COUNT, " (2**31 - 1)")


def groups(value) -> int:
    """An hvae's latent groups per stage: 1 to MAX_GROUPS."""
    return _at_most(positive_int(value), MAX_GROUPS, " (each group's layers run in turn)")


def threads(value) -> int:
    """A CPU thread count: 0 (automatic) to MAX_THREADS."""
    return _at_most(non_negative_int(value), MAX_THREADS)


def positive_threads(value) -> int:
    """A CPU thread count: 1 to MAX_THREADS."""
    return threads(positive_int(value))


def processes(value) -> int:
    """A worker process count: 1 to MAX_PROCESSES."""
    return _at_most(positive_int(value), MAX_PROCESSES, " (each a process of its own)")


def seed(value) -> int:
    n = _int(value)
    if not 0 <= n < 2 ** 63 - 2 ** 20:  # the run adds small offsets for its generators
        raise BadValue(f"must be an integer in [0, 2**63 - 2**20), got {n}")
    return n


def positive_float(value) -> float:
    x = _float(value)
    if x <= 0:
        raise BadValue(f"must be a positive number, got {value!r}")
    if x < _F32_TINY:  # an lr of 1e-300 scales float32 updates to 0: a run that never moves
        raise BadValue(f"must be at least float32's smallest normal number "
                       f"({limit_text(_F32_TINY, upper=False)}), got {value!r}")
    return x


# Adam's first step scales by lr / (1 - beta1) with torch's default beta1 of 0.9: past
# float32's range, torch raises an overflow RuntimeError (a traceback naming no flag)
_ADAM_FIRST_STEP = 1 - 0.9


def learning_rate(value) -> float:
    """An Adam learning rate: :func:`positive_float` whose first step fits float32."""
    x = positive_float(value)
    if x / _ADAM_FIRST_STEP > _F32_MAX:
        raise BadValue(f"must be at most {limit_text(_F32_MAX * _ADAM_FIRST_STEP)} (Adam's "
                       f"first step, lr / (1 - 0.9), must fit float32), got {value!r}")
    return x


def non_negative_float(value) -> float:
    x = _float(value)
    if x < 0:
        raise BadValue(f"must be 0 or a positive number, got {value!r}")
    return x


def folder(value) -> str:
    """A run's folder or file, or a data folder. An empty one (``--out "$UNSET"``) would
    mean the current directory: filling it with run files, reading whatever run or data
    files it holds."""
    if not isinstance(value, str) or not value.strip():
        raise BadValue(f"must name a folder or file, got {value!r}")
    return value


def dataset(value) -> str:
    """A dataset: a name or the path of an array file, as text (a number or a Path would
    fail deep in the name matching, as an AttributeError)."""
    if not isinstance(value, str):
        raise BadValue(f"must be a dataset name (digits, mnist, fashion-mnist) or the path of "
                       f"an .npy/.npz file, as a str, got {value!r}")
    return value


def flag(value) -> bool:
    """An on/off setting: True or False, since any other value would be read by its
    truthiness ("no" would resume, compile, ...)."""
    if not isinstance(value, bool):
        raise BadValue(f"must be True or False, got {value!r}")
    return value


def png_file(value) -> str:
    """A picture to write (:func:`file_to_write`): the grids are encoded as PNG whatever
    the name says, so another suffix would make a file its name misdescribes."""
    value = folder(value)
    if not value.lower().endswith(".png"):
        raise BadValue(f"must name a .png file (the images are written as PNG), got {value!r}")
    return file_to_write(value)


def comma_list(item):
    """A comma list, each entry checked by ``item`` (a bad one would otherwise fail inside
    the work, as a traceback naming no flag), at least one: "" or "," would otherwise
    read as the flag left out, i.e. its default. A repeated value is dropped (``--batch
    16,16`` would run its cases twice)."""
    def parse(value) -> list:
        items = [v.strip() for v in str(value).split(",")]
        if not any(items):
            raise BadValue("an empty list; give at least one")
        if not all(items):   # "8,,16": a value left out, not a list of two
            raise BadValue(f"an empty entry in {value!r}")
        return list(dict.fromkeys(item(v) for v in items))
    return parse


positive_ints = comma_list(count)                 # --k 1,5,50


def names_from(allowed):
    """A comma list whose items must be keys of ``allowed`` (read when the flag is parsed,
    so a name registered later counts; a callable is called then, for names that cost
    work to list), at least one; a repeat is dropped (it would run its cases twice)."""
    def parse(s: str) -> list:
        names = comma_list(str)(s)
        have = allowed() if callable(allowed) else allowed
        unknown = [n for n in names if n not in have]
        if unknown:
            raise BadValue(f"unknown {', '.join(unknown)}; have {', '.join(have)}")
        return names
    return parse


def file_to_write(value) -> str:
    """A file a command writes when its work is done: checked before the work starts, so
    that a path which cannot be written loses nothing."""
    if not isinstance(value, str) or not value:
        raise BadValue("an empty file name")
    if os.path.isdir(value):
        raise BadValue(f"cannot write {value}: it is a folder")
    # the writer creates missing folders (checkpoint.atomic_write): the nearest existing
    # one decides
    existing = os.path.dirname(os.path.abspath(value))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise BadValue(f"cannot write {value}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadValue(f"cannot write {value}: {existing} is not writable")
    # os.access answers yes to root for any folder, and a read-only mount or /proc and
    # /sys refuse anyway: a file made and removed there is the check that holds
    try:
        fd, probe = tempfile.mkstemp(prefix=".fastvae-write-check-", dir=existing)
    except OSError as e:
        raise BadValue(f"cannot write {value}: {existing} refuses new files "
                       f"({e.strerror or type(e).__name__})") from None
    os.close(fd)
    os.unlink(probe)
    return value


def device(value) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` (or ``mps``): what torch can place a model on.
    Whether such a device is present is checked when the run starts."""
    if value == "auto":
        return value
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in _DEVICE_TYPES:
        raise BadValue(f"must be {DEVICES}, got {value!r}")
    return str(value)


def auto_device(name: str) -> str:
    """``--device auto``: "cuda" when torch sees a CUDA device, else "cpu"; any other name
    as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_device(name: str, local_rank: int = 0, flag: str = "--device") -> torch.device:
    """The device a run places its model on: "auto" -> the local CUDA device when there is
    one, else CPU; a device torch does not see is a ValueError that names it as ``flag``
    (the command's option, or a Python argument's name)."""
    dev = torch.device(auto_device(name))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name} asked for, but torch sees no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {dev} asked for, but torch sees "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} mps asked for, but torch sees no MPS device")
    return dev


# The training settings with a range, and their checks (lists are checked per item).
TRAIN_CHECKS = {
    "latent": count, "hidden": count, "channels": count, "groups": groups, "epochs": count,
    "batch_size": count, "lr": learning_rate, "beta": non_negative_float,
    "kl_warmup": count_or_zero, "seed": seed, "device": device, "iwae_k": count_or_zero,
    "threads": threads, "k": count, "n_mix": count, "out": folder, "data_dir": folder,
    "dataset": dataset, "download": flag, "amp": flag, "compile": flag, "resume": flag,
    "progress": flag,
}
# The settings that are text or a bool. The others are numbers: their checks take text
# too, for argparse (which converts it before the config is made), but a config's "8"
# would reach the model and torch as text.
_NOT_NUMBERS = ("device", "out", "data_dir", "dataset", "download", "amp", "compile", "resume",
                "progress")
# The settings that take a list: a width per layer (hidden) or per stage (channels); one
# number is one layer or stage, as the models take it (check_widths).
_LISTS = ("hidden", "channels")
OBJECTIVES = ("elbo", "iwae")
# The architecture settings each model reads: another one given is refused, not ignored.
MODEL_SIZES = {"mlp": ("hidden",), "conv": ("hidden", "channels"), "hvae": ("channels", "groups")}
_SIZE_NAMES = {"hidden": "hidden layers", "channels": "convolution stages",
               "groups": "latent groups"}
# The text settings with a fixed set of values (argparse's choices on the command line;
# a config of the Python API, or a checkpoint's, is held to them here).
TRAIN_CHOICES = {"model": MODELS, "likelihood": LIKELIHOODS, "kl": KL_MODES,
                 "backend": backends.NAMES}


def plain_values(cfg: dict) -> dict:
    """``cfg`` with each numpy scalar (a sweep's ``np.logspace`` lr, an ``np.int64`` size),
    in a list or tuple too, as the Python number it holds, and each path object (a
    ``pathlib.Path`` out or data_dir) as its text: the config goes into the checkpoint,
    which must load with ``torch.load(weights_only=True)`` (it refuses numpy and pathlib
    objects), and into metrics.json (json refuses ``np.int64`` and paths)."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return type(value)(plain(v) for v in value)
        if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
            return value.item()
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value
    return as_listed({k: plain(v) for k, v in cfg.items()})


def as_listed(cfg: dict) -> dict:
    """``cfg`` with a width setting given as one int (``channels=8``) or as a tuple
    (``hidden=(256, 128)``) as the list it stands for: a resume compares the flags with
    the checkpoint's values with ``!=``, ``--channels 8`` is ``[8]``, and ``(8,) != [8]``."""
    def listed(v):
        if isinstance(v, tuple):
            return list(v)
        return [v] if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v
    return {k: listed(v) if k in _LISTS else v for k, v in cfg.items()}


def check_train_config(cfg: dict, combinations: bool = True) -> None:
    """ValueError naming the first setting of ``cfg`` out of range, or (``combinations``) a
    combination the model cannot train with. A resumed run's flags are checked without
    the combinations: the run trains with its checkpoint's settings, which the flags'
    values mixed with the defaults are not (``--resume --estimator dreg`` of an IWAE run
    would read as DReG with the default ELBO)."""
    if combinations and cfg.get("model") == "hvae":
        check_hierarchical(cfg)
    for key, choices in TRAIN_CHOICES.items():
        _check_choice(key, cfg.get(key), choices)
    for key, check in TRAIN_CHECKS.items():
        value = cfg.get(key)
        if value is None:
            continue
        is_list = isinstance(value, (list, tuple))
        if is_list and key not in _LISTS:
            raise ValueError(f"{key}: must be a single value, got {value!r}")
        items = value if is_list else [value]
        if key in _LISTS and not items:
            raise ValueError(f"{key}: needs at least one width")
        for item in items:
            if isinstance(item, str) and key not in _NOT_NUMBERS:
                raise ValueError(f"{key}: must be a number, got the text {item!r}")
            try:
                check(item)
            except BadValue as e:
                raise ValueError(f"{key}: {e}") from None
    if combinations:
        check_objective(cfg)
        dmol_training.check_config(cfg)


def check_model_sizes(given: dict, model: str, defaults: dict) -> None:
    """ValueError for an architecture setting in ``given`` (the settings asked for, None
    where not) that ``model`` has no use for. A value equal to its default is not refused:
    a config made from the defaults holds every setting."""
    reads = MODEL_SIZES.get(model)
    if reads is None:
        return  # an unknown model is refused where it is built
    given = as_listed(given)
    for key, what in _SIZE_NAMES.items():
        value = given.get(key)
        if value is not None and value != defaults.get(key) and key not in reads:
            raise ValueError(f"{key}: the {model} model has no {what} to size; its sizes are "
                             + " and ".join(f"--{k}" for k in reads))


def _check_choice(key: str, value, choices) -> None:
    if value is not None and value not in choices:
        raise ValueError(f"{key}: must be one of {choices}, got {value!r}")


def check_hierarchical(cfg: dict) -> None:
    """ValueError naming the setting of ``cfg`` a hierarchical model (``--model hvae``) has
    no use for: it trains the ELBO of its per-group analytic KLs (``sample_with_kl``) only,
    so an IWAE objective, K samples, another estimator or the Monte-Carlo KL would be
    ignored without a word (the command and ``evaluation.batch_loss`` both ask)."""
    kl = cfg.get("kl") or "analytic"
    _check_choice("kl", kl, KL_MODES)
    if kl == "mc":
        # named as the flag the user types (no flag says "hierarchical")
        raise ValueError("kl: --model hvae trains on each group's analytic KL "
                         "(sample_with_kl); --kl mc is for the mlp and conv models")
    if ((cfg.get("objective") or "elbo") != "elbo" or int(cfg.get("k") or 1) != 1
            or (cfg.get("estimator") or "standard") != "standard"):
        raise ValueError("model: --model hvae trains on the ELBO of its fused per-group "
                         "KLs only; leave --objective elbo --k 1 --estimator standard")


def check_kl_warmup(given: dict, cfg: dict) -> None:
    """ValueError when a fresh run is given ``--kl-warmup`` > 0 with ``--beta 0``: the weight
    would ramp from 0 to 0, a warm-up the run ignores without a word. A fresh run's only:
    a run saved with both (before this check) still resumes, its ramp as harmless as ever."""
    if int(given.get("kl_warmup") or 0) > 0 and cfg.get("beta") == 0:
        raise ValueError("kl_warmup: --kl-warmup ramps the KL weight from 0 to --beta, which "
                         "is 0: nothing to ramp; leave --kl-warmup at 0 or set --beta above 0")


def check_objective(cfg: dict) -> None:
    """ValueError naming the setting when the training objective and its gradient
    estimator do not go together (shared by argparse's caller and the training API)."""
    # None is the default; other false values ({} or "") are no objective
    objective = "elbo" if cfg.get("objective") is None else cfg["objective"]
    estimator = "standard" if cfg.get("estimator") is None else cfg["estimator"]
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if objective == "elbo":
        if estimator == "dreg":
            raise ValueError("estimator: dreg is the estimator of --objective iwae; the ELBO's "
                             "is stl (DReG at K=1)")
        if estimator == "stl" and cfg.get("kl", "analytic") != "mc":
            raise ValueError("estimator: stl changes the gradient of the Monte-Carlo KL; add "
                             "--kl mc (the analytic KL has no sampling noise to remove)")
    elif float(cfg.get("beta", 1.0)) != 1.0:
        raise ValueError("beta: --objective iwae is the importance-weighted bound, which has no "
                         "KL weight; leave --beta at 1 or use --objective elbo")
    elif int(cfg.get("kl_warmup") or 0) != 0:
        raise ValueError("kl_warmup: --objective iwae is the importance-weighted bound, which has "
                         "no KL weight to ramp; leave --kl-warmup at 0 or use --objective elbo")
    elif (cfg.get("kl") or "analytic") != "analytic":
        raise ValueError("kl: --objective iwae scores each sample's log-weight, log p(x, z) - "
                         "log q(z|x), with no separate KL to choose; leave --kl analytic or use "
                         "--objective elbo")

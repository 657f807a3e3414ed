"""Argument, shape, dtype and device checks, done once before dispatch.

Structural checks (types, shapes, dtypes, devices, option names) always run: they
cost nothing per element. Value checks (x in [0, 1], finiteness, ...) cost a pass
over the data, so they run only when validation is on: ``validate=True`` on a call,
or globally with :func:`set_validation` (off by default, unlike
``torch.distributions.Distribution.set_default_validate_args``, which is on).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Set
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from numbers import Integral, Real

import torch

from ._compiler import tracing_here
from ._dtypes import FLOATS, result_dtype, same_shape, widened
from .value_checks import check_dmol_values, check_values  # noqa: F401  (V.check_values)

# The discretized mixture of logistics: recon is its parameters, not x's shape.
DMOL = "discretized_logistic_mixture"
LIKELIHOODS = ("bernoulli", "gaussian", "continuous_bernoulli", DMOL)
KL_MODES = ("analytic", "mc")
REDUCTIONS = ("mean", "sum", "none")

_validate_default = False
_F32_MAX = torch.finfo(torch.float32).max


def type_name(value) -> str:
    """What an error says a wrong value was: ``list``, ``numpy.bool`` (whose bare name,
    "bool", reads as Python's own)."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def set_validation(enabled: bool) -> None:
    """Turn the value checks (finite inputs, data range) on or off for every call
    that does not pass ``validate=`` itself."""
    global _validate_default
    if not isinstance(enabled, bool):
        raise TypeError(f"set_validation expects a bool, got {type_name(enabled)}")
    _validate_default = enabled


def get_validation() -> bool:
    """Whether value checks run by default."""
    return _validate_default


def resolve_validate(validate) -> bool:
    if validate is None:
        return _validate_default
    if not isinstance(validate, bool):
        raise TypeError(f"validate must be None or a bool, got {type_name(validate)}")
    return validate


def check_option(name: str, value, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


class Checked:
    """Signatures of calls whose structural checks passed: a call with one of them skips
    the checks (a training step repeats one signature, and the checks cost more than the
    rest of a small call's Python). A signature is a tuple of everything the checks read
    (each public op builds its own); None stands for a call it does not describe, never
    in the set. Each may carry a value (:meth:`get`): what the op prepared for calls with
    that signature. Off under torch.compile: a traced lookup would guard on every size in
    the set, so a dynamic-shape graph would recompile per size. Bounded."""

    def __init__(self, limit: int = 256):
        self._seen: dict = {}
        self._limit = limit

    def __contains__(self, sig) -> bool:
        return (sig is not None and not (torch.compiler.is_compiling() and tracing_here())
                and sig in self._seen)

    def get(self, sig):
        """The value ``sig`` was added with (True by default); None where it was not."""
        if sig is None or (torch.compiler.is_compiling() and tracing_here()):
            return None
        return self._seen.get(sig)

    def add(self, sig, value=True) -> None:
        if sig is None or (torch.compiler.is_compiling() and tracing_here()):
            return
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen[sig] = value

    def clear(self) -> None:
        self._seen.clear()


# A tensor of these exact types computes as a torch.Tensor: nn.Parameter (a learned
# prior's mean, say) only marks a module's weight. Any other subclass may override
# torch functions.
PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_STRIDED = torch.strided   # (a module global: layouts reads it per tensor, per call)


def layouts(*ts):
    """What the structural checks read of each of ``ts`` for a :class:`Checked` signature:
    shape, dtype and device of a plain dense tensor (``PLAIN_TENSORS``), and what an op
    prepares for the signature depends on besides (its strides and ``requires_grad``);
    None for None; None for the whole when any is something else (another subclass, a
    sparse tensor, a lazily negated view, a number: such a call is checked every time).
    A None where a tensor is required never passes the checks, so it is never in the set."""
    out = []
    for t in ts:  # a loop, not a genexpr: this runs on every call (never under
        # torch.compile, where is_neg() would break the graph: the callers' memo is off there)
        if t is None:
            out.append(None)
        elif type(t) in PLAIN_TENSORS and t.layout is _STRIDED and not t.is_neg():
            out.append((t.shape, t.stride(), t.dtype, t.device, t.requires_grad))
        else:
            return None
    return tuple(out)


def limit_text(limit: float, upper: bool = True) -> str:
    """``limit`` to 4 significant digits, rounded into the range it bounds (down for an
    ``upper`` bound, up for a lower one): a number a message shows as the limit is one
    the check accepts (``:.4g`` shows float32's max as 3.403e+38, past it)."""
    d = Decimal(limit)
    shown = d.quantize(Decimal(1).scaleb(d.adjusted() - 3),
                       rounding=ROUND_FLOOR if upper else ROUND_CEILING)
    return f"{float(shown):.4g}"


def check_number(name: str, value, *, minimum=None, integer=False) -> float:
    # numbers.Integral/Real, so numpy scalars (np.int64 from a config array) pass too; a
    # plain float (every call's beta, free_bits) skips those ABC checks (~1 us each)
    plain = type(value) is float and not integer
    if not plain and (isinstance(value, bool)
                      or not isinstance(value, (Integral if integer else Real))):
        kind = "an int" if integer else "a real number"
        raise TypeError(f"{name} must be {kind}, got {type_name(value)}")
    value = int(value) if integer else float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if not integer and not -_F32_MAX <= value <= _F32_MAX:
        # the fused math runs in float32: torch's overflow error there names no argument
        raise ValueError(f"{name} must be within float32's range (+-{limit_text(_F32_MAX)}), "
                         f"got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# A count whose work grows with it (IWAE samples, images drawn) past it no machine ends
# (IWAE K=2**31: a day per image on a CPU); the CLI's flags take the same bound.
MAX_COUNT = 2 ** 31 - 1
# The most elements of a tensor, and so of any of its dims: torch's sizes are int64.
MAX_ELEMENTS = 2 ** 63 - 1


def check_count(name: str, value, *, minimum=1, each=1, limit=MAX_COUNT) -> int:
    """An int >= ``minimum``, at most ``limit`` (MAX_COUNT; MAX_ELEMENTS for a tensor's dim,
    whose ``each`` elements apiece must fit too): past it torch fails, or a loop never ends."""
    n = int(check_number(name, value, minimum=minimum, integer=True))
    if n > limit:
        why = "2**31 - 1" if limit == MAX_COUNT else "2**63 - 1: torch's sizes are int64"
        raise ValueError(f"{name} must be at most {limit} ({why}), got {n}")
    # a plain int only: a symbolic size's product would guard a compiled graph on it; and
    # not while dynamo traces, which reads a SymInt's type as int (the guard then bounds the
    # batch, and a strict export of a dynamic one fails; torch's own error is left there)
    if (type(each) is int and not (torch.compiler.is_compiling() and tracing_here())
            and n * each > MAX_ELEMENTS):
        raise ValueError(f"{name}={n} of {each} elements each is more than a tensor holds "
                         f"({MAX_ELEMENTS} elements)")
    return n


def check_size(name: str, value) -> int:
    """A count or width a model is built with: an int >= 1 that torch's sizes hold."""
    return check_count(name, value, limit=MAX_ELEMENTS)


def check_sizes(name: str, values, *, allow_empty=False) -> tuple[int, ...]:
    """A shape or a list of widths: ints >= 1, as a tuple; an element's error names its
    index, since torch's own error for a zero or negative size names no argument. A
    string, set or mapping holds no order of sizes (a set's is arbitrary)."""
    if isinstance(values, (str, bytes, Set, Mapping)):
        raise TypeError(f"{name} must be a sequence of ints, got {type_name(values)}")
    try:
        items = tuple(values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {type_name(values)}") from None
    if not items and not allow_empty:
        raise ValueError(f"{name} must hold at least one size, got ()")
    return tuple(check_size(f"{name}[{i}]", v) for i, v in enumerate(items))


def check_widths(name: str, values, *, allow_empty=False) -> tuple[int, ...]:
    """Layer widths, as a tuple: one int (a numpy one too) stands for one layer, else a
    sequence as :func:`check_sizes` takes it, so every model's width arguments accept and
    refuse the same spellings (a config's list, a numpy array, a tuple)."""
    if isinstance(values, Integral):   # a bool too: check_size says "must be an int"
        return (check_size(name, values),)
    try:
        iter(values)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got "
                        f"{type_name(values)}") from None
    return check_sizes(name, values, allow_empty=allow_empty)


def check_tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type_name(t)}")
    if t.dtype not in FLOATS:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype} "
                        "(fastvae takes float16, bfloat16, float32 and float64)")
    if t.layout is not torch.strided:  # else an aten error deep in a backend
        raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}; pass "
                        f"{name}.to_dense()")
    return t


def check_same_device(**tensors) -> torch.device:
    first = None
    for t in tensors.values():  # the common case without building anything
        if isinstance(t, torch.Tensor):
            if first is None:
                first = t.device
            elif t.device != first:
                break
    else:
        return first
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        seen = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {seen}")
    return next(iter(devices.values()))


def check_latents(mu, logvar, *, prefix=()) -> tuple[int, int]:
    """mu and logvar: ``prefix + (B, L)``, the same shape. Returns (B, L)."""
    check_tensor("mu", mu)
    check_tensor("logvar", logvar)
    want_dim = len(prefix) + 2
    if mu.dim() != want_dim:
        raise ValueError(f"mu must be 2-D (batch, latent), got shape {tuple(mu.shape)}")
    if logvar.shape != mu.shape:
        raise ValueError(
            f"logvar must have mu's shape {tuple(mu.shape)}, got {tuple(logvar.shape)}"
        )
    return mu.shape[0], mu.shape[1]


def check_samples(z_k, mu) -> int:
    """z_k: ``(K, B, L)`` samples for mu ``(B, L)``, K >= 1. Returns K."""
    check_tensor("z_k", z_k)
    if z_k.dim() != 3 or z_k.shape[1:] != mu.shape or z_k.shape[0] < 1:
        raise ValueError(f"z_k must have shape (K, {mu.shape[0]}, {mu.shape[1]}) with K >= 1, "
                         f"got {tuple(z_k.shape)}")
    return z_k.shape[0]


def check_x_batch(x, batch: int) -> None:
    """ValueError unless x's first dim is mu's batch size."""
    if x.dim() < 1 or x.shape[0] != batch:
        raise ValueError(
            f"x must have the batch size of mu ({batch}) as its first dim, got shape {tuple(x.shape)}"
        )


def flatten_data(x, recon, batch: int, *, recon_name="recon", k=None):
    """x ``(B, ...)`` and recon ``(B, ...)`` (or ``(K, B, ...)``) -> ``(B, D)`` views/copies."""
    check_tensor("x", x)
    check_tensor(recon_name, recon)
    check_x_batch(x, batch)
    want = x.shape if k is None else (k,) + tuple(x.shape)
    if tuple(recon.shape) != tuple(want):
        raise ValueError(
            f"{recon_name} must have shape {tuple(want)} (x's shape"
            f"{'' if k is None else ' with K in front'}), got {tuple(recon.shape)}"
        )
    return data_rows(x, recon, batch, k)


def data_rows(x, recon, batch: int, k=None):
    """:func:`flatten_data` without its checks: for shapes that passed them."""
    if x.dim() == 2 and k is None:  # already canonical: no reshape (a new view) per call
        return x, recon
    d = 1
    for s in x.shape[1:]:
        d *= s
    if x.dim() == 2:
        return x, recon.reshape(k, batch, d)
    x2 = x.reshape(batch, d)
    r2 = recon.reshape(batch, d) if k is None else recon.reshape(k, batch, d)
    return x2, r2


def number_or_tensor(name: str, value, against: str) -> float:
    """A value that is not a tensor as :func:`check_number` takes it; the TypeError for one
    that is not a number either names both forms."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number or a tensor broadcastable to {against}, got "
                        f"{type_name(value)}")
    return check_number(name, value)


def canonical_obs_logvar(obs_logvar, x_shape, row_dims: int = 1, name: str = "obs_logvar",
                         against: str = "x"):
    """obs_logvar (float, or a tensor broadcastable to x) -> float, ``(D,)`` or ``(N, D)``
    (also a prior's mean or log-variance against its posterior, :func:`canonical_prior`).

    The first ``row_dims`` dims of x are rows (N of them), the rest one row's D
    elements. A tensor constant across rows becomes ``(D,)``; otherwise ``(N, D)``.
    """
    if not isinstance(obs_logvar, torch.Tensor):
        return number_or_tensor(name, obs_logvar, against)
    check_tensor(name, obs_logvar)
    x_shape = torch.Size(x_shape)
    if not broadcasts_to(obs_logvar.shape, x_shape):
        raise ValueError(
            f"{name} of shape {tuple(obs_logvar.shape)} does not broadcast to {against}'s shape "
            f"{tuple(x_shape)}"
        )
    return broadcast_rows(obs_logvar, x_shape, row_dims)


def broadcasts_to(shape, target) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` (without growing it)."""
    try:  # the same shape (a learned prior's usual case) without broadcast_shapes' cost
        return same_shape(shape, target) or torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def canonical_iwae_obs_logvar(obs_logvar, x_shape, recon_shape):
    """iwae_bound's obs_logvar: one shared by the K samples (broadcastable to x:
    :func:`canonical_obs_logvar`'s float, ``(D,)`` or ``(B, D)``), or one per sample, as a
    decoder that outputs its variance gives (broadcastable to recon_k's ``(K, B, ...)``
    and not to x) -> ``(K, B, D)``."""
    if not isinstance(obs_logvar, torch.Tensor):
        return canonical_obs_logvar(obs_logvar, x_shape)
    check_tensor("obs_logvar", obs_logvar)
    if broadcasts_to(obs_logvar.shape, torch.Size(x_shape)):
        return broadcast_rows(obs_logvar, x_shape)
    recon_shape = torch.Size(recon_shape)
    if not broadcasts_to(obs_logvar.shape, recon_shape):
        raise ValueError(
            f"obs_logvar of shape {tuple(obs_logvar.shape)} broadcasts neither to x's shape "
            f"{tuple(x_shape)} (one shared by the K samples) nor to recon_k's "
            f"{tuple(recon_shape)} (one per sample)")
    k, b, d = recon_shape[0], recon_shape[1], math.prod(recon_shape[2:])
    if same_shape(obs_logvar.shape, recon_shape):   # the decoder's own: no copy
        return obs_logvar.reshape(k, b, d)
    # (leading dims of 1 would have broadcast to x: this one varies over the K samples)
    return broadcast_rows(obs_logvar, recon_shape, row_dims=2).reshape(k, b, d)


def broadcast_rows(obs_logvar, x_shape, row_dims: int = 1):
    """:func:`canonical_obs_logvar` of a tensor, without its checks: for shapes that passed."""
    if type(x_shape) is not torch.Size:
        x_shape = torch.Size(x_shape)
    if (row_dims == 1 and len(x_shape) == 2 and same_shape(obs_logvar.shape, x_shape)
            and x_shape[0] > 1):
        return obs_logvar   # the usual (B, N) prior: per row already
    per_row = x_shape[row_dims:]
    # math.prod, not Size.numel(), here and in every op's shape arithmetic: numel() makes
    # a symbolic size a constant, and torch.export of a dynamic batch refuses that
    n, d = math.prod(x_shape[:row_dims]), math.prod(per_row)
    if same_shape(obs_logvar.shape, x_shape) and n > 1:  # per row already: no expand (views are
        # autograd nodes, each one a step of every backward)
        return obs_logvar if row_dims == 1 and len(x_shape) == 2 else obs_logvar.reshape(n, d)
    lead = obs_logvar.dim() - len(per_row)
    if lead <= 0 or all(s == 1 for s in obs_logvar.shape[:lead]):
        trailing = obs_logvar.reshape(obs_logvar.shape[max(lead, 0):])
        if trailing.numel() < d:
            trailing = widened(trailing)   # repeated within a row: see below
        return trailing.expand(per_row).reshape(d)
    # repeated by the expand: a 16-bit one is widened first, so that autograd sums its
    # copies' gradients in float32 and rounds once (one copy's alone may overflow)
    if obs_logvar.numel() < math.prod(x_shape):
        obs_logvar = widened(obs_logvar)
    return obs_logvar.expand(x_shape).reshape(n, d)


def canonical_prior(name: str, prior, like: torch.Tensor, like_name: str,
                    logvar: torch.Tensor):
    """A prior's mean or log-variance for posteriors ``like`` (the mean, ``(B, *)``) and
    ``logvar``: None (the N(0, I) value, 0), a number, or a tensor broadcastable to
    ``like`` -> None, a shared row ``(N,)`` or per-row ``(B, N)`` with ``N =
    like[0].numel()`` (the canonical form every backend takes; a number becomes a float32
    row, float64 where either posterior tensor is, as the result then is)."""
    if prior is None:
        return None
    if not isinstance(prior, torch.Tensor):
        value = number_or_tensor(name, prior, like_name)
        if value == 0.0:
            return None
        return torch.full((math.prod(like.shape[1:]),), value, dtype=result_dtype(like, logvar),
                          device=like.device)
    return canonical_obs_logvar(prior, like.shape, name=name, against=like_name)


# -- discretized mixture of logistics ------------------------------------------------

# The bit depth of a DMoL's data grid where none is given: 8-bit images (k / 255). Every
# entry point that takes ``bits`` reads None as this, so that one call's ``bits=None``
# (elbo's and iwae_bound's default) is valid at the others too.
DMOL_DEFAULT_BITS = 8


def check_bits(bits) -> int:
    """The bit depth of a DMoL's data grid: an int in 1..16, or None for
    :data:`DMOL_DEFAULT_BITS`."""
    if bits is None:
        return DMOL_DEFAULT_BITS
    bits = int(check_number("bits", bits, integer=True))
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    return bits


def holds_grid(dtype: torch.dtype, bits: int) -> bool:
    """Whether every value ``k / (2^bits - 1)`` of [0, 1], rounded to ``dtype``, still
    rounds back to its ``k``: the rounding, at most eps/4 below 1, must stay under half a
    bin (float16: up to 11 bits, bfloat16: up to 8, float32 and float64: all 16)."""
    return (2 ** bits - 1) * torch.finfo(dtype).eps < 2


def check_grid_dtype(x, bits: int, params_name: str = "params") -> None:
    """TypeError for an x whose dtype cannot hold the ``bits`` grid (:func:`holds_grid`):
    its values would be scored in a neighbouring bin. ``params_name``: the mixture's
    parameters as the caller names them (elbo's ``recon``, iwae_bound's ``recon_k``)."""
    if x.dtype.is_floating_point and not holds_grid(x.dtype, bits):
        raise TypeError(f"x in {x.dtype} cannot hold a {bits}-bit grid (some values round to a "
                        f"neighbouring bin); pass x as float32 ({params_name} may stay "
                        "16-bit)")


def check_likelihood_bits(likelihood: str, bits):
    """``bits`` as ``likelihood`` reads it: the DMoL's bit depth (:func:`check_bits`), and
    None for every other likelihood, which has no grid, so an explicit value there is a
    mistake."""
    if likelihood != DMOL:
        if bits is not None:
            raise ValueError(f"bits is only used with likelihood={DMOL!r}, not {likelihood!r}")
        return None
    return check_bits(bits)


def dmol_slots(channels: int) -> int:
    """Parameters per mixture component: the logit and (mean, log-scale, coeff) per
    channel for RGB (10), the logit, mean and log-scale for grayscale (3)."""
    return 10 if channels == 3 else 3


def check_dmol(x, params, *, params_name="params", k=None) -> tuple[int, int]:
    """x ``(B, C, H, W)`` with C in {1, 3}; params ``(B, S*M, H, W)`` (``(K, B, S*M, H, W)``
    with ``k``), S = :func:`dmol_slots`. Returns (C, M)."""
    check_tensor("x", x)
    check_tensor(params_name, params)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError("the discretized logistic mixture needs x of shape (B, C, H, W) with "
                         f"C = 1 or 3 channels, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    s = dmol_slots(c)
    lead = (b,) if k is None else (k, b)
    shape = tuple(params.shape)
    layout = "(B, 10*M, H, W): logit, then mean, log-scale, coeff per channel" if c == 3 else \
        "(B, 3*M, H, W): logit, mean, log-scale"
    if k is not None:
        layout = "(K, " + layout[1:]
    if (len(shape) != len(lead) + 3 or shape[:len(lead)] != lead or shape[-2:] != (h, w)
            or shape[len(lead)] == 0 or shape[len(lead)] % s):
        samples = "" if k is None else f"K = {k} samples (z_k's), "
        raise ValueError(f"{params_name} must be {layout} for M mixture components, with "
                         f"{samples}x's batch {b} and size {h}x{w}; got shape {shape} for x of "
                         f"shape {tuple(x.shape)}")
    return c, shape[len(lead)] // s

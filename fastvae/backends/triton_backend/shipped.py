"""What the Triton backend ships, for tests/test_kernels_compile.py: every kernel at every
constexpr configuration the host code can launch on a GPU, with the signature and the
divisibility-by-16 the GPU JIT would infer on the contiguous path.
"""
from __future__ import annotations

import itertools
from typing import Dict, List

from fastvae.kernels import discretized_logistic_mixture_log_prob as kd
from fastvae.kernels import elbo as ke
from fastvae.kernels import iwae_bound as ki
from fastvae.kernels import reduce as kred
from fastvae.kernels import reparameterize as kr
from fastvae.kernels import sample_with_kl as kswk
from fastvae.kernels import scale as ks

from . import configs

LIKELIHOOD_CODES = (configs.BERNOULLI, configs.CONTINUOUS_BERNOULLI, configs.GAUSSIAN_SCALAR,
                    configs.GAUSSIAN_TENSOR)
# The kernels' own buffers, fp32 whatever the caller's dtype (as the host allocates them).
_FP32_BUFFERS = {"ROW_VALUES", "KL_LATENT", "LOG_W", "OUT", "GOBS_PARTIALS", "WEIGHTS"}
# Integer arguments the JIT sees divisible by 16 at the benchmark shapes (D = 784, L = 32):
# the sizes and row strides; counts such as B, K or the program count are not.
_DIVISIBLE_INTS = {"D", "L", "BL", "CPAD", "stride_x", "stride_r", "stride_obs",
                   "stride_mu", "stride_lv", "stride_z", "stride_rk", "stride_rb", "stride_zk",
                   "stride_zb", "stride_pm", "stride_plv", "N", "N0", "N1", "N2", "N3", "N4", "N5"}
_SCALARS = {"obs_scalar", "beta", "c", "row_scale", "log_k", "free_bits"}
_SIZES = {"B", "D", "L", "K", "N", "BL", "CPAD", "NPART", "NBLK", *(f"N{i}" for i in range(6))}


def _signature(kernel, io: str, constexprs: Dict[str, int], pointers_of=None):
    """(signature, divisible argument indices) of ``kernel`` in argument order: pointers
    of the caller's dtype ``io`` unless listed otherwise, i32 sizes, fp32 scalars."""
    special = pointers_of or {}
    sig, divisible = {}, []
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _SCALARS:
            sig[name] = "fp32"
        elif name.isupper() and name not in _SIZES:  # pointers are named in capitals
            sig[name] = special.get(name, "*fp32" if name in _FP32_BUFFERS else io)
            divisible.append(i)
        else:
            sig[name] = "i32"
            if name in _DIVISIBLE_INTS:
                divisible.append(i)
    return sig, divisible


# The ELBO row kernel's switches in the calls that matter: training (the decoder's and
# encoder's gradients, a batch mean; the MC KL adds d/dz), free bits, and evaluation.
_ELBO_MODES = {
    "train": dict(KL_MC=False, FREE_BITS=False, REDUCE=True, NEED_GR=True, NEED_GMU=True,
                  NEED_GLV=True, NEED_GZ=False, OBS_GRAD_TENSOR=2),
    "train-mc": dict(KL_MC=True, FREE_BITS=False, REDUCE=True, NEED_GR=True, NEED_GMU=True,
                     NEED_GLV=True, NEED_GZ=True, OBS_GRAD_TENSOR=2),
    # estimator="stl": log q's parameters stopped, so no direct mu/logvar gradient
    "train-mc-stl": dict(KL_MC=True, FREE_BITS=False, REDUCE=True, NEED_GR=True, NEED_GMU=False,
                         NEED_GLV=False, NEED_GZ=True, OBS_GRAD_TENSOR=2),
    "free-bits": dict(KL_MC=False, FREE_BITS=True, REDUCE=True, NEED_GR=True, NEED_GMU=True,
                      NEED_GLV=True, NEED_GZ=False, OBS_GRAD_TENSOR=2),
    "eval": dict(KL_MC=False, FREE_BITS=False, REDUCE=False, NEED_GR=False, NEED_GMU=False,
                 NEED_GLV=False, NEED_GZ=False, OBS_GRAD_TENSOR=0),
}
_NO_PRIOR = dict(PRIOR=False, NEED_GPM=False, NEED_GPLV=False)
_LEARNED_PRIOR = dict(PRIOR=True, NEED_GPM=True, NEED_GPLV=True)
_ELBO_MODES = {mode: dict(switches, **_NO_PRIOR) for mode, switches in _ELBO_MODES.items()}
# A learned prior (fastvae.elbo(prior_mu=..., prior_logvar=...)) trains both KL forms.
_ELBO_MODES["train-prior"] = dict(_ELBO_MODES["train"], **_LEARNED_PRIOR)
_ELBO_MODES["train-mc-prior"] = dict(_ELBO_MODES["train-mc"], **_LEARNED_PRIOR)
# The IWAE kernels': training (every gradient but d/dx), the NLL estimate (none), and
# training with estimator="stl" or "dreg": the training switches plus the softmax weights
# for DReG's hook (the host drops the direct mu/logvar gradients, see iwae_bound.py).
_IWAE_MODES = {
    "train": dict(NEED_GX=False, NEED_GR=True, OBS_GRAD=2, NEED_GMU=True, NEED_GLV=True,
                  NEED_GZ=True, STORE_WEIGHTS=False),
    "eval": dict(NEED_GX=False, NEED_GR=False, OBS_GRAD=0, NEED_GMU=False, NEED_GLV=False,
                 NEED_GZ=False, STORE_WEIGHTS=False),
    "train-stl-dreg": dict(NEED_GX=False, NEED_GR=True, OBS_GRAD=2, NEED_GMU=True,
                           NEED_GLV=True, NEED_GZ=True, STORE_WEIGHTS=True),
}
_IWAE_MODES = {mode: dict(switches, **_NO_PRIOR) for mode, switches in _IWAE_MODES.items()}
# The learned prior's IWAE: the tiles of the benchmark shape only (D = 784, K = 5 on chip,
# K = 50 two-pass), to keep the compile test's time in bounds.
_IWAE_MODES["train-prior"] = dict(_IWAE_MODES["train"], **_LEARNED_PRIOR)
_IWAE_MODES["train-stl-dreg-prior"] = dict(_IWAE_MODES["train-stl-dreg"], **_LEARNED_PRIOR)
_PRIOR_D, _PRIOR_K = 784, 5


def _iwae_tiles(mode, lik):
    """(two-pass tiles, one-pass tiles) shipped for ``mode``."""
    rows = configs.row_tiles("iwae_bound", lik)
    onepass = configs.iwae_onepass_tiles(lik)
    if not mode.endswith("-prior"):
        return rows, onepass
    rows = [next(t for t in rows if t[0] is None or _PRIOR_D <= t[0])]
    onepass = [t for t in onepass if _PRIOR_K <= t[1] and _PRIOR_D <= t[2]][:1]
    return rows, onepass
# kl_normal: the ELBO row kernel with D = 0 and every latent and prior gradient.
_KL_NORMAL = dict(LIK=0, KL_MC=False, FREE_BITS=False, REDUCE=False, NEED_GX=False,
                  NEED_GR=False, OBS_GRAD=0, NEED_GMU=True, NEED_GLV=True, NEED_GZ=False,
                  **_LEARNED_PRIOR)
# sample_with_kl: forward with and without a prior (every gradient saved), backward with
# both z and the KL differentiated.
_SAMPLE_WITH_KL_MODES = (
    ("fwd", "std", dict(PRIOR=False, NEED_GMU=True, NEED_GLV=True, NEED_GPLV=False)),
    ("fwd", "prior", dict(PRIOR=True, NEED_GMU=True, NEED_GLV=True, NEED_GPLV=True)),
    ("bwd", "std", dict(HAS_DZ=True, HAS_GKL=True, NEED_GMU=True, NEED_GLV=True,
                        NEED_GPM=False, NEED_GPLV=False)),
    ("bwd", "prior", dict(HAS_DZ=True, HAS_GKL=True, NEED_GMU=True, NEED_GLV=True,
                          NEED_GPM=True, NEED_GPLV=True)),
)


# The ELBO row kernel with no data columns: the latent half of a DMoL ELBO (its data half
# is the DMoL kernel), at the tile configs.elbo_config gives D = 0.
_LATENT_MODES = {f"latents-{mode}": dict(_ELBO_MODES[mode], NEED_GR=False, OBS_GRAD_TENSOR=0)
                 for mode in _ELBO_MODES}


def _config(name, kernel, io, constexprs, num_warps, pointers_of=None):
    sig, divisible = _signature(kernel, io, constexprs, pointers_of)
    return dict(name=name, kernel=kernel, signature=sig, constexprs=constexprs,
                divisible=divisible, num_warps=num_warps)


def _dmol_configs(io: str, tag: str, element: int) -> List[dict]:
    """The DMoL kernel at every BLOCK_M tile, both channel counts, with and without the
    gradient; x is float32 (data under autocast) or, for 16-bit params, of their type
    too. Then the ELBO row kernel's latent-only modes."""
    out = []
    xs = ("*fp32",) if io == "*fp32" else ("*fp32", io)
    for block_m, (block_p, warps) in configs.DMOL_TILES.items():
        for channels, grad, x_type in itertools.product((1, 3), (True, False), xs):
            cx = {"C": channels, "NEED_GRAD": grad, "INT64": False, "BLOCK_M": block_m,
                  "BLOCK_P": block_p}
            x_tag = ",x16" if x_type != "*fp32" else ""
            out.append(_config(
                f"dmol_rows[C={channels},{'grad' if grad else 'eval'},{block_m}x{block_p}"
                f"{x_tag}{tag}]", kd.dmol_rows_kernel, io, cx, warps,
                {"X": x_type, "PARTIALS": "*fp32"}))
    block_b, block_d, block_l, warps = configs.elbo_config(65536, 0, 64, element)
    for mode, switches in _LATENT_MODES.items():
        cx = dict(switches, LIK=configs.BERNOULLI, NEED_GX=False, INT64=False, BLOCK_B=block_b,
                  BLOCK_D=block_d, BLOCK_L=block_l, BLOCK_SUM=configs.TICKET_SUM_BLOCK)
        cx["OBS_GRAD"] = cx.pop("OBS_GRAD_TENSOR")
        out.append(_config(f"elbo_rows[{mode},{block_b}x{block_d},L{block_l}{tag}]",
                           ke.elbo_rows_kernel, io, cx, warps,
                           {"CLAMPED": "*i32", "COUNTER": "*i32"}))
    return out


def shipped_configs(dtype: str = "fp32") -> List[dict]:
    """Each: name, kernel, signature, constexprs, num_warps, and the indices of the
    arguments the GPU JIT would mark divisible by 16.

    ``dtype`` ("fp32", "bf16" or "fp16") is the pointer type of the caller's tensors and
    of their gradients; absent pointers get a dummy of the same type
    (``_launch.dummy``), so they compile the same specialization. Names end in
    ``,{dtype}]`` unless fp32.
    """
    io = f"*{dtype}"
    tag = "" if dtype == "fp32" else f",{dtype}"
    out = []
    element = {"fp32": 4, "bf16": 2, "fp16": 2}[dtype]
    block_b, block_d, block_l, warps = configs.elbo_config(65536, 784, 64, element)
    fin_b, fin_l, fin_d, fin_sum = configs.FINISH_TILE
    for lik in LIKELIHOOD_CODES:
        for mode, switches in _ELBO_MODES.items():
            cx = dict(switches, LIK=lik, NEED_GX=False, INT64=False, BLOCK_B=block_b,
                      BLOCK_D=block_d, BLOCK_L=block_l, BLOCK_SUM=configs.TICKET_SUM_BLOCK)
            tensor_grad = cx.pop("OBS_GRAD_TENSOR")
            cx["OBS_GRAD"] = tensor_grad if lik == configs.GAUSSIAN_TENSOR else 0
            out.append(_config(f"elbo_rows[LIK={lik},{mode},{block_b}x{block_d},L{block_l}{tag}]",
                               ke.elbo_rows_kernel, io, cx, warps,
                               {"CLAMPED": "*i32", "COUNTER": "*i32"}))
        for mode, switches in _IWAE_MODES.items():
            row_tiles, onepass_tiles = _iwae_tiles(mode, lik)
            for _, tb, td, tl_ in row_tiles:
                cx = dict(switches, LIK=lik, BLOCK_B=tb, BLOCK_D=td, BLOCK_L=tl_)
                if lik != configs.GAUSSIAN_TENSOR:
                    cx["OBS_GRAD"] = 0
                w = configs.ROW_WARPS_OVERRIDE.get(("iwae_bound", lik, tb, td), configs.ROW_WARPS)
                out.append(_config(f"iwae_bound_rows[LIK={lik},{mode},{tb}x{td},L{tl_}{tag}]",
                                   ki.iwae_bound_rows_kernel, io, cx, w))
            for tb, tk, td, tl_ in onepass_tiles:
                cx = dict(switches, LIK=lik, BLOCK_B=tb, BLOCK_K=tk, BLOCK_D=td, BLOCK_L=tl_)
                if lik != configs.GAUSSIAN_TENSOR:
                    cx["OBS_GRAD"] = 0
                w = configs.IWAE_ONEPASS_WARPS.get((lik, tb, tk, td), configs.ROW_WARPS)
                out.append(_config(
                    f"iwae_bound_onepass[LIK={lik},{mode},{tb}x{tk}x{td},L{tl_}{tag}]",
                    ki.iwae_bound_onepass_kernel, io, cx, w))
    kb, kd, kl_, kw = configs.elbo_config(65536, 1, 64, 4)  # fp32's tile in every dtype
    cx = dict(_KL_NORMAL, INT64=False, BLOCK_B=kb, BLOCK_D=kd, BLOCK_L=kl_,
              BLOCK_SUM=configs.TICKET_SUM_BLOCK)
    out.append(_config(f"elbo_rows[kl_normal,{kb}x{kd},L{kl_}{tag}]", ke.elbo_rows_kernel, io,
                       cx, kw, {"CLAMPED": "*i32", "COUNTER": "*i32"}))
    clamp_b, clamp_l = configs.KL_CLAMP_TILE
    for mc, prior in ((False, False), (True, False), (False, True)):
        cx = {"KL_MC": mc, "PRIOR": prior, "INT64": False, "BLOCK_B": clamp_b,
              "BLOCK_L": clamp_l}
        name = f"kl_clamp[MC={int(mc)}{',prior' if prior else ''},{clamp_b}x{clamp_l}{tag}]"
        out.append(_config(name, ke.kl_clamp_kernel, io, cx, configs.ELBO_WARPS,
                           {"CLAMPED": "*i32", "COUNTER": "*i32"}))
    cx = {"SUM_ROWS": True, "BLOCK_P": fin_b, "BLOCK_D": fin_d, "BLOCK_SUM": fin_sum}
    out.append(_config(f"finish[{fin_b},D{fin_d},S{fin_sum}{tag}]", kred.finish_kernel, io, cx,
                       configs.FINISH_WARPS))
    out += _dmol_configs(io, tag, element)
    cx = {"CHUNKS": configs.REPARAMETERIZE_CHUNKS, "Q": kr.Q}
    for direction, kernel in (("fwd", kr.reparameterize_fwd_kernel),
                              ("bwd", kr.reparameterize_bwd_kernel)):
        out.append(_config(f"reparameterize_{direction}[CHUNKS={cx['CHUNKS']},Q={kr.Q}{tag}]",
                           kernel, io, cx, configs.REPARAMETERIZE_WARPS, {"SEED": "*i64"}))
    for _, block_b, block_n, warps in configs.SAMPLE_WITH_KL_TILES:
        for direction, prior, switches in _SAMPLE_WITH_KL_MODES:
            kernel = (kswk.sample_with_kl_fwd_kernel if direction == "fwd"
                      else kswk.sample_with_kl_bwd_kernel)
            cx = dict(switches, BLOCK_B=block_b, BLOCK_N=block_n, Q=kr.Q)
            out.append(_config(f"sample_with_kl_{direction}[{prior},{block_b}x{block_n}{tag}]",
                               kernel, io, cx, warps,
                               {"SEED": "*i64", "KL": "*fp32", "GKL": "*fp32"}))
    cx = {"BLOCK": configs.SCALE_BLOCK}
    # grad_output: the value's dtype, fp32 unless float64 (which the kernel never sees)
    out.append(_config(f"scale_grads[BLOCK={configs.SCALE_BLOCK}{tag}]", ks.scale_grads_kernel,
                       io, cx, configs.SCALE_WARPS, {"GO": "*fp32"}))
    return out

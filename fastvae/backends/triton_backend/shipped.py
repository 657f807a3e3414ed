"""What the Triton backend ships, for tests/test_kernels_compile.py: every kernel at every
constexpr configuration the host code can launch on a GPU, with the signature and the
divisibility-by-16 the GPU JIT would infer on the contiguous path.
"""
from __future__ import annotations

from typing import Dict, List

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
_FP32_BUFFERS = {"ROW_VALUES", "KL_LATENT", "LOG_W", "OUT", "GOBS_PARTIALS"}
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


def _config(name, kernel, io, constexprs, num_warps, pointers_of=None):
    sig, divisible = _signature(kernel, io, constexprs, pointers_of)
    return dict(name=name, kernel=kernel, signature=sig, constexprs=constexprs,
                divisible=divisible, num_warps=num_warps)


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
    rows = {"elbo": ke.elbo_rows_kernel, "iwae_bound": ki.iwae_bound_rows_kernel}
    for op, kernel in rows.items():
        for lik in LIKELIHOOD_CODES:
            for _, block_b, block_d, block_l in configs.row_tiles(op, lik):
                cx = {"LIK": lik, "BLOCK_B": block_b, "BLOCK_D": block_d, "BLOCK_L": block_l}
                warps = configs.ROW_WARPS_OVERRIDE.get((op, lik, block_b, block_d),
                                                       configs.ROW_WARPS)
                out.append(_config(f"{op}_rows[LIK={lik},{block_b}x{block_d},L{block_l}{tag}]",
                                   kernel, io, cx, warps))
    for lik in LIKELIHOOD_CODES:
        for block_b, block_k, block_d, block_l in configs.iwae_onepass_tiles(lik):
            cx = {"LIK": lik, "BLOCK_B": block_b, "BLOCK_K": block_k, "BLOCK_D": block_d,
                  "BLOCK_L": block_l}
            warps = configs.IWAE_ONEPASS_WARPS.get((lik, block_b, block_k, block_d),
                                                   configs.ROW_WARPS)
            out.append(_config(
                f"iwae_bound_onepass[LIK={lik},{block_b}x{block_k}x{block_d},L{block_l}{tag}]",
                ki.iwae_bound_onepass_kernel, io, cx, warps))
    fin_b, fin_l, fin_d, fin_sum = configs.FINISH_TILE
    cx = {"BLOCK_P": fin_b, "BLOCK_D": fin_d, "BLOCK_SUM": fin_sum}
    out.append(_config(f"finish[{fin_b},D{fin_d},S{fin_sum}{tag}]", kred.finish_kernel, io, cx,
                       configs.FINISH_WARPS))
    cx = {"BLOCK_B": fin_b, "BLOCK_L": fin_l, "BLOCK_D": fin_d}
    out.append(_config(f"elbo_free_bits[{fin_b}x{fin_l},D{fin_d}{tag}]", ke.elbo_free_bits_kernel,
                       io, cx, configs.FINISH_WARPS, {"CLAMPED": "*i32"}))
    cx = {"CHUNKS": configs.REPARAMETERIZE_CHUNKS, "Q": kr.Q}
    for direction, kernel in (("fwd", kr.reparameterize_fwd_kernel),
                              ("bwd", kr.reparameterize_bwd_kernel)):
        out.append(_config(f"reparameterize_{direction}[CHUNKS={cx['CHUNKS']},Q={kr.Q}{tag}]",
                           kernel, io, cx, configs.REPARAMETERIZE_WARPS, {"SEED": "*i64"}))
    for _, block_b, block_n, warps in configs.SAMPLE_WITH_KL_TILES:
        cx = {"BLOCK_B": block_b, "BLOCK_N": block_n, "Q": kr.Q}
        for direction, kernel in (("fwd", kswk.sample_with_kl_fwd_kernel),
                                  ("bwd", kswk.sample_with_kl_bwd_kernel)):
            out.append(_config(f"sample_with_kl_{direction}[{block_b}x{block_n}{tag}]", kernel, io,
                               cx, warps, {"SEED": "*i64", "KL": "*fp32", "GKL": "*fp32"}))
    cx = {"BLOCK": configs.SCALE_BLOCK}
    # grad_output: the value's dtype, fp32 unless float64 (which the kernel never sees)
    out.append(_config(f"scale_grads[BLOCK={configs.SCALE_BLOCK}{tag}]", ks.scale_grads_kernel,
                       io, cx, configs.SCALE_WARPS, {"GO": "*fp32"}))
    return out

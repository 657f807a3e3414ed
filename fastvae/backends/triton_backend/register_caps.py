"""Register caps (Triton's ``maxnreg``, PTX ``.maxnreg``) for the launch classes whose
default allocation spills at an occupancy step of one ptxas and not a step down, where
the other Triton's ptxas puts it. ptxas takes a cap as its target, so a cap set on
launches that fit without it raises their registers: each entry names the narrowest
launch classes that spilled (tests/test_row_tiles_register_need.py pins them)."""
from __future__ import annotations

from .configs import (BERNOULLI, CONTINUOUS_BERNOULLI, GAUSSIAN_SAMPLES, GAUSSIAN_SCALAR,
                      GAUSSIAN_TENSOR)

# Launch classes. Two-pass IWAE: EVAL (no gradient), TRAIN (d/dz, no d/dx and no obs_logvar
# gradient), TRAIN_NO_Z (gradients, none of d/dz, d/dx, d/dobs_logvar), TRAIN_X (d/dx, no
# obs_logvar gradient), OBS (an obs_logvar gradient). ELBO rows: TRAIN (any gradient),
# EVAL (rows aligned to 16), EVAL_UNALIGNED.
EVAL, EVAL_UNALIGNED, TRAIN, TRAIN_NO_Z, TRAIN_X, OBS = (
    "eval", "eval-unaligned", "train", "train-z", "train+x", "obs")
NO_OBS_GRADIENT = {EVAL, TRAIN, TRAIN_NO_Z, TRAIN_X}

# {launch class: maxnreg} by (kernel, LIK, element size, BLOCK_B, BLOCK_D, BLOCK_L,
# num_warps), what spilled without it. Two-pass IWAE: the 16-bit Gaussian tensor
# obs_logvar without its gradient (48 registers, 4-8 bytes, ptxas 13 on sm_80; 64-80 with
# it); the continuous Bernoulli at L > 32 (80, 12 bytes, ptxas 13 on sm_90, training); the
# 16-bit Bernoulli's evaluation (64, 8 bytes, Triton 3.6 on sm_90, B=4096 D=784 L=32
# K=50; training 56-72, none); the 16-bit Gaussian float obs_logvar's training with d/dz,
# without d/dx (48, 4 bytes, Triton 3.6 on sm_80, that shape; without d/dz 48, none).
# From a sweep of every class at D = 784, L = 3, 32, 70, B = 3 and 4096 (RESULTS.md, "The
# two-pass IWAE kernel on rows not aligned to 16"): the fp32 16 x 64 x 64 tile at 8 warps
# in training with d/dz, every likelihood but the continuous Bernoulli's (64, 4 bytes,
# ptxas 13 on sm_90; 70-80 where it did not spill); its Gaussian float evaluation, fp32
# and 16-bit (40, 8-16 bytes, Triton 3.6 on sm_90; 48 on sm_80; capped at 48 or 56, ptxas
# 13 spilled 8-12 bytes there, where it takes 40 uncapped: 64); the continuous
# Bernoulli's fp32 8 x 64 x 16 tile with d/dx (32, 8 bytes, Triton 3.6 on sm_90; 40 on
# sm_80); the fp32 Gaussian tensor obs_logvar's gradient at 16 x 64 x 16 (64, 4 bytes) and
# 16 x 64 x 32 (80 for a (B, D) one, 72 one per sample, 4 bytes), ptxas 13 on sm_80
# (68-92 on sm_90; with d/dx, in the same class, 90-96). ELBO evaluation on rows not
# aligned to 16 (72, 4 bytes, ptxas 13 on sm_90, B=13 D=100 L=17; aligned: 32-40, a cap
# would raise them).
WITH_Z = (TRAIN, TRAIN_X, OBS)
MAXNREG = {("iwae_rows", GAUSSIAN_TENSOR, 2, 32, 64, 32, 8): dict.fromkeys(NO_OBS_GRADIENT, 64),
           **{("iwae_rows", CONTINUOUS_BERNOULLI, s, 16, 64, 64, 8):
              dict.fromkeys(NO_OBS_GRADIENT, 128) for s in (2, 4)},
           ("iwae_rows", BERNOULLI, 2, 16, 64, 32, 4): {EVAL: 72},
           ("iwae_rows", GAUSSIAN_SCALAR, 2, 16, 64, 32, 4): {TRAIN: 56},
           **{("iwae_rows", lik, 4, 16, 64, 64, 8): dict.fromkeys(WITH_Z, 80)
              for lik in (BERNOULLI, GAUSSIAN_TENSOR, GAUSSIAN_SAMPLES)},
           ("iwae_rows", GAUSSIAN_SCALAR, 4, 16, 64, 64, 8): {**dict.fromkeys(WITH_Z, 80),
                                                              EVAL: 64},
           ("iwae_rows", GAUSSIAN_SCALAR, 2, 16, 64, 64, 8): {EVAL: 64},
           ("iwae_rows", CONTINUOUS_BERNOULLI, 4, 8, 64, 16, 8): {TRAIN_X: 40},
           **{("iwae_rows", GAUSSIAN_TENSOR, 4, 16, 64, bl, 4): {OBS: 96} for bl in (16, 32)},
           ("iwae_rows", GAUSSIAN_SAMPLES, 4, 16, 64, 32, 4): {OBS: 96},
           ("elbo_rows", CONTINUOUS_BERNOULLI, 2, 16, 64, 32, 4): {EVAL_UNALIGNED: 80}}


def iwae_class(needs, obs_grad: bool) -> str:
    """The launch class of a two-pass IWAE launch of gradient flags ``needs`` (x, recon,
    mu, logvar, z, ...)."""
    if obs_grad or needs[0]:
        return OBS if obs_grad else TRAIN_X
    return TRAIN if needs[4] else TRAIN_NO_Z if any(needs) else EVAL


def elbo_class(needs, aligned: bool) -> str:
    """The launch class of an ELBO rows launch: ``aligned`` when its sizes and row strides
    are multiples of 16."""
    return TRAIN if any(needs) else EVAL if aligned else EVAL_UNALIGNED


# Every two-pass IWAE launch on rows not aligned to 16 (_launch.rows_aligned), at its
# half tile: without a cap ptxas chose 40-72 registers for some and spilled 4-24 bytes
# (Triton 3.6 and 3.9, sm_80 and sm_90, D = 7, 30, 100; at 96: none, 48-96 registers).
IWAE_ROWS_UNALIGNED_MAXNREG = 96


def maxnreg(launch_class: str, *key) -> dict:
    """The launch options of a launch of ``launch_class`` and MAXNREG's ``key``: its
    maxnreg, or none."""
    cap = MAXNREG.get(key, {}).get(launch_class)
    return {} if cap is None else {"maxnreg": cap}


def iwae_rows_maxnreg(launch_class: str, aligned: bool, int64: bool, *key) -> dict:
    """:func:`maxnreg` of a two-pass IWAE launch (``key`` without the kernel's name), or
    IWAE_ROWS_UNALIGNED_MAXNREG's cap where its rows are not aligned; none with int64
    offsets, whose registers the caps (found with int32 ones) would cut: the per-sample
    obs_logvar's gradient at INT64 took 96-128 registers and no spill, and at its class's
    cap of 96 spilled 32 bytes (Triton 3.9, sm_80)."""
    if int64:
        return {}
    if not aligned:
        return {"maxnreg": IWAE_ROWS_UNALIGNED_MAXNREG}
    return maxnreg(launch_class, "iwae_rows", *key)

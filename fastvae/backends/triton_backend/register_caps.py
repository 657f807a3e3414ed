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
# obs_logvar gradient), OBS (an obs_logvar gradient). ELBO rows: those, but OBS without
# d/dx and OBS_X with it; EVAL with rows aligned to 16, EVAL_UNALIGNED without.
EVAL, EVAL_UNALIGNED, TRAIN, TRAIN_NO_Z, TRAIN_X, OBS, OBS_X = (
    "eval", "eval-unaligned", "train", "train-z", "train+x", "obs", "obs+x")
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
# (68-92 on sm_90; with d/dx, in the same class, 90-96).
# ELBO rows, from a sweep of every class at D = 7, 30, 100, 784 and L = 3, 32, 70 in fp32,
# bf16, fp16 and autocast's bf16, with free bits and reduction "none" (RESULTS.md, "ELBO
# rows not aligned to 16"):
# * the 16-bit continuous Bernoulli's evaluation, rows not aligned (72, 4 bytes, ptxas 13
#   on sm_90, B=13 D=100 L=17; aligned: 32-40, a cap would raise them); the 16-bit
#   Bernoulli's half tile at D < 16 likewise (72, 4 bytes, Triton 3.6 on sm_90; capped at
#   80 or 96, ptxas 13 spilled 8-16 bytes on sm_90 with the MC KL; at 112 or 128, none),
#   and its training with d/dz (fp16, MC KL: 96, 12 bytes, Triton 3.6 on sm_90; 108-128
#   elsewhere; at 128 none, both Tritons: the classes tier's fp16 calls);
# * the 64-latent tile of unaligned latents at D <= 32 with d/dz or d/dx, every likelihood
#   (96, 4-8 bytes, Triton 3.6 on sm_90, MC KL; 3.6 on sm_80 chose 128; the 16-bit
#   continuous Bernoulli's with d/dx: 72, 8 bytes, ptxas 13 on sm_90), and the 16-bit
#   continuous Bernoulli's 32-latent tile at D < 16 with d/dz (fp16, 56, 8 bytes, ptxas 13
#   on sm_90; at L = 3 it takes 96-114);
# * the 16-bit Gaussian float's at D < 16, L <= 16 with free bits (96, 8 bytes, Triton 3.6
#   on sm_90; 106-125 elsewhere), at D >= 64 with the MC KL (fp16, 72, 4 bytes, Triton 3.6
#   on sm_80; 78 on sm_90); the fp32 Gaussian float's 16 x 64 x 64 with d/dz (free bits,
#   80, 8 bytes, Triton 3.6 on sm_90; 110 on sm_80);
# * the 16-bit tensor obs_logvar's gradient with d/dx (48, 4-8 bytes: ptxas 13 on sm_80 at
#   D = 784 with a (D,) obs_logvar, Triton 3.6 on sm_90 at D = 30, L = 70; 64 costs 8
#   warps no more programs an SM than 56).
_LATENTS_64 = [(lik, s, bd) for lik, s in ((BERNOULLI, 4), (BERNOULLI, 2), (GAUSSIAN_SCALAR, 4),
                                           (GAUSSIAN_SCALAR, 2), (CONTINUOUS_BERNOULLI, 2))
               for bd in (16, 32)]
ELBO_MAXNREG = {
    ("elbo_rows", CONTINUOUS_BERNOULLI, 2, 16, 64, 32, 4): {EVAL_UNALIGNED: 80},
    ("elbo_rows", BERNOULLI, 2, 64, 16, 16, 4): {EVAL_UNALIGNED: 128, TRAIN: 128},
    **{("elbo_rows", lik, s, 16, bd, 64, 4): {TRAIN: 128, TRAIN_X: 128}
       for lik, s, bd in _LATENTS_64},
    ("elbo_rows", GAUSSIAN_SCALAR, 2, 64, 16, 16, 4): {TRAIN: 128, TRAIN_NO_Z: 128},
    ("elbo_rows", CONTINUOUS_BERNOULLI, 2, 32, 16, 32, 4): {TRAIN: 128},
    ("elbo_rows", GAUSSIAN_SCALAR, 2, 32, 64, 16, 4): {TRAIN: 80},
    ("elbo_rows", GAUSSIAN_SCALAR, 4, 16, 64, 64, 4): {TRAIN: 128},
    **{("elbo_rows", GAUSSIAN_TENSOR, 2, 16, bd, bl, 8): {OBS_X: 64}
       for bd, bl in ((64, 16), (64, 32), (32, 64))}}
# A learned prior's ELBO rows (two more latent inputs and gradients; fp32's tile): the
# caps above would cut them (the MC training at D <= 32, L = 70 takes 106-168 registers
# and spilled 8-104 bytes at 128, Triton 3.6), so they take their own: the 16-bit
# Gaussian float's at D < 16, L > 32 with d/dz (128, 4 bytes, ptxas 13 on sm_90).
# The two-pass IWAE kernel with a prior likewise (the fp32 16 x 64 x 64 tile's training cap
# of 80 spilled it 28-64 bytes), but for the tensor obs_logvar's gradient at 4 warps:
# uncapped a (B, L) prior spilled 4 bytes at 64 registers (fp32, L = 3, Triton 3.9, sm_80),
# at MAXNREG's 96 none.
PRIOR_MAXNREG = {("elbo_rows", GAUSSIAN_SCALAR, 2, 16, 16, 64, 4): {TRAIN: 168},
                 **{("iwae_rows", GAUSSIAN_TENSOR, 4, 16, 64, bl, 4): {OBS: 96}
                    for bl in (16, 32)},
                 ("iwae_rows", GAUSSIAN_SAMPLES, 4, 16, 64, 32, 4): {OBS: 96}}
# The one-pass IWAE kernel (its key has BLOCK_K after BLOCK_B), from a sweep of its classes
# (B = 3, D = 64, 256, 784, L = 3, 32, 70, K = 2, 5, 8, every likelihood layout, fp32 and
# bf16, both Tritons; RESULTS.md, "The one-pass IWAE kernel's launch classes"): the
# 16-bit Gaussian tensor obs_logvar's gradient at 128 latents a step or 1024 columns (128
# registers, 4-8 bytes, sm_80 and sm_90; 128-166 where it did not spill: a cap of 168
# keeps the one program of 8 warps an SM those take), the fp32 Bernoulli's 16 x 4 x 64 x
# 32 with d/dz (80, 4 bytes, Triton 3.6 on sm_80; 80 on sm_90, 110 with d/dx).
ONEPASS_MAXNREG = {
    **{("iwae_onepass", GAUSSIAN_TENSOR, 2, *tile, 8): {OBS: 168}
       for tile in ((8, 4, 64, 128), (4, 8, 64, 128), (1, 8, 1024, 128))},
    ("iwae_onepass", BERNOULLI, 4, 16, 4, 64, 32, 8): {TRAIN: 128}}
WITH_Z = (TRAIN, TRAIN_X, OBS)
# The 16-bit Gaussian tensor obs_logvar's gradient at 32 x 64 x 16 (L <= 16), 8 warps: fp16
# training spilled 4 bytes at 64 registers (B = 64, D = 784, L = 3, K = 9 and 16, Triton
# 3.9, sm_80; classes tier); capped at 80, none of the class's 22 int32 specializations
# spilled on either Triton or arch (71-80; at 72, d/dx spilled 8-20 bytes; uncapped up to
# 128). RESULTS.md, "The classes tier's 16-bit, amp and prior launches".
# Found by the classes tier's fp16 calls under Triton 3.6 (sm_90, B = 64, D = 784, L = 70,
# K = 9 and 16), the 16 x 64 x 64 tile at 8 warps: the 16-bit Bernoulli's evaluation (48
# registers, 12 bytes; capped at 64 none of the class's int32 specializations spilled on
# either Triton or arch, 60-64) and the 16-bit tensor obs_logvar's gradient (64, 4 bytes;
# at 80 none, 63-80). `compile --tier classes --maxnreg` (RESULTS.md, "The classes tier
# under Triton 3.6: fp16, amp, DReG, an (L,) prior").
MAXNREG = {("iwae_rows", GAUSSIAN_TENSOR, 2, 32, 64, 32, 8): dict.fromkeys(NO_OBS_GRADIENT, 64),
           ("iwae_rows", GAUSSIAN_TENSOR, 2, 32, 64, 16, 8): {OBS: 80},
           ("iwae_rows", GAUSSIAN_TENSOR, 2, 16, 64, 64, 8): {OBS: 80},
           ("iwae_rows", BERNOULLI, 2, 16, 64, 64, 8): {EVAL: 64},
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
           **ELBO_MAXNREG, **ONEPASS_MAXNREG}


def iwae_class(needs, obs_grad: bool) -> str:
    """The launch class of a two-pass IWAE launch of gradient flags ``needs`` (x, recon,
    mu, logvar, z, ...)."""
    if obs_grad or needs[0]:
        return OBS if obs_grad else TRAIN_X
    return TRAIN if needs[4] else TRAIN_NO_Z if any(needs) else EVAL


def elbo_class(needs, obs_grad: bool, aligned: bool) -> str:
    """The launch class of an ELBO rows launch of gradient flags ``needs`` (x, recon, mu,
    logvar, z, ...): ``aligned`` when its sizes and row strides are multiples of 16."""
    if obs_grad:
        return OBS_X if needs[0] else OBS
    if any(needs):
        return iwae_class(needs, False)
    return EVAL if aligned else EVAL_UNALIGNED


# Every two-pass IWAE launch on rows not aligned to 16 (_launch.rows_aligned), at its
# half tile: without a cap ptxas chose 40-72 registers for some and spilled 4-24 bytes
# (Triton 3.6 and 3.9, sm_80 and sm_90, D = 7, 30, 100; at 96: none, 48-96 registers).
IWAE_ROWS_UNALIGNED_MAXNREG = 96
# One-pass IWAE launches on rows not aligned to 16, at their 16 warps
# (iwae_configs.IWAE_ONEPASS_UNALIGNED_WARPS), with 128-latent tiles (L past 64, or the
# 1024-column tile): uncapped, ptxas aimed at 40 or 64 registers (3 or 2 programs an SM)
# and spilled 4-12 bytes in 2 (Triton 3.6) and 8 (3.9) of their 1000 compiles (D = 7,
# 100, 300, K = 2 and 5, every class, likelihood and dtype); others took up to 123. A
# cap ends that aim: at 96 and at 128 the training tiles at D = 7, L = 70 still spilled
# 4-12 bytes at 96 (3.9; the rest none), at 255 none (D = 7, L = 70, both Tritons). The
# tiles of fewer latents did not spill uncapped, and a cap would have cut their programs
# an SM (at 40 registers or fewer: 958 of 1960 compiles, with a cap on every tile 528;
# RESULTS.md, "The one-pass IWAE kernel on rows not aligned to 16").
IWAE_ONEPASS_UNALIGNED_MAXNREG = 255
# The sample-warp IWAE kernel with latent rows not aligned to 16 (L, a latent row stride
# or base pointer; :func:`iwae_sample_warps_maxnreg`): each latent its own load. Uncapped,
# Triton 3.9's ptxas chose 128 registers and spilled 4-12 bytes (B = 64, D = 784, L = 3,
# K = 50, training: sm_80 with and without DReG, sm_90 with DReG and a prior); at 168 none
# spilled, 113-168 registers, both Tritons (RESULTS.md, "The classes tier's small
# kernels"). Aligned latents (the bar's L = 32) took 80-150 uncapped, none spilling.
IWAE_SAMPLE_WARPS_UNALIGNED_MAXNREG = 168
# Every two-pass IWAE launch with int64 offsets: without a cap ptxas chose 40-201
# registers and spilled 4-60 bytes at 40-168 in 123 of 1672 compiles (a sweep of every
# class at D = 7, 30, 100, 784, L = 3, 32, 70, B = 64 and 4096, fp32 and bf16, both
# Tritons, sm_80 and sm_90; RESULTS.md, "Two-pass IWAE launches with int64 offsets"). A
# cap of 128 left the tensor obs_logvar's on unaligned rows spilling (16-64 bytes at D =
# 100, Triton 3.6): those take 168. Half the tile's rows spilled more, at 40-80.
# (every other launch, the tensor obs_logvar's on unaligned rows)
IWAE_ROWS_INT64_MAXNREG = (128, 168)
# Every ELBO rows launch with int64 offsets (at 32 latents a step,
# configs.ELBO_INT64_BLOCK_L): at the int32 tile without a cap ptxas spilled 4-8 bytes at
# 40-168 registers in 16 of 2832 compiles (a sweep at B = 200, D = 7, 30, 100, 784, L =
# 3, 32, 70, every likelihood layout, fp32 and bf16, both KL modes, evaluation, training,
# with d/dx, both Tritons, sm_80 and sm_90; RESULTS.md, "ELBO rows with int64 offsets").
# A cap of 128 spilled the 64-latent training tiles and the 16-bit ones at D < 16
# (160-235 uncapped); the others took the same registers at 128 as at 255 (1039 of 1116;
# any cap ends ptxas's occupancy target): so the highest. At 255 the 64-latent tiles
# still spilled (ptxas 13); at 32 latents none, with a learned prior, free bits and
# reduction "none" as well.
ELBO_INT64_MAXNREG = 255


def maxnreg(launch_class: str, *key, table: dict = MAXNREG) -> dict:
    """The launch options of a launch of ``launch_class`` and ``table``'s ``key``: its
    maxnreg, or none."""
    cap = table.get(key, {}).get(launch_class)
    return {} if cap is None else {"maxnreg": cap}


def elbo_rows_maxnreg(launch_class: str, prior: bool, int64: bool, *key) -> dict:
    """:func:`maxnreg` of an ELBO rows launch (``key`` without the kernel's name), from
    PRIOR_MAXNREG with a learned prior; ELBO_INT64_MAXNREG with int64 offsets, whose
    registers a cap found with int32 ones may cut (as the two-pass IWAE kernel's)."""
    if int64:
        return {"maxnreg": ELBO_INT64_MAXNREG}
    return maxnreg(launch_class, "elbo_rows", *key, table=PRIOR_MAXNREG if prior else MAXNREG)


def kl_rows_maxnreg(int64: bool, prior: bool, block_l: int, gradients: bool) -> dict:
    """:func:`maxnreg` of the row kernel as kl_standard_normal and kl_normal run it: with
    int64 offsets ELBO_INT64_MAXNREG (uncapped, a (B, L) prior's fp32 32 x 64 evaluation
    spilled 4 bytes at 96 registers, Triton 3.9, sm_80); likewise kl_normal's gradients at
    64 latents a step (Triton 3.6, int32 offsets, L = 70: bf16 with a prior given as
    numbers 128 registers, 8 bytes, sm_80; fp32 with an (L,) prior 128, 20 bytes, sm_90;
    at 168 a (B, L) prior's spilled, at 255 none of the 44 specializations on either
    Triton, 48-254). Other int32 launches did not spill uncapped."""
    if int64 or (prior and gradients and block_l == 64):
        return {"maxnreg": ELBO_INT64_MAXNREG}
    return {}


# The pair kernel's training launches (8 warps: two programs an SM at up to 128
# registers, where ptxas aims) spilled 4-20 bytes at 128 in a sweep of D = 144, 300, 784,
# K = 2, 5, 16, L = 3, 64, fp32 and bf16, DReG, a (B, L) prior (RESULTS.md, "The pair IWAE
# kernel's launch classes"): fp32 at 64 latents (Triton 3.6, sm_80 and sm_90: 5 of 48),
# 16-bit rows not aligned to 16 (3.9, sm_90: 2 of 96), and with int64 offsets those and
# fp32 at 16 latents (6 and 4 of 602). Most launches of those classes took 130-204
# registers uncapped (one program an SM) where they did not spill. 16-bit aligned rows
# with int64 offsets did not spill uncapped, and at 255 one did (8 bytes at 254, bf16
# D = 784 L = 64 with DReG and a prior, Triton 3.9, sm_90).
IWAE_PAIRS_MAXNREG = 255


def iwae_pairs_maxnreg(launch_class: str, int64: bool, element_size: int, aligned: bool,
                       block_l: int) -> dict:
    """:func:`maxnreg` of a pair-kernel launch: IWAE_PAIRS_MAXNREG for training in fp32 at
    64 latents or with int64 offsets, and in 16 bits on rows not ``aligned``; none for
    evaluation."""
    if launch_class != EVAL and (not aligned if element_size < 4
                                 else int64 or block_l == 64):
        return {"maxnreg": IWAE_PAIRS_MAXNREG}
    return {}


def iwae_sample_warps_maxnreg(latents_aligned: bool) -> dict:
    """A sample-warp IWAE launch's cap: IWAE_SAMPLE_WARPS_UNALIGNED_MAXNREG where its latent
    rows are not aligned (``_launch.latents_aligned``), else none."""
    return {} if latents_aligned else {"maxnreg": IWAE_SAMPLE_WARPS_UNALIGNED_MAXNREG}


def iwae_onepass_maxnreg(launch_class: str, aligned: bool, lik: int, element_size: int,
                         block_b: int, block_k: int, block_d: int, block_l: int,
                         warps: int) -> dict:
    """:func:`maxnreg` of a one-pass IWAE launch, or IWAE_ONEPASS_UNALIGNED_MAXNREG's cap
    where its rows are not aligned and its tile is 128 latents wide."""
    if not aligned and block_l == 128:
        return {"maxnreg": IWAE_ONEPASS_UNALIGNED_MAXNREG}
    return maxnreg(launch_class, "iwae_onepass", lik, element_size, block_b, block_k,
                   block_d, block_l, warps)


def iwae_rows_maxnreg(launch_class: str, aligned: bool, int64: bool, prior: bool, lik: int,
                      *key) -> dict:
    """:func:`maxnreg` of a two-pass IWAE launch (``key`` without the kernel's name and
    likelihood), IWAE_ROWS_UNALIGNED_MAXNREG's cap where its rows are not aligned, or with
    int64 offsets IWAE_ROWS_INT64_MAXNREG's (the caps found with int32 ones would cut
    those: the per-sample obs_logvar's gradient at INT64 took 96-128 registers and no
    spill, and at its class's cap of 96 spilled 32 bytes, Triton 3.9, sm_80). A learned
    ``prior`` (two more latent inputs and gradients) takes PRIOR_MAXNREG's class caps, and
    at INT64 the higher cap: at the class cap of 80 the fp32 16 x 64 x 64 tile's training
    spilled 28-64 bytes, uncapped none (72-128 registers); at INT64's 128, 4-24 bytes, at
    168 none (Triton 3.9, classes tier; RESULTS.md, "The classes tier's 16-bit, amp and
    prior launches")."""
    if int64:
        tensor_obs = lik in (GAUSSIAN_TENSOR, GAUSSIAN_SAMPLES)
        return {"maxnreg": IWAE_ROWS_INT64_MAXNREG[prior or (not aligned and tensor_obs)]}
    if not aligned:
        return {"maxnreg": IWAE_ROWS_UNALIGNED_MAXNREG}
    return maxnreg(launch_class, "iwae_rows", lik, *key,
                   table=PRIOR_MAXNREG if prior else MAXNREG)

"""Register caps (Triton's ``maxnreg``, PTX ``.maxnreg``) for the launch classes whose
default allocation spills at an occupancy step of one ptxas and not a step down, where
the other Triton's ptxas puts it. ptxas takes a cap as its target, so a cap set on
launches that fit without it raises their registers: each entry names the narrowest
launch classes that spilled (tests/test_row_tiles_register_need.py pins them)."""
from __future__ import annotations

from .configs import BERNOULLI, CONTINUOUS_BERNOULLI, GAUSSIAN_SCALAR, GAUSSIAN_TENSOR

# Launch classes. Two-pass IWAE: EVAL (no gradient), TRAIN (d/dz, no d/dx and no obs_logvar
# gradient), TRAIN_NO_Z (gradients, none of d/dz, d/dx, d/dobs_logvar), TRAIN_X (d/dx, no
# obs_logvar gradient), OBS (an obs_logvar gradient). ELBO rows: TRAIN (any gradient),
# EVAL (rows aligned to 16), EVAL_UNALIGNED.
EVAL, EVAL_UNALIGNED, TRAIN, TRAIN_NO_Z, TRAIN_X, OBS = (
    "eval", "eval-unaligned", "train", "train-z", "train+x", "obs")
NO_OBS_GRADIENT = {EVAL, TRAIN, TRAIN_NO_Z, TRAIN_X}

# (maxnreg, launch classes) by (kernel, LIK, element size, BLOCK_B, BLOCK_D, BLOCK_L,
# num_warps). Two-pass IWAE: the 16-bit Gaussian tensor obs_logvar without its gradient
# (48 registers, 4-8 bytes, ptxas 13 on sm_80; 64-80 with it); the continuous Bernoulli at
# L > 32 (80, 12 bytes, ptxas 13 on sm_90, training); the 16-bit Bernoulli's evaluation
# (64, 8 bytes, Triton 3.6 on sm_90, B=4096 D=784 L=32 K=50; training 56-72, none); the
# 16-bit Gaussian float obs_logvar's training with d/dz, without d/dx (48, 4 bytes,
# Triton 3.6 on sm_80, that shape; without d/dz 48, none). ELBO evaluation on rows not
# aligned to 16 (72, 4 bytes, ptxas 13 on sm_90, B=13 D=100 L=17; aligned: 32-40, a cap
# would raise them).
MAXNREG = {("iwae_rows", GAUSSIAN_TENSOR, 2, 32, 64, 32, 8): (64, NO_OBS_GRADIENT),
           **{("iwae_rows", CONTINUOUS_BERNOULLI, s, 16, 64, 64, 8):
              (128, NO_OBS_GRADIENT) for s in (2, 4)},
           ("iwae_rows", BERNOULLI, 2, 16, 64, 32, 4): (72, {EVAL}),
           ("iwae_rows", GAUSSIAN_SCALAR, 2, 16, 64, 32, 4): (56, {TRAIN}),
           ("elbo_rows", CONTINUOUS_BERNOULLI, 2, 16, 64, 32, 4): (80, {EVAL_UNALIGNED})}


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


def maxnreg(launch_class: str, *key) -> dict:
    """The launch options of a launch of ``launch_class`` and MAXNREG's ``key``: its
    maxnreg, or none."""
    cap, classes = MAXNREG.get(key, (None, ()))
    return {"maxnreg": cap} if launch_class in classes else {}

"""Run folders and what is restored from them: the model a checkpoint describes.

Everything that can be wrong with a checkpoint's content is a :class:`CheckpointError`
naming the file, so the command prints one line instead of a ``KeyError`` or a
``size mismatch`` traceback.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, checkpoint_path
from .models import build_model

# What build_model cannot default: a checkpoint's config must hold these.
MODEL_KEYS = ("data_shape", "latent")
# What --resume needs beyond the weights.
RESUME_KEYS = ("optimizer", "rng", "history")


def load_weights(model: torch.nn.Module, weights, path) -> None:
    """``model.load_state_dict(weights)``, or a CheckpointError naming ``path``."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        detail = [line.strip() for line in str(e).splitlines() if line.strip()]
        first = detail[1] if len(detail) > 1 else (detail[0] if detail else type(e).__name__)
        raise CheckpointError(f"{path}: the weights do not match the model its config "
                              f"describes ({first[:300]})") from None


def restore_model(state: dict, run) -> torch.nn.Module:
    """The model of a loaded checkpoint, weights in place (CPU, train mode)."""
    path = checkpoint_path(run)
    config = state["config"]
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its config is a {type(config).__name__}, not a dict")
    for key in MODEL_KEYS:
        if key not in config:
            raise CheckpointError(f"{path}: its config lacks '{key}', needed to build the model")
    try:
        model = build_model(config)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: its config does not describe a model: {e}") from None
    load_weights(model, state["model"], path)
    return model

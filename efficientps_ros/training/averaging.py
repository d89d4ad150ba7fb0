"""The mean of the weights of several checkpoints of one run.

Late in a run SGD wanders around a minimum; the mean of the points it passed
through usually lies nearer its floor than any one of them (stochastic
weight averaging). Batch-norm statistics are averaged like the weights; step
counters are taken from the last checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from ..model.checkpoint import CheckpointError, load_checkpoint, state_dict_mismatch
from ..model.config import EfficientPSConfig, config_from_dict
from .state import read_model_weights


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], EfficientPSConfig]:
    """The model weights and config of an inference checkpoint or of a training checkpoint (.json, .safetensors)."""
    path = Path(path)
    if path.suffix not in ("", ".json", ".safetensors") and not path.is_dir():
        # A training checkpoint's files are found by swapping the suffix: the refusal
        # would name text.json for text.png, a file the user never gave.
        what = "not a checkpoint" if path.exists() else "not found, and not a checkpoint's name either"
        raise CheckpointError(f"{path}: {what}; allowed: a .safetensors file, a training checkpoint's "
                              f".json, its name without a suffix, or a run directory")
    if path.suffix == ".safetensors" and not path.with_suffix(".json").is_file():
        return load_checkpoint(path)
    weights, meta = read_model_weights(path)
    try:
        config = config_from_dict(meta["config"], where=f"{path} config")
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: no valid model config ({exc})") from None
    return weights, config


def average_weights(paths: Sequence[str | Path]) -> tuple[dict[str, torch.Tensor], EfficientPSConfig]:
    """The element-wise mean of the checkpoints' floating-point tensors (fp32), with the first one's config.

    Every checkpoint must have the same config and the same tensors; integer
    tensors (batch-norm step counts) come from the last one.
    """
    if not paths:
        raise ValueError("averaging needs at least one checkpoint")
    first, config = read_weights(paths[0])
    problems = state_dict_mismatch(first, first)  # NaN or Inf in the first one
    if problems:
        raise CheckpointError(f"{paths[0]}: {problems}")
    total = {k: v.double() if v.is_floating_point() else v for k, v in first.items()}
    for path in paths[1:]:
        weights, own = read_weights(path)
        if own.to_dict() != config.to_dict():
            raise CheckpointError(
                f"{path}: its config differs from that of {paths[0]}; only one model's weights can be averaged"
            )
        problems = state_dict_mismatch(first, weights)
        if problems:
            raise CheckpointError(f"{path}, against {paths[0]}: {problems}")
        for key, value in weights.items():
            total[key] = total[key] + value.double() if value.is_floating_point() else value
    mean = {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}
    return mean, config

"""Checkpoints: safetensors weights with the model config in the file's metadata.

A checkpoint never executes code when loaded: safetensors holds tensors and
strings only. Every refusal names the file and what was wrong with it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .config import EfficientPSConfig, config_from_dict, parse_document

FORMAT = "efficientps_ros/1"
# The precisions a checkpoint may store floating-point tensors in.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# How many names a mismatch message lists before it summarises.
_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


def save_checkpoint(
    model: nn.Module, config: EfficientPSConfig, path: str | Path, dtype: torch.dtype | None = None
) -> Path:
    """Write the model's state dict and its config to one safetensors file.

    `dtype` stores floating-point tensors in that type (fp16 halves the file);
    loading casts them back to the model's own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share storage or are not contiguous.
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().clone()
        for k, v in model.state_dict().items()
    }
    metadata = {"format": FORMAT, "config": json.dumps(config.to_dict())}
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_config(path: str | Path) -> EfficientPSConfig:
    """The config stored in a checkpoint, without reading its tensors."""
    path = existing_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(
            f"{path}: not an efficientps_ros checkpoint (metadata format {metadata.get('format')!r}); "
            "convert the authors' checkpoints with `efficientps convert-official`"
        )
    where = f"{path} config"
    try:
        return config_from_dict(parse_document(metadata["config"], where, "json"), where=where)
    except ValueError as exc:
        raise CheckpointError(f"{path}: stored config is invalid ({exc})") from None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], EfficientPSConfig]:
    """The state dict and config of a checkpoint written by `save_checkpoint`."""
    config = read_config(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: tensors could not be read ({exc})") from None
    return state, config


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy `state` into `model`, refusing any missing, unexpected, misshapen,
    mistyped or non-finite tensor by name."""
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"{source}: does not fit the model: {problems}")
    model.load_state_dict(state, strict=True)


def state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """A readable list of differences between two state dicts, or '' if they fit.

    Besides names and shapes, dtypes and values are checked: a tensor of the
    wrong kind, or one holding NaN or Inf, would load and run silently and
    make every output meaningless.
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    common = [k for k in expected if k in given]
    reshaped = [
        f"{k} {tuple(given[k].shape)} != {tuple(expected[k].shape)}"
        for k in common
        if given[k].shape != expected[k].shape
    ]
    retyped = [problem for k in common if (problem := _dtype_problem(k, expected[k], given[k]))]
    # Values are read only once the layout fits: a memory-mapped file's data
    # is not touched for a file that is refused anyway.
    layout_fits = not (missing or unexpected or reshaped or retyped)
    non_finite = [problem for k in common if (problem := _non_finite(k, given[k]))] if layout_fits else []
    parts = []
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", reshaped),
        ("wrong dtype", retyped),
        ("non-finite", non_finite),
    ):
        if names:
            parts.append(f"{len(names)} {label}: {_listing(names)}")
    return "; ".join(parts)


def _dtype_problem(key: str, expected: torch.Tensor, given: torch.Tensor) -> str:
    """Floats may be stored in any of the precisions the model runs in; counters keep their type."""
    if expected.is_floating_point():
        if given.dtype in FLOAT_DTYPES:
            return ""
        allowed = ", ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES)
    elif given.dtype == expected.dtype:
        return ""
    else:
        allowed = str(expected.dtype).removeprefix("torch.")
    return f"{key} {str(given.dtype).removeprefix('torch.')} (allowed: {allowed})"


def _non_finite(key: str, tensor: torch.Tensor) -> str:
    # A float64 sum of finite fp32 values cannot overflow, so it is finite
    # exactly when every value is; it costs half of isfinite().all().
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum(dtype=torch.float64))):
        return ""
    nans = int(torch.isnan(tensor).sum())
    return f"{key} ({nans} NaN, {int((~torch.isfinite(tensor)).sum()) - nans} Inf)"


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown if len(names) <= _MAX_LISTED else f"{shown}, ... ({len(names) - _MAX_LISTED} more)"


def existing_file(path: str | Path) -> Path:
    """`path` as a Path; CheckpointError when it is missing or no regular file (a directory, a FIFO, a device)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: not a regular file; a checkpoint is a file")
    raise CheckpointError(f"{path}: checkpoint file not found")

"""Import the authors' trained EfficientPS checkpoints (mmcv 0.5 format).

Their file is a pickle: `{'meta': {...}, 'state_dict': OrderedDict, 'optimizer': ...}`.
It is read with `torch.load(weights_only=True)`, so it cannot execute code;
the numpy scalar types their `meta` may hold are allowed by name, nothing
else. Every tensor is renamed to this project's module names and checked
against `b5_cityscapes`.
"""
from __future__ import annotations

import pickle
import re
from dataclasses import replace
from pathlib import Path

import torch

from .checkpoint import CheckpointError, save_checkpoint, state_dict_mismatch
from .config import EfficientPSConfig, b5_cityscapes

# Their top-level module -> ours. Inside each module the names are the same.
PREFIXES: tuple[tuple[str, str], ...] = (
    ("backbone.", "backbone."),
    ("neck.", "fpn."),
    ("semantic_head.", "semantic_head."),
    ("rpn_head.", "instance_head.rpn_head."),
    ("bbox_head.", "instance_head.bbox_head."),
    ("mask_head.", "instance_head.mask_head."),
)



def _allowed_globals() -> list:
    """Numbers in an mmcv `meta` may be numpy scalars: the only globals allowed
    beyond weights_only's own."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = [type(np.dtype(name)) for name in ("int32", "int64", "float32", "float64")]
    # Checkpoints pickled under numpy 1 name the scalar by its old module.
    return [(multiarray.scalar, "numpy.core.multiarray.scalar"), multiarray.scalar, np.dtype, *dtypes]


DATASETS = ("cityscapes", "kitti")
# inplace_abn before 1.1 had no batch counter; ours is rebuilt as zero.
_OPTIONAL_SUFFIX = ".num_batches_tracked"


def official_config(dataset: str = "cityscapes") -> EfficientPSConfig:
    """Both published checkpoints have the Cityscapes class table and b5 architecture."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r} is not one of {', '.join(DATASETS)}")
    return replace(b5_cityscapes(), name=f"b5_{dataset}")


def our_key(key: str) -> str:
    """Our name for one of their state-dict keys."""
    key = re.sub(r"^module\.", "", key)
    for theirs, ours in PREFIXES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    raise CheckpointError(f"tensor {key!r} belongs to no module of EfficientPS")


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an mmcv checkpoint, loaded without executing code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"it holds the type {refused.group(1)}" if refused else _first_line(exc)
        raise CheckpointError(
            f"{path}: refused to load: {what}; only tensors, plain containers and numpy scalars are allowed"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors inside")
    return state


def convert_state_dict(theirs: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename their tensors to ours; refuse anything missing, extra or misshapen."""
    ours = {our_key(k): v for k, v in theirs.items()}
    for key, value in expected.items():
        if key.endswith(_OPTIONAL_SUFFIX) and key not in ours:
            ours[key] = torch.zeros_like(value)
    problems = state_dict_mismatch(expected, ours)
    if problems:
        raise CheckpointError(f"the authors' checkpoint does not match b5_cityscapes: {problems}")
    return ours


def convert_official(src: str | Path, dst: str | Path, dataset: str = "cityscapes") -> Path:
    """Read their checkpoint, write ours (safetensors + config + class table)."""
    from .efficientps import EfficientPS

    config = official_config(dataset)
    model = EfficientPS(config)
    state = convert_state_dict(read_official(src), model.state_dict())
    model.load_state_dict(state, strict=True)
    return save_checkpoint(model, config, dst)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

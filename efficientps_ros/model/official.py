"""Import the authors' trained EfficientPS checkpoints (mmcv 0.5 format).

Their file is a pickle: `{'meta': {...}, 'state_dict': OrderedDict, 'optimizer': ...}`.
It is read with `torch.load(weights_only=True)`, so it cannot execute code;
the numpy scalar types their `meta` may hold are allowed by name, nothing
else. A zip-format file's directory is checked before anything in it is
unpacked. Every tensor is renamed to this project's module names and checked
against `b5_cityscapes` by name and shape before its data is read.
"""
from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError

from .checkpoint import CheckpointError, existing_file, save_checkpoint, state_dict_mismatch
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
# Their Cityscapes file, optimizer state included, is well under 1 GB.
MAX_CHECKPOINT_BYTES = 4 * 2**30
# The pickle holds only names, shapes and the mmcv meta.
MAX_PICKLE_BYTES = 64 * 2**20
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
    """The state dict of an mmcv checkpoint, loaded without executing code.

    A zip-format file (torch >= 1.6) is checked from its table of contents
    first, then memory-mapped: tensor names and shapes are known before any
    tensor data is read, and only the tensors used are ever read.
    """
    path = existing_file(path)
    zipped = zipfile.is_zipfile(path)
    if zipped:
        check_archive(path)
    try:
        # The outcome is reported below; torch's warnings about the pickle protocol would only add noise.
        with torch.serialization.safe_globals(_allowed_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load: {pickle_refusal(exc)}; only tensors, plain containers and numpy scalars are allowed"
        ) from None
    # torch.load hands a .safetensors file to safetensors, which raises its own error.
    except (RuntimeError, OSError, EOFError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - on malformed pickle data the weights-only unpickler raises anything
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({malformed(exc)})") from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors inside")
    return state


def check_archive(path: Path) -> None:
    """Refuse a zip-format .pth whose table of contents promises more than it should hold.

    torch.save stores every entry uncompressed, so a compressed one can only be
    crafted, and would be unpacked in full by torch.load: a 1 MB file can
    declare gigabytes of zeros. Sizes are read from the zip's directory; no
    entry is unpacked here.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path}: entry {entry.filename!r} is compressed ({entry.file_size:,} bytes declared in "
                f"{entry.compress_size:,}); torch.save stores entries uncompressed, so the file was altered"
            )
        if entry.filename.endswith(".pkl") and entry.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"{path}: entry {entry.filename!r} declares {entry.file_size:,} bytes of names and metadata; "
                f"allowed: at most {MAX_PICKLE_BYTES:,}"
            )
    declared = sum(entry.file_size for entry in entries)
    if declared > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"{path}: its entries declare {declared:,} bytes; allowed: at most {MAX_CHECKPOINT_BYTES:,}"
        )


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


def malformed(exc: BaseException) -> str:
    """Words for an error the weights-only unpickler raised on data that is no valid pickle."""
    return f"malformed pickle data: {type(exc).__name__}: {_first_line(exc)}"


def pickle_refusal(exc: pickle.UnpicklingError) -> str:
    """What the weights-only unpickler refused, without torch's advice to load the file unsafely."""
    text = str(exc)
    refused = re.search(r"GLOBAL (\S+)", text)
    if refused:
        return f"it holds the type {refused.group(1)}"
    operand = re.search(r"Unsupported operand (\d+)", text)
    if operand:
        # Protocol 4 and later name types through STACK_GLOBAL, which torch reports by number only.
        code = int(operand.group(1))
        opcode = pickletools.code2op.get(chr(code))
        if opcode is None:
            return f"the weights-only unpickler met byte {code}, which is no pickle opcode"
        return f"the weights-only unpickler does not allow the pickle opcode {opcode.name}"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

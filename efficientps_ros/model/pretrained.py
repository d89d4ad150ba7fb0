"""ImageNet weights for the backbone, from a timm EfficientNet checkpoint file.

The backbone keeps timm's module names, so a timm state dict fits it name
for name once the squeeze-excitation and classifier tensors, which the
authors' backbone does not have, are left out. Norm scales differ: timm's is
`weight`, ours `|weight| + eps`, so each weight becomes `weight - eps`; a
scale below `eps` cannot be represented and becomes the nearest one, `eps`.
"""
from __future__ import annotations

import logging
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .checkpoint import CheckpointError, state_dict_mismatch
from .norm import NormAct
from .official import check_archive, malformed, pickle_refusal

log = logging.getLogger(__name__)

# timm tensors the authors' backbone has no place for.
_LEFT_OUT = re.compile(r"(^|\.)se\.|^classifier\.")
# Containers under which training scripts store a state dict.
_CONTAINERS = ("state_dict", "model", "state_dict_ema")


def read_timm_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a timm checkpoint: safetensors, or a torch file read without executing code.

    A zip-format torch file's directory is checked first (`official.check_archive`):
    torch.load would unpack a crafted, compressed entry in full.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = _load_torch_file(path)
    except CheckpointError:
        raise  # check_archive's refusal names the file already
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: not a readable timm checkpoint: refused to load: {pickle_refusal(exc)}; only tensors and "
            "plain containers are allowed"
        ) from None
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable timm checkpoint ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - on malformed pickle data the weights-only unpickler raises anything
        raise CheckpointError(f"{path}: not a readable timm checkpoint ({malformed(exc)})") from None
    for key in _CONTAINERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_torch_file(path: Path):
    if zipfile.is_zipfile(path):
        check_archive(path)
    # The outcome is reported by the caller; torch's warnings about the pickle protocol would only add noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def backbone_state(timm_state: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """`timm_state` as the backbone's state dict: SE and classifier left out, norm weights converted."""
    kept = {k: v for k, v in timm_state.items() if not _LEFT_OUT.search(k)}
    norms = {f"{name}.weight": module.eps for name, module in backbone.named_modules() if isinstance(module, NormAct)}
    converted = {}
    for key, tensor in kept.items():
        if key in norms and tensor.is_floating_point():
            tensor = (tensor - norms[key]).clamp_min(0.0)
        converted[key] = tensor
    return converted


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> int:
    """Load a timm EfficientNet checkpoint into `backbone`, refusing any tensor that does not fit by name.

    Returns the number of norm channels whose scale was below `eps` and was clamped.
    """
    timm_state = read_timm_state(path)
    state = backbone_state(timm_state, backbone)
    problems = state_dict_mismatch(backbone.state_dict(), state)
    if problems:
        raise CheckpointError(f"{path}: does not fit the backbone: {problems}")
    clamped = _count_clamped(timm_state, backbone)
    backbone.load_state_dict(state, strict=True)
    log.info("backbone weights from %s (%d tensors; %d norm scales below eps clamped)", path, len(state), clamped)
    return clamped


def _count_clamped(timm_state: dict[str, torch.Tensor], backbone: nn.Module) -> int:
    count = 0
    for name, module in backbone.named_modules():
        weight = timm_state.get(f"{name}.weight")
        if isinstance(module, NormAct) and weight is not None:
            count += int((weight < module.eps).sum())
    return count

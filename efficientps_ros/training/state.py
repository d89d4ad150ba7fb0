"""Training checkpoints: everything a run needs to continue exactly, in files that run no code.

One checkpoint is two files with the same stem: `.safetensors` with every
tensor (weights, optimiser buffers, random generator states of every rank)
and `.json` with everything else (iteration, sampler position, optimiser
hyper-parameters, scheduler and grad-scaler state, history, recipe,
config). The JSON is written last, so a checkpoint whose JSON exists is whole.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..distributed import DistContext, gather_tensor
from ..model.checkpoint import CheckpointError, load_weights

log = logging.getLogger(__name__)

FORMAT = "efficientps_ros/train-state/1"
# The model's tensors are stored under this prefix, beside the optimiser's and the random states.
MODEL_PREFIX = "model/"


@dataclass
class TrainingState:
    """What a checkpoint holds besides the tensors of the model and optimiser."""

    iteration: int
    rng: list[dict[str, torch.Tensor]]  # per rank: "torch", and "cuda" on a GPU
    info: dict[str, Any] = field(default_factory=dict)  # sampler, history, best, recipe, config, ...


def checkpoint_stem(directory: Path, iteration: int) -> Path:
    return directory / f"iter_{iteration:07d}"


def save_training_state(
    stem: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: TrainingState,
) -> Path:
    """Write `stem`.safetensors and `stem`.json; returns the JSON's path."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for index, entries in optimizer_state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = value
            else:
                plain_state.setdefault(str(index), {})[name] = value
    for rank, states in enumerate(state.rng):
        for name, value in states.items():
            tensors[f"rng/{rank}/{name}"] = value
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "iteration": state.iteration,
        "optimizer": {"param_groups": optimizer_state["param_groups"], "state": plain_state},
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "ranks": len(state.rng),
        **state.info,
    }
    _atomic(stem.with_suffix(".safetensors"), lambda tmp: save_file(tensors, str(tmp)))
    _atomic(stem.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    return stem.with_suffix(".json")


def prune_checkpoints(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints in `directory`; returns the stems deleted.

    The JSON goes first: a checkpoint without it is never taken for a whole one,
    so an interruption halfway leaves only a stray tensor file.
    """
    stems = sorted(path.with_suffix("") for path in directory.glob("iter_*.json"))
    doomed = stems[:-keep] if keep > 0 else []
    for stem in doomed:
        for suffix in (".json", ".safetensors"):
            stem.with_suffix(suffix).unlink(missing_ok=True)
    return doomed


def resolve_checkpoint(path: str | Path) -> Path:
    """The stem of a checkpoint given as its .json, its .safetensors, or a directory (the latest in it)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("iter_*.json")) or sorted(path.glob("checkpoints/iter_*.json"))
        if not found:
            raise CheckpointError(f"{path}: no training checkpoint (iter_*.json) in this directory")
        path = found[-1]
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    for suffix in (".json", ".safetensors"):
        if not stem.with_suffix(suffix).is_file():
            raise CheckpointError(f"{stem.with_suffix(suffix)}: training checkpoint file not found")
    return stem


def read_training_info(path: str | Path) -> dict[str, Any]:
    """The JSON half of a checkpoint, checked for its format."""
    stem = resolve_checkpoint(path)
    try:
        meta = json.loads(stem.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{stem}.json: not a readable training checkpoint ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{stem}.json: not an efficientps_ros training checkpoint (format {FORMAT!r} expected)")
    return meta


def read_model_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's model weights, without reading its optimiser buffers, and its JSON half."""
    stem = resolve_checkpoint(path)
    meta = read_training_info(stem)
    return _model_part(_read_tensors(stem, lambda key: key.startswith(MODEL_PREFIX))), meta


def _read_tensors(stem: Path, wanted) -> dict[str, torch.Tensor]:
    """The tensors of `stem`.safetensors whose keys `wanted` accepts."""
    try:
        with safe_open(str(stem.with_suffix(".safetensors")), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys() if wanted(key)}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{stem}.safetensors: tensors could not be read ({exc})") from None


def _model_part(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix(MODEL_PREFIX): v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}


def load_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> TrainingState:
    """Restore the model, optimiser, scheduler and scaler from a checkpoint; returns the rest."""
    stem = resolve_checkpoint(path)
    meta = read_training_info(stem)
    tensors = _read_tensors(stem, lambda _key: True)
    load_weights(model, _model_part(tensors), f"{stem}.safetensors")
    optimizer.load_state_dict(_optimizer_state(meta["optimizer"], tensors))
    scheduler.load_state_dict(meta["scheduler"])
    if meta["scaler"]:
        scaler.load_state_dict(meta["scaler"])
    rng = [
        {name: tensors[f"rng/{rank}/{name}"] for name in ("torch", "cuda") if f"rng/{rank}/{name}" in tensors}
        for rank in range(int(meta["ranks"]))
    ]
    skip = {"format", "iteration", "optimizer", "scheduler", "scaler", "ranks"}
    return TrainingState(int(meta["iteration"]), rng, {k: v for k, v in meta.items() if k not in skip})


def capture_rng(context: DistContext) -> list[dict[str, torch.Tensor]]:
    """The random generator states of every rank, in rank order (a collective call)."""
    local = {"torch": torch.get_rng_state()}
    if context.device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(context.device)
    gathered = {name: gather_tensor(state, context) for name, state in local.items()}
    return [{name: gathered[name][rank] for name in local} for rank in range(context.world_size)]


def restore_rng(states: list[dict[str, torch.Tensor]], context: DistContext) -> None:
    """Give this rank back its generator states; a run with another process count starts new streams."""
    if len(states) != context.world_size:
        log.warning(
            "the checkpoint comes from %d processes, this run has %d: random streams start anew, "
            "so the run continues, but not bit for bit", len(states), context.world_size,
        )
        return
    mine = states[context.rank]
    torch.set_rng_state(mine["torch"])
    if "cuda" in mine and context.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], context.device)


def _optimizer_state(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in plain["state"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": plain["param_groups"]}


def _atomic(path: Path, write) -> None:
    """Write through a temporary file, so that a crash never leaves half a checkpoint under its name."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)

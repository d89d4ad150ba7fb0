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
import math
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
from ..model.config import MAX_CONFIG_CHARS, parse_document, read_text_file
from .recipe import MAX_STEPS, MAX_VALIDATIONS

log = logging.getLogger(__name__)

FORMAT = "efficientps_ros/train-state/1"
# The model's tensors are stored under this prefix, beside the optimiser's and the random states.
MODEL_PREFIX = "model/"
# The JSON half is read whole before it is parsed. A run's own is kilobytes of optimiser settings,
# recipe and config, plus under 300 characters a validation; json.dumps writes ASCII, a byte a character.
MAX_INFO_CHARS = MAX_CONFIG_CHARS + 400 * MAX_VALIDATIONS
# The generator states a rank may have: the CPU's, and the GPU's on a GPU.
RNG_NAMES = ("torch", "cuda")


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
    _atomic(stem.with_suffix(".json"), lambda tmp: tmp.write_text(dump_json(meta)))
    return stem.with_suffix(".json")


def dump_json(value: Any) -> str:
    """`value` as strict JSON: an undefined score (NaN) or an infinity becomes null, which every reader takes."""
    return json.dumps(_finite_or_none(value), indent=1, allow_nan=False)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


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
    """The JSON half of a checkpoint, checked for its format and the types and ranges of its fields."""
    stem = resolve_checkpoint(path)
    where = f"{stem}.json"
    try:
        text = read_text_file(stem.with_suffix(".json"), MAX_INFO_CHARS, where)
        meta = parse_document(text, where, "json", max_chars=MAX_INFO_CHARS)
    except ValueError as exc:  # the message names the file
        raise CheckpointError(str(exc)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not an efficientps_ros training checkpoint (format {FORMAT!r} expected)")
    _check_info(meta, where)
    return meta


def _check_info(meta: dict[str, Any], where: str) -> None:
    """Refuse fields of the wrong type or range by name, before anything is built from them."""
    _check_count(meta, "iteration", 0, MAX_STEPS, where)
    _check_count(meta, "ranks", 1, None, where)
    for key in ("optimizer", "scheduler", "scaler"):
        _check_type(meta, key, dict, "a mapping", where)
    optimizer = meta["optimizer"]
    groups, plain = optimizer.get("param_groups"), optimizer.get("state")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{where}: optimizer.param_groups: expected a list of mappings, got {_shown(groups)}")
    if not isinstance(plain, dict) or not all(isinstance(v, dict) for v in plain.values()):
        raise CheckpointError(f"{where}: optimizer.state: expected a mapping of mappings, got {_shown(plain)}")
    # What a run adds (train.py): optional here, typed where present.
    for key in ("recipe", "config", "sampler"):
        if key in meta:
            _check_type(meta, key, dict, "a mapping", where)
    if "history" in meta and not (isinstance(meta["history"], list) and all(_is_scores(h) for h in meta["history"])):
        raise CheckpointError(f"{where}: history: expected a list of validation scores, got {_shown(meta['history'])}")
    if meta.get("best") is not None and not _is_scores(meta["best"]):
        raise CheckpointError(f"{where}: best: expected validation scores or null, got {_shown(meta['best'])}")
    for key in ("skipped_steps", "skipped_in_row"):
        if key in meta:
            _check_count(meta, key, 0, MAX_STEPS, where)
    if "world_size" in meta:
        _check_count(meta, "world_size", 1, None, where)


def _check_count(meta: dict[str, Any], key: str, low: int, high: int | None, where: str) -> None:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"an integer from {low:,} to {high:,}" if high is not None else f"an integer of at least {low}"
        shown = "nothing" if key not in meta else _shown(value)
        raise CheckpointError(f"{where}: {key}: expected {allowed}, got {shown}")


def _check_type(meta: dict[str, Any], key: str, kind: type, name: str, where: str) -> None:
    if not isinstance(meta.get(key), kind):
        shown = "nothing" if key not in meta else _shown(meta[key])
        raise CheckpointError(f"{where}: {key}: expected {name}, got {shown}")


def _is_scores(value: Any) -> bool:
    """A validation row: named numbers, null where a score is undefined."""
    return isinstance(value, dict) and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value.values()
    )


def _shown(value: Any) -> str:
    """A value for a message: containers by type and size, since a crafted one may be huge."""
    if isinstance(value, (dict, list)):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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


def _tensor_names(stem: Path) -> list[str]:
    """The keys of `stem`.safetensors, from its header alone."""
    try:
        with safe_open(str(stem.with_suffix(".safetensors")), framework="pt") as handle:
            return list(handle.keys())
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
    # The JSON's rank count must be that of the generator states stored, checked before either is used.
    _check_rng_names(_tensor_names(stem), meta["ranks"], f"{stem}.safetensors")
    tensors = _read_tensors(stem, lambda _key: True)
    load_weights(model, _model_part(tensors), f"{stem}.safetensors")
    _load_part(stem, "optimizer", lambda: optimizer.load_state_dict(_optimizer_state(meta["optimizer"], tensors)))
    schedule = _scheduler_state(meta["scheduler"], scheduler, stem)
    _load_part(stem, "scheduler", lambda: scheduler.load_state_dict(schedule))
    if meta["scaler"]:
        _check_scaler(meta["scaler"], stem)
        _load_part(stem, "scaler", lambda: scaler.load_state_dict(meta["scaler"]))
    rng = [
        {name: tensors[f"rng/{rank}/{name}"] for name in RNG_NAMES if f"rng/{rank}/{name}" in tensors}
        for rank in range(meta["ranks"])
    ]
    _check_rng_states(rng, f"{stem}.safetensors")
    skip = {"format", "iteration", "optimizer", "scheduler", "scaler", "ranks"}
    return TrainingState(meta["iteration"], rng, {k: v for k, v in meta.items() if k not in skip})


def _check_rng_names(names: list[str], ranks: int, where: str) -> None:
    """Every rank 0..ranks-1 has its CPU generator state under rng/<rank>/, and nothing else is there."""
    present: dict[int, set[str]] = {}
    for key in names:
        if not key.startswith("rng/"):
            continue
        rank, _, name = key.removeprefix("rng/").partition("/")
        if not rank.isdecimal() or name not in RNG_NAMES:
            raise CheckpointError(f"{where}: {key!r} is no generator state (rng/<rank>/torch or rng/<rank>/cuda)")
        present.setdefault(int(rank), set()).add(name)
    # Whole ranks 0..ranks-1 without building a range of the claimed size, which may be crafted.
    whole = len(present) == ranks and min(present) == 0 and max(present) == ranks - 1
    if not whole or any("torch" not in found for found in present.values()):
        raise CheckpointError(
            f"{where}: the JSON says {ranks} processes, but the generator states stored are those of "
            f"{len(present)} (ranks {sorted(present)[:8]}{'...' if len(present) > 8 else ''})"
        )


def _check_rng_states(rng: list[dict[str, torch.Tensor]], where: str) -> None:
    """Generator states are bytes; the CPU's has the size this torch's has."""
    size = torch.get_rng_state().numel()
    for rank, states in enumerate(rng):
        for name, state in states.items():
            if state.dtype != torch.uint8 or state.dim() != 1 or (name == "torch" and state.numel() != size):
                raise CheckpointError(
                    f"{where}: rng/{rank}/{name}: expected a generator state (uint8, {size} bytes for torch), "
                    f"got {state.dtype} of shape {tuple(state.shape)}"
                )


def _scheduler_state(
    state: dict[str, Any], scheduler: torch.optim.lr_scheduler.LRScheduler, stem: Path
) -> dict[str, Any]:
    """The keys of `state` this scheduler has, each checked against the kind of value it holds.

    torch copies every key of a scheduler state onto the scheduler itself, so
    a crafted one could replace any attribute; a key that another torch
    version wrote and this one lacks is left out.
    """
    ours = scheduler.state_dict()
    known = {k: v for k, v in state.items() if k in ours}
    for key, value in known.items():
        if _kind(value) != _kind(ours[key]):
            raise CheckpointError(f"{stem}.json: scheduler.{key}: expected {_kind(ours[key])}, got {_shown(value)}")
    if any(fn is not None for fn in known.get("lr_lambdas", [])):
        raise CheckpointError(f"{stem}.json: scheduler.lr_lambdas: a run's schedule is a function, stored as null")
    return known


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "true, false or null"
    if isinstance(value, (int, float)):
        return "a number"
    return "a list" if isinstance(value, list) else type(value).__name__


def _check_scaler(state: dict[str, Any], stem: Path) -> None:
    for key, value in state.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise CheckpointError(
                f"{stem}.json: scaler.{key}: expected a finite number of at least 0, got {_shown(value)}"
            )


def _load_part(stem: Path, part: str, load) -> None:
    """Run one of torch's load_state_dict calls, whose errors on a state of another shape name no file."""
    try:
        load()
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{stem}: the {part} state does not fit this run ({type(exc).__name__}: {exc})") from None


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
        try:
            torch.cuda.set_rng_state(mine["cuda"], context.device)
        except RuntimeError as exc:
            raise CheckpointError(
                f"the checkpoint's GPU generator state of rank {context.rank} does not fit: {exc}"
            ) from None


def _optimizer_state(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The optimiser's state dict from its tensors and its plain values; a key of another form raises ValueError."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)  # ValueError for "optimizer/x" as well
            state.setdefault(int(index), {})[name] = value
    for index, entries in plain["state"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": plain["param_groups"]}


def _atomic(path: Path, write) -> None:
    """Write through a temporary file, so that a crash never leaves half a checkpoint under its name."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)

"""Distributed training plumbing: the process group torchrun describes, DDP, replica checks.

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK in
each one; without them a run is a single process and nothing here starts a
process group. NCCL is the backend on CUDA, gloo on CPU.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .model.sync_norm import convert_sync_norms
from .predictor import resolve_device

log = logging.getLogger(__name__)

# The mask head runs only on positive proposals, so a process whose batch has
# no things skips it; synchronised norms there would wait for it forever. Its
# statistics come from every sampled RoI of the process, plenty without the others.
UNSYNCHRONISED = ("instance_head.mask_head",)

# A validation pass on rank 0 holds the others at a barrier; it may take long.
_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str = "auto") -> DistContext:
    """The context of this process, with the process group started under torchrun.

    On CUDA each process takes the GPU of its LOCAL_RANK; `device` 'cuda:N'
    is refused in a multi-process run, where that choice is torchrun's.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    resolved = resolve_device(device)
    if world_size <= 1:
        return DistContext(device=resolved)
    if resolved.type == "cuda":
        if resolved.index is not None and device != "auto":
            raise ValueError(f"device {device!r}: under torchrun each process uses the GPU of its LOCAL_RANK; pass cuda")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank}: only {torch.cuda.device_count()} CUDA device(s) here")
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=_TIMEOUT, device_id=resolved if backend == "nccl" else None)
    log.info("rank %d of %d on %s (%s)", rank, world_size, resolved, backend)
    return DistContext(rank, world_size, local_rank, resolved)


def shutdown(context: DistContext) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    if context.distributed:
        dist.barrier()


def wrap_model(model: nn.Module, context: DistContext) -> nn.Module:
    """`model` with synchronised norms inside DistributedDataParallel, or as it is alone."""
    if not context.distributed:
        return model
    convert_sync_norms(model, exclude=UNSYNCHRONISED)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    # A batch without things runs no mask head, which then has no gradient.
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The network itself, without its DDP wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def mean_over_ranks(values: dict[str, float], context: DistContext) -> dict[str, float]:
    """Each value averaged over the processes, so that rank 0 logs the whole batch's losses."""
    if not context.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_collective_device(context))
    dist.all_reduce(tensor)
    return {k: float(v) / context.world_size for k, v in zip(keys, tensor.tolist())}


def all_ranks(flag: bool, context: DistContext | None) -> bool:
    """Whether `flag` holds on every process; alone, `flag` itself."""
    if context is None or not context.distributed:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=_collective_device(context))
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def gather_tensor(tensor: torch.Tensor, context: DistContext) -> list[torch.Tensor]:
    """`tensor` of every rank, in rank order (same shape and dtype on all of them)."""
    if not context.distributed:
        return [tensor]
    local = tensor.to(_collective_device(context))
    parts = [torch.empty_like(local) for _ in range(context.world_size)]
    dist.all_gather(parts, local)
    return [p.cpu() for p in parts]


@torch.no_grad()
def broadcast_buffers(model: nn.Module, context: DistContext) -> None:
    """Give every rank rank 0's buffers, as DDP does before each forward.

    Between steps the norms of unsynchronised modules hold each rank's own
    running statistics; rank 0's are the ones its checkpoints keep.
    """
    if context.distributed:
        for buffer in unwrap(model).buffers():
            dist.broadcast(buffer, src=0)


def replica_mismatches(model: nn.Module, context: DistContext) -> list[str]:
    """Names of the state-dict tensors that are not bit-identical on every rank.

    DDP keeps the replicas equal by construction; a non-empty answer means a
    rank computed something the others did not, and the run cannot be trusted.
    """
    if not context.distributed:
        return []
    state = unwrap(model).state_dict()
    by_dtype: dict[torch.dtype, list[str]] = {}
    for name, tensor in state.items():
        by_dtype.setdefault(tensor.dtype, []).append(name)
    different = []
    for names in by_dtype.values():
        flat = torch.cat([state[n].detach().reshape(-1) for n in names]).to(_collective_device(context))
        # Compare the bytes, so that NaNs and signed zeros count too; a byte
        # that is the same everywhere has the same maximum and minimum.
        high = flat.view(torch.uint8).to(torch.int32)
        low = high.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        differs = high != low
        start = 0
        for name in names:
            size = state[name].numel() * state[name].element_size()
            if bool(differs[start: start + size].any()):
                different.append(name)
            start += size
    return different


def _collective_device(context: DistContext) -> torch.device:
    # NCCL moves only CUDA tensors; gloo only CPU ones.
    return context.device if context.device.type == "cuda" else torch.device("cpu")

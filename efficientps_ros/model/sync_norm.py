"""`NormAct` with batch statistics shared by every process of a distributed run.

With one image per GPU, as the authors trained, per-process statistics come
from a single image and are too noisy to train on; the paper synchronises
them with `InPlaceABNSync`. `SyncNormAct` computes the same function as
`NormAct` (scale `|weight| + eps`) over the batch of all processes together,
with the same state-dict entries, so checkpoints move freely between the two.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .norm import NormAct

try:  # CUDA kernels that also save the activations' memory
    from inplace_abn.functions import inplace_abn_sync as _inplace_abn_sync
except ImportError:  # the package is optional
    _inplace_abn_sync = None


class SyncNormAct(NormAct):
    """`NormAct` whose training statistics are reduced over `process_group`.

    Outside training, or when no process group is running, it is `NormAct`.
    """

    def __init__(self, *args, process_group: dist.ProcessGroup | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    @classmethod
    def from_norm(cls, norm: NormAct, process_group: dist.ProcessGroup | None = None) -> "SyncNormAct":
        """A synchronised norm holding `norm`'s own parameters and buffers."""
        sync = cls(norm.num_features, norm.eps, norm.momentum, norm.activation, norm.slope, process_group=process_group)
        sync.weight, sync.bias = norm.weight, norm.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(sync, name, getattr(norm, name))
        return sync

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self.num_batches_tracked += 1
        if x.is_cuda and _inplace_abn_sync is not None:
            return _inplace_abn_sync(
                x, self.weight, self.bias, self.running_mean, self.running_var,
                True, self._momentum(), self.eps, self.activation, self.slope, self.process_group,
            )
        mean, var, count = self._global_moments(x)
        self._update_running(mean.detach(), var.detach(), count)
        scale = (self.weight.abs() + self.eps) * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        y = (x.float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(x.dtype)
        if self.activation == "leaky_relu":
            return F.leaky_relu(y, self.slope)
        return y

    def _global_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Mean and biased variance per channel over every process's batch.

        The sums are reduced with `_AllReduceSum`, so each process's input gets
        the gradient of every process's loss, not of its own alone.
        """
        channels = x.shape[1]
        x = x.float()
        local = torch.cat([
            x.sum(dim=(0, 2, 3)),
            (x * x).sum(dim=(0, 2, 3)),
            x.new_full((1,), x.numel() / channels),
        ])
        total = _AllReduceSum.apply(local, self.process_group)
        count = float(total[-1].detach())
        mean = total[:channels] / count
        var = (total[channels: 2 * channels] / count - mean * mean).clamp_min(0.0)
        return mean, var, count

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        # As torch's batch norm: the running variance is the unbiased one.
        momentum = self._momentum()
        unbiased = var * (count / max(count - 1.0, 1.0))
        self.running_mean.mul_(1.0 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
        self.running_var.mul_(1.0 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


def convert_sync_norms(
    model: nn.Module, process_group: dist.ProcessGroup | None = None, exclude: tuple[str, ...] = ()
) -> nn.Module:
    """Replace every `NormAct` of `model` by a `SyncNormAct` sharing its tensors, in place.

    Modules under the names in `exclude` keep their own norms: every process
    must run every synchronised norm at every step, or the reductions pair up wrongly.
    """
    for parent_name, parent in list(model.named_modules()):
        if any(parent_name == e or parent_name.startswith(e + ".") for e in exclude):
            continue
        for name, child in list(parent.named_children()):
            if type(child) is NormAct:
                setattr(parent, name, SyncNormAct.from_norm(child, process_group))
    return model

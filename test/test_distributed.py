"""Distributed training on CPU: two gloo processes started by torchrun, as a GPU run would be.

Run as a script under torchrun, this file is the worker of the synchronised-norm test.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientps_ros.distributed import DistContext, init_distributed, replica_mismatches
from efficientps_ros.model import build_model, load_config
from efficientps_ros.model.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_single_process_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed("cpu")
    assert context == DistContext() and context.is_main and not context.distributed
    assert replica_mismatches(torch.nn.Linear(2, 2), context) == []


def test_a_malformed_world_size_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        init_distributed("cpu")


def test_two_processes_end_with_identical_weights_that_moved_and_resume_exactly(tmp_path):
    torch.manual_seed(0)
    config = load_config("small")
    init = save_checkpoint(build_model(config), config, tmp_path / "init.safetensors")
    out = tmp_path / "ddp.safetensors"
    common = ["-m", "efficientps_ros.train", "--steps", "4", "--batch-size", "1", "--image-size", "64x128",
              "--val-count", "1", "--checkpoint-every", "2", "--device", "cpu", "--no-progress"]
    run = _torchrun(*common, "--init", str(init), "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "weights bit-identical on all 2 ranks after step 4" in run.stderr
    start, _ = load_checkpoint(init)
    end, _ = load_checkpoint(out)
    parameters = [name for name, _ in build_model(config).named_parameters()]
    moved = [name for name in parameters if not torch.equal(start[name], end[name])]
    assert len(moved) > 0.9 * len(parameters)
    run_dir = out.with_name("ddp.run")
    summary = (run_dir / "summary.json").read_text()
    assert '"world_size": 2' in summary and '"images_per_step": 2' in summary
    # One writer: a second rank writing too would have doubled the rows.
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("4,")
    # Both ranks' random streams are in the checkpoint, so two processes resume exactly too.
    resumed = tmp_path / "resumed.safetensors"
    run = _torchrun(*common, "--resume", str(run_dir / "checkpoints" / "iter_0000002.json"), "--out", str(resumed))
    assert run.returncode == 0, run.stderr[-3000:]
    again, _ = load_checkpoint(resumed)
    assert [name for name in end if not torch.equal(end[name], again[name])] == []


def test_synchronised_norms_compute_one_norm_over_all_processes():
    run = _torchrun(str(Path(__file__)))
    assert run.returncode == 0, run.stderr[-3000:]
    # The ranks share one stdout, so their lines may run together.
    assert sorted(re.findall(r"ok rank \d", run.stdout)) == ["ok rank 0", "ok rank 1"]


def _worker() -> None:
    """Each rank holds half of a batch; the synchronised norm must act as one norm over all of it."""
    from efficientps_ros.model.norm import NormAct
    from efficientps_ros.model.sync_norm import SyncNormAct

    torch.set_num_threads(1)
    context = init_distributed("cpu")
    rank, world = context.rank, context.world_size
    torch.manual_seed(0)
    whole = torch.randn(2 * world, 5, 6, 7) * 3 + 1
    weight = torch.randn(5)  # some negative: the scale is |weight| + eps
    plain, sync = NormAct(5, eps=1e-3), SyncNormAct(5, eps=1e-3)
    for norm in (plain, sync):
        norm.weight.data.copy_(weight)
    x_whole = whole.clone().requires_grad_()
    y_whole = plain(x_whole)
    mine = slice(2 * rank, 2 * rank + 2)
    x_mine = whole[mine].clone().requires_grad_()
    y_mine = sync(x_mine)
    torch.testing.assert_close(y_mine, y_whole[mine], rtol=1e-5, atol=1e-5)
    # The whole loss is the sum of the ranks' losses; the reduction carries the other ranks' part.
    probe = torch.randn_like(whole)
    (y_whole * probe).sum().backward()
    (y_mine * probe[mine]).sum().backward()
    torch.testing.assert_close(x_mine.grad, x_whole.grad[mine], rtol=1e-4, atol=1e-5)
    weight_grad = sync.weight.grad.clone()
    torch.distributed.all_reduce(weight_grad)
    torch.testing.assert_close(weight_grad, plain.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sync.running_mean, plain.running_mean)
    torch.testing.assert_close(sync.running_var, plain.running_var)
    assert replica_mismatches(plain, context) == []
    plain.bias.data[3] += rank  # one rank's tensor drifts
    assert replica_mismatches(plain, context) == ["bias"]
    _train_one_step_where_one_rank_has_no_things(context)
    torch.distributed.destroy_process_group()
    print(f"ok rank {rank}", flush=True)


def _train_one_step_where_one_rank_has_no_things(context) -> None:
    """Rank 1 runs no mask head: the step must not wait for it, and the replicas stay equal."""
    from efficientps_ros.data.synthetic import street_scene
    from efficientps_ros.data.targets import collate
    from efficientps_ros.distributed import broadcast_buffers, wrap_model
    from efficientps_ros.model.norm import NormAct
    from efficientps_ros.model.sync_norm import SyncNormAct
    from efficientps_ros.train import make_optimizer, train_step
    from efficientps_ros.training.recipe import Recipe

    config = load_config("small")
    torch.manual_seed(context.rank)  # different initial weights: DDP must hand out rank 0's
    net = wrap_model(build_model(config).train(), context)
    kinds = {type(m) for name, m in net.module.named_modules() if name.startswith("instance_head.mask_head.")}
    assert NormAct in kinds and SyncNormAct not in kinds and isinstance(net.module.backbone.bn1, SyncNormAct)
    scene = street_scene(64, 128, seed=1)
    if context.rank == 1:
        scene.instance[:] = 0
        scene.instance_classes, scene.crowd = [], []
        scene.semantic[scene.semantic >= config.num_stuff] = 0
    optimizer, _ = make_optimizer(net, Recipe(lr=0.01, steps=2, warmup=0))
    for _ in range(2):
        values = train_step(net, optimizer, collate([scene], config), context.device, 10.0, context=context)
    assert (values["loss_mask"] == 0.0) == (context.rank == 1), values
    broadcast_buffers(net, context)
    assert replica_mismatches(net, context) == []
    _skip_a_step_that_one_rank_finds_non_finite(net, optimizer, collate([scene], config), context)


def _skip_a_step_that_one_rank_finds_non_finite(net, optimizer, batch, context) -> None:
    from efficientps_ros.distributed import all_ranks
    from efficientps_ros.train import train_step

    assert all_ranks(True, context) and not all_ranks(context.rank == 0, context)
    before = {k: v.clone() for k, v in net.module.state_dict().items()}
    if context.rank == 1:
        batch.images[:, :, :4] = float("nan")
    values = train_step(net, optimizer, batch, context.device, 10.0, context=context)
    assert values["skipped"] == 1.0, values
    after = net.module.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


if __name__ == "__main__":
    _worker()

"""Training on synthetic street scenes, generated on the fly from seeds.

Every step draws new scenes, so the network never sees one twice; a fixed set
of held-out seeds measures the semantic mIoU as training goes. The optimiser
is the paper's: SGD with momentum 0.9 and weight decay 1e-4, here with a
linear warm-up and a cosine decay, and gradient clipping for the first steps
of a network trained from scratch.

    python -m efficientps_ros.train --preset small --steps 2000 --out weights.safetensors

On a CPU shared with other work, OMP_WAIT_POLICY=PASSIVE keeps the OpenMP
threads from spinning against each other, which otherwise slows steps manyfold.
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .data.synthetic import street_scene
from .data.targets import Batch, collate, normalize, padded_size
from .metrics import ConfusionMatrix
from .model import build_model
from .model.checkpoint import load_checkpoint, load_weights, save_checkpoint
from .model.config import EfficientPSConfig, load_config, parse_size
from .predictor import resolve_device

log = logging.getLogger(__name__)

# Held-out scenes use seeds from here on; training seeds stay below it.
VAL_SEED_BASE = 1_000_000_000
# Training seeds of one run: seed * stride + index of the scene in the run.
_TRAIN_SEED_STRIDE = 10_000_000

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4


@dataclass
class TrainResult:
    """What a run produced: the checkpoints and the validation history."""

    checkpoint: Path
    best_checkpoint: Path | None
    best_miou: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_seeds(seed: int, step: int, batch_size: int) -> list[int]:
    """The scene seeds of one step: new ones every step, never a validation seed."""
    first = seed * _TRAIN_SEED_STRIDE + step * batch_size
    seeds = list(range(first, first + batch_size))
    if seeds[-1] >= VAL_SEED_BASE:
        raise ValueError(f"run seed {seed} with {step} steps reaches the validation seeds")
    return seeds


def val_seeds(count: int) -> list[int]:
    """The fixed held-out seeds."""
    return list(range(VAL_SEED_BASE, VAL_SEED_BASE + count))


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up from a third of the rate, then cosine decay to zero."""
    if step < warmup:
        return 1.0 / 3.0 + (2.0 / 3.0) * step / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: nn.Module, lr: float, steps: int, warmup: int):
    """SGD with the paper's momentum and weight decay, and the schedule of `lr_factor`."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps, warmup))
    return optimizer, scheduler


def step_size(image_size: tuple[int, int], scale: float, divisor: int) -> tuple[int, int]:
    """`image_size` times `scale`, rounded to multiples of `divisor` so that nothing is padded."""
    return tuple(max(divisor, round(side * scale / divisor) * divisor) for side in image_size)


def training_batch(
    config: EfficientPSConfig, seeds: Sequence[int], size: tuple[int, int], rng: np.random.Generator
) -> Batch:
    """Scenes from `seeds` at `size`, each mirrored half of the time."""
    scenes = [street_scene(size[0], size[1], seed=s) for s in seeds]
    return collate(scenes, config, flip_probability=0.5, rng=rng)


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, device: torch.device, clip: float
) -> dict[str, float]:
    """One SGD step on the sum of the losses; returns each loss and the gradient norm."""
    targets = [{k: v.to(device) for k, v in t.items()} for t in batch.targets]
    losses = model(batch.images.to(device), batch.image_sizes, targets)
    total = sum(losses.values())
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite loss: { {k: float(v) for k, v in losses.items()} }")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    values = {k: float(v.detach()) for k, v in losses.items()}
    values["loss"] = float(total.detach())
    values["grad_norm"] = float(grad_norm)
    return values


@torch.inference_mode()
def semantic_confusion(
    model: nn.Module, config: EfficientPSConfig, seeds: Sequence[int], size: tuple[int, int], device: torch.device
) -> ConfusionMatrix:
    """Confusion of the semantic head's argmax on the scenes of `seeds`."""
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(config.num_classes)
    padded = padded_size(size, config.size_divisor)
    for seed in seeds:
        scene = street_scene(size[0], size[1], seed=seed)
        image = normalize(scene.image, config, padded)[None].to(device)
        logits = model(image, [size])["semantic_logits"][0, :, : size[0], : size[1]]
        confusion.update(scene.semantic, logits.argmax(0).cpu().numpy())
    model.train(was_training)
    return confusion


def best_path(out: Path) -> Path:
    """Where the checkpoint with the best validation mIoU goes, beside `out`."""
    return out.with_name(f"{out.stem}.best{out.suffix}")


def train(
    config: EfficientPSConfig | str,
    steps: int,
    batch_size: int,
    image_size: tuple[int, int],
    lr: float,
    out: str | Path,
    device: str = "auto",
    seed: int = 0,
    log_every: int = 20,
    val_every: int = 200,
    val_count: int = 8,
    warmup: int = 100,
    clip: float = 10.0,
    scales: Sequence[float] = (1.0,),
    save_dtype: torch.dtype = torch.float32,
    init: str | Path | None = None,
) -> TrainResult:
    """Train `config` for `steps` steps and save it to `out`.

    Each step uses `batch_size` new scenes at `image_size` (h, w) times a scale
    drawn from `scales`. Every `val_every` steps and at the end the semantic
    mIoU on `val_count` held-out scenes at `image_size` is logged, and the
    best model so far is saved beside `out` (see `best_path`). `init` starts
    from a checkpoint's weights instead of a fresh initialisation.
    """
    config = load_config(config) if isinstance(config, str) else config
    out = Path(out)
    device = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(config)
    if init is not None:
        load_weights(model, load_checkpoint(init)[0], init)
    model = model.to(device).train()
    optimizer, scheduler = make_optimizer(model, lr, steps, min(warmup, steps))
    seeds = val_seeds(val_count)
    result = TrainResult(checkpoint=out, best_checkpoint=None, best_miou=-1.0)
    running: dict[str, float] = {}
    start = time.perf_counter()
    for step in range(steps):
        size = step_size(image_size, float(rng.choice(scales)), config.size_divisor)
        batch = training_batch(config, train_seeds(seed, step, batch_size), size, rng)
        values = train_step(model, optimizer, batch, device, clip)
        scheduler.step()
        running = {k: running.get(k, 0.0) + v for k, v in values.items()}
        done = step + 1
        if done % log_every == 0 or done == steps:
            count = log_every if done % log_every == 0 else done % log_every
            _log_losses(done, steps, {k: v / count for k, v in running.items()}, scheduler, start)
            running = {}
        if done % val_every == 0 or done == steps:
            miou = semantic_confusion(model, config, seeds, image_size, device).mean_iou()
            log.info("step %d: val mIoU %.4f on %d held-out scenes", done, miou, len(seeds))
            if _record(result, done, miou):
                save_checkpoint(model, config, result.best_checkpoint, dtype=save_dtype)
    save_checkpoint(model, config, out, dtype=save_dtype)
    log.info("saved %s (best val mIoU %.4f in %s)", out, result.best_miou, result.best_checkpoint)
    return result


def _record(result: TrainResult, step: int, miou: float) -> bool:
    """Add a validation to the history; True when it is the best so far."""
    result.history.append({"step": step, "miou": miou})
    if not miou > result.best_miou:
        return False
    result.best_miou = miou
    result.best_checkpoint = best_path(result.checkpoint)
    return True


def _log_losses(step: int, steps: int, means: dict[str, float], scheduler, start: float) -> None:
    terms = " ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in means.items() if k.startswith("loss_"))
    log.info(
        "step %d/%d loss %.4f (%s) grad %.2f lr %.5f %.1fs",
        step, steps, means["loss"], terms, means["grad_norm"], scheduler.get_last_lr()[0], time.perf_counter() - start,
    )


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m efficientps_ros.train", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", help="preset name or config YAML (default: small)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--image-size", type=_size, default=(256, 512), help="HEIGHTxWIDTH (default: 256x512)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="image size factors drawn per step")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--clip", type=float, default=10.0, help="gradient norm limit")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--val-every", type=int, default=200)
    parser.add_argument("--val-count", type=int, default=8)
    parser.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights")
    parser.add_argument("--fp16", action="store_true", help="store the weights in half precision")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    train(
        args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        image_size=args.image_size,
        lr=args.lr,
        out=args.out,
        device=args.device,
        seed=args.seed,
        log_every=args.log_every,
        val_every=args.val_every,
        val_count=args.val_count,
        warmup=args.warmup,
        clip=args.clip,
        scales=args.scales,
        save_dtype=torch.float16 if args.fp16 else torch.float32,
        init=args.init,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

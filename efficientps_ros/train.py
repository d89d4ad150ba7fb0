"""Training EfficientPS, in one process or in many under torchrun.

A recipe (`config/train_*.yaml`) holds every setting of a run; flags override
single ones. Without `--data` each step draws new synthetic street scenes; with
it, the train split of a Cityscapes-layout dataset. The same loop runs alone
or as one process of a DistributedDataParallel run:

    python -m efficientps_ros.train --recipe config/train_small_cpu.yaml --out weights.safetensors
    torchrun --nproc_per_node 8 -m efficientps_ros.train --recipe config/train_b5_cityscapes.yaml \\
        --data /data/cityscapes --backbone-weights tf_efficientnet_b5.safetensors --out b5.safetensors

Rank 0 alone writes: the progress bar, `metrics.csv`, `validation.csv`,
TensorBoard events, `curves.png`, `summary.json` and the training
checkpoints in the run directory, and the inference checkpoints `--out` and
its `.best` sibling, chosen by validation PQ. `--resume` continues a run
from a training checkpoint exactly where it stopped.

On a CPU shared with other work, OMP_WAIT_POLICY=PASSIVE keeps the OpenMP
threads from spinning against each other, which otherwise slows steps manyfold.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .data.targets import Batch
from .distributed import (
    DistContext,
    all_ranks,
    barrier,
    broadcast_buffers,
    init_distributed,
    mean_over_ranks,
    replica_mismatches,
    shutdown,
    wrap_model,
)
from .model import build_model
from .model.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from .model.config import CITYSCAPES_CLASSES, EfficientPSConfig, config_from_dict, load_config, parse_size
from .model.pretrained import load_backbone_weights
from .training.batches import (
    StepBatches,
    ValidationScenes,
    step_loader,
    step_size,
    train_seeds,
    val_seeds,
)
from .training.recipe import (
    LOSS_TERMS,
    MAX_VALIDATIONS,
    Recipe,
    load_recipe,
    lr_factor,
    recipe_from_dict,
    recipe_lr_factor,
    validations,
)
from .training.run_log import RunLog, plot_curves
from .training.sampler import ShardedSampler
from .training.state import (
    TrainingState,
    capture_rng,
    checkpoint_stem,
    dump_json,
    load_training_state,
    prune_checkpoints,
    read_training_info,
    restore_rng,
    save_training_state,
)
from .training.validation import better, validate

__all__ = ["TrainResult", "best_path", "lr_factor", "main", "make_optimizer", "step_size", "train", "train_seeds",
           "train_step", "val_seeds"]

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The run folder's subfolder that keeps synthetic validation scenes once made.
VAL_SCENES_DIR = "val_scenes"
# --threads: more than any machine's cores only makes OpenMP start threads that wait on each other.
MAX_THREADS = 1024


@dataclass
class TrainResult:
    """What a run produced: the checkpoints, the validation history, the run directory."""

    checkpoint: Path
    best_checkpoint: Path | None
    best_miou: float
    history: list[dict[str, float]] = field(default_factory=list)
    best_pq: float = math.nan
    work_dir: Path | None = None
    iteration: int = 0


def make_optimizer(model: nn.Module, recipe: Recipe):
    """SGD with the recipe's momentum and weight decay, and its learning-rate schedule."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: recipe_lr_factor(recipe, step))
    return optimizer, scheduler


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    device: torch.device,
    clip: float,
    scaler: torch.amp.GradScaler | None = None,
    amp: str = "off",
    loss_weights: dict[str, float] | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    context: DistContext | None = None,
) -> dict[str, float]:
    """One SGD step on the weighted sum of the losses; returns each loss, the gradient norm and `skipped`.

    A step whose loss or gradient is not finite changes nothing: no update, and
    the batch-norm statistics its forward pass moved are put back. Under DDP the
    ranks decide together, so their weights stay the same. `memory_format` is
    the images' layout, which should be the model's (see `Recipe.channels_last`).
    """
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch.targets]
    images = batch.images.to(device, non_blocking=True, memory_format=memory_format)
    buffers = [b.detach().clone() for b in model.buffers()]
    with torch.autocast(device.type, dtype=AMP_DTYPES.get(amp), enabled=amp != "off"):
        losses = model(images, batch.image_sizes, targets)
    weights = loss_weights or {}
    total = sum(weights.get(k, 1.0) * v.float() for k, v in losses.items())
    optimizer.zero_grad(set_to_none=True)
    scaled = scaler is not None and scaler.is_enabled()
    if scaled:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)  # the clipping limit is for the true gradient
    else:
        total.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), clip)
    finite = all_ranks(bool(torch.isfinite(total.detach()) and torch.isfinite(grad_norm)), context)
    if finite and scaled:
        scaler.step(optimizer)
    elif finite:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
    if scaled:
        scaler.update()  # after a skip, a smaller scale for the next step
    values = {k: float(v.detach()) for k, v in losses.items()}
    values["loss"] = float(total.detach())
    values["grad_norm"] = float(grad_norm)
    values["skipped"] = 0.0 if finite else 1.0
    return values


class _Window:
    """The steps between two log lines: the means of those taken, the count of those skipped."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.taken = 0
        self.skipped = 0

    def add(self, values: dict[str, float]) -> None:
        if values["skipped"]:
            self.skipped += 1
            return
        self.taken += 1
        self.sums = {k: self.sums.get(k, 0.0) + v for k, v in values.items() if k != "skipped"}

    def means(self) -> dict[str, float]:
        # A window of skipped steps only still writes every column, as NaN.
        keys = self.sums or dict.fromkeys(LOSS_TERMS + ("loss", "grad_norm", "data_time", "step_time"))
        means = {k: self.sums[k] / self.taken if self.taken else math.nan for k in keys}
        means["skipped"] = float(self.skipped)
        return means


def best_path(out: Path) -> Path:
    """Where the checkpoint with the best validation PQ goes, beside `out`."""
    return out.with_name(f"{out.stem}.best{out.suffix}")


def default_work_dir(out: Path) -> Path:
    """The run directory beside `out`: logs, plots and training checkpoints."""
    return out.with_name(f"{out.stem}.run")


def train(
    config: EfficientPSConfig | str | None = None,
    out: str | Path | None = None,
    *,
    recipe: Recipe | None = None,
    device: str = "auto",
    init: str | Path | None = None,
    resume: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    data: str | Path | None = None,
    work_dir: str | Path | None = None,
    save_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    **settings: Any,
) -> TrainResult:
    """Train a network and save it to `out`.

    `config` is a preset, a YAML path or a config (default: the recipe's
    preset). `settings` override fields of `recipe` (steps, batch_size, lr,
    ...). `init` starts from an inference checkpoint's weights,
    `backbone_weights` from a timm EfficientNet file, `resume` continues a
    training checkpoint with its own recipe and config. `data` is a
    Cityscapes-layout dataset root; without it the scenes are synthetic.
    """
    if out is None:
        raise ValueError("train: an output checkpoint path (out) is needed")
    out = Path(out)
    work_dir = Path(work_dir) if work_dir else default_work_dir(out)
    if resume is not None:
        info = read_training_info(resume)
        recipe, config = _resumed_setup(info, resume, settings)
    else:
        recipe, config = _resolve_setup(config, recipe, settings)
    check_outputs(out, work_dir)
    context = init_distributed(device)
    try:
        run = _Run(context, config, recipe, out, work_dir, save_dtype, data, progress)
        return run.run(init, backbone_weights, resume)
    finally:
        shutdown(context)


def _resolve_setup(
    config: EfficientPSConfig | str | None, recipe: Recipe | None, settings: dict[str, Any]
) -> tuple[Recipe, EfficientPSConfig]:
    """The recipe and config of a new run; flags override the recipe."""
    recipe = (recipe or Recipe()).replace(**settings)
    if config is None:
        config = recipe.preset
    return recipe, load_config(config) if isinstance(config, (str, Path)) else config


def _resumed_setup(
    info: dict[str, Any], resume: str | Path, settings: dict[str, Any]
) -> tuple[Recipe, EfficientPSConfig]:
    """A resumed run's own recipe and config, flags still overriding the recipe, and steps left to train."""
    where = f"training checkpoint {resume}"
    for key in ("recipe", "config"):
        if key not in info:
            raise CheckpointError(f"{where}: its JSON has no {key!r}, which every run's checkpoint holds")
    try:
        stored = recipe_from_dict(info["recipe"])
    except ValueError as exc:
        raise CheckpointError(f"{where}: recipe: {exc}") from None
    recipe = stored.replace(**settings)
    config = config_from_dict(info["config"], where=f"{where}: config")
    if info["iteration"] >= recipe.steps:
        # Its weights are there to export as they are: `efficientps average` writes one checkpoint's too.
        raise ValueError(
            f"{where} is at step {info['iteration']}, and the run has {recipe.steps} steps: nothing is left to "
            f"train; give --steps above {info['iteration']} to go on, or write its weights with "
            f"`efficientps average --out OUT {resume}`"
        )
    done, coming = len(info.get("history", [])), validations(recipe, after=info["iteration"])
    if done + coming > MAX_VALIDATIONS:
        raise ValueError(
            f"{where} holds {done:,} validations, and val_every {recipe.val_every:,} up to step {recipe.steps:,} "
            f"adds {coming:,}; allowed: at most {MAX_VALIDATIONS:,} in a run, whose scores every checkpoint keeps"
        )
    return recipe, config


def check_outputs(out: Path, work_dir: Path) -> None:
    """Refuse outputs that could not be written before any training, rather than when it ends.

    The directories are made now, as the run would make them, and a nameless
    temporary file in each shows they take files.
    """
    for path in (out, best_path(out)):
        if path.is_dir():
            raise ValueError(f"output checkpoint {out}: {path} is a directory; give the file to write")
    for directory, what in ((out.parent, f"the directory of the output checkpoint {out}"),
                            (work_dir, "the run directory")):
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"{what}, {directory}, is a file, not a directory")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{what}, {directory}, cannot be made: {exc.strerror or exc} ({exc.filename})") from None
        try:
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as exc:
            raise ValueError(f"{what}, {directory}, takes no new files: {exc.strerror or exc}") from None


class _Run:
    """One training run on this process: the model, its optimiser, data, logs and checkpoints."""

    def __init__(
        self,
        context: DistContext,
        config: EfficientPSConfig,
        recipe: Recipe,
        out: Path,
        work_dir: Path,
        save_dtype: torch.dtype,
        data: str | Path | None,
        progress: bool,
    ):
        if recipe.amp == "fp16" and context.device.type != "cuda":
            raise ValueError("amp 'fp16' needs a CUDA device; use 'bf16' or 'off' on cpu")
        self.context, self.config, self.recipe = context, config, recipe
        self.memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
        self.out, self.work_dir, self.save_dtype, self.progress = out, work_dir, save_dtype, progress
        self.train_data, self.val_data = _datasets(data, config, recipe, work_dir / VAL_SCENES_DIR)
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None
        self.skipped_steps = self.skipped_in_row = 0
        self.log = RunLog(work_dir) if context.is_main else None

    def run(self, init: str | Path | None, backbone_weights: str | Path | None, resume: str | Path | None) -> TrainResult:
        recipe, context = self.recipe, self.context
        # Each rank's sampling noise differs; DDP gives every rank rank 0's initial weights.
        torch.manual_seed(recipe.seed + context.rank)
        self.model = build_model(self.config)
        if init is not None:
            load_weights(self.model, load_checkpoint(init)[0], init)
        if backbone_weights is not None:
            load_backbone_weights(self.model.backbone, backbone_weights)
        self.model.to(context.device, memory_format=self.memory_format).train()
        self.optimizer, self.scheduler = make_optimizer(self.model, recipe)
        self.scaler = torch.amp.GradScaler(context.device.type, enabled=recipe.amp == "fp16")
        start = self._resume(resume) if resume is not None else 0
        self.net = wrap_model(self.model, context)
        self.sampler = ShardedSampler(
            len(self.train_data) if self.train_data is not None else None,
            recipe.batch_size, recipe.seed, context.rank, context.world_size,
        )
        batches = StepBatches(self.config, recipe, self.sampler, self.train_data)
        loader = step_loader(batches, start, recipe.workers)
        with logging_redirect_tqdm():
            done = self._loop(loader, start)
        return self._finish(done)

    def _resume(self, path: str | Path) -> int:
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        base_lrs = list(self.scheduler.base_lrs)
        state = load_training_state(path, self.model, self.optimizer, self.scheduler, self.scaler)
        self._follow_recipe(settings, base_lrs, state.iteration)
        restore_rng(state.rng, self.context)
        self.history = list(state.info.get("history", []))
        self.best = state.info.get("best")
        self.skipped_steps = state.info.get("skipped_steps", 0)
        self.skipped_in_row = state.info.get("skipped_in_row", 0)
        log.info("resumed %s at step %d of %d", path, state.iteration, self.recipe.steps)
        return state.iteration

    def _follow_recipe(self, settings: list[dict[str, Any]], base_lrs: list[float], start: int) -> None:
        """Give the optimiser and schedule back the recipe's settings, which the checkpoint's replaced.

        torch restores a group's learning rate, momentum and decay with its
        state, and the schedule's base rate with its own, so a rate given with
        --resume would otherwise go unused. With the run's own recipe these are
        the values stored, to the bit.
        """
        self.scheduler.base_lrs = base_lrs
        self.scheduler.last_epoch = start
        for group, own, base in zip(self.optimizer.param_groups, settings, base_lrs):
            group.update(own)
            group["lr"] = base * recipe_lr_factor(self.recipe, start)

    def _loop(self, loader, start: int) -> int:
        recipe, main = self.recipe, self.context.is_main
        bar = tqdm(total=recipe.steps, initial=start, unit="it", dynamic_ncols=True,
                   disable=not (self.progress and main), desc="train")
        window = _Window()
        self.timing = {"data": 0.0, "total": 0.0, "steps": 0}
        done = start
        tick = time.perf_counter()
        try:
            for step, batch in zip(range(start, recipe.steps), loader):
                fetched = time.perf_counter()
                values = train_step(self.net, self.optimizer, batch, self.context.device, recipe.clip,
                                    self.scaler, recipe.amp, recipe.loss_weights, self.memory_format,
                                    self.context)
                self.scheduler.step()
                done = step + 1
                values["data_time"] = fetched - tick
                values["step_time"] = time.perf_counter() - fetched
                self._time(values)
                self._count_skip(done, values)
                window.add(values)
                if done % recipe.log_every == 0 or done == recipe.steps:
                    self._log_train(done, window.means(), bar)
                    window = _Window()
                bar.update(1)
                if done % recipe.checkpoint_every == 0 or done == recipe.steps:
                    self._save_state(done)
                if done % recipe.val_every == 0 or done == recipe.steps:
                    self._validate(done)
                tick = time.perf_counter()
        except KeyboardInterrupt:
            # Under torchrun every rank is interrupted at its own moment, so only a
            # lone process can save where it stopped; many resume from the last periodic save.
            if not self.context.distributed and done > start:
                self._save_state(done)
                log.warning("interrupted after step %d; continue with --resume %s", done, self.work_dir / "checkpoints")
            raise
        finally:
            bar.close()
        return done

    def _count_skip(self, done: int, values: dict[str, float]) -> None:
        if not values["skipped"]:
            self.skipped_in_row = 0
            return
        self.skipped_steps += 1
        self.skipped_in_row += 1
        limit = self.recipe.max_skipped_steps
        losses = {k: round(v, 4) for k, v in values.items() if k.startswith("loss")}
        log.warning("step %d skipped: a loss or the gradient is not finite (losses %s, gradient norm %s); "
                    "%d in a row, the limit is %d", done, losses, values["grad_norm"], self.skipped_in_row, limit)
        if self.skipped_in_row > limit:
            raise FloatingPointError(
                f"{self.skipped_in_row} steps in a row up to step {done} had a non-finite loss or gradient "
                f"(max_skipped_steps {limit}); the last losses: {losses}"
            )

    def _time(self, values: dict[str, float]) -> None:
        # The first step pays for start-up (allocator, cuDNN autotuning); rates leave it out.
        self.timing["steps"] += 1
        if self.timing["steps"] > 1:
            self.timing["data"] += values["data_time"]
            self.timing["total"] += values["data_time"] + values["step_time"]

    def _log_train(self, done: int, means: dict[str, float], bar: tqdm) -> None:
        means = mean_over_ranks(means, self.context)
        means["lr"] = self.scheduler.get_last_lr()[0]
        if self.log is None:
            return
        self.log.train(done, means)
        terms = {k.removeprefix("loss_"): f"{v:.3f}" for k, v in means.items() if k.startswith("loss")}
        bar.set_postfix(terms, refresh=False)
        if not self.progress:
            skipped = f" skipped {means['skipped']:.0f}" if means["skipped"] else ""
            log.info("step %d/%d %s lr %.5f%s", done, self.recipe.steps,
                     " ".join(f"{k} {v}" for k, v in terms.items()), means["lr"], skipped)

    def _save_state(self, done: int) -> None:
        rng = capture_rng(self.context)  # every rank takes part
        if not self.context.is_main:
            return
        info = {
            "sampler": self.sampler.state(done),
            "history": self.history,
            "best": self.best,
            "skipped_steps": self.skipped_steps,
            "skipped_in_row": self.skipped_in_row,
            "recipe": self.recipe.to_dict(),
            "config": self.config.to_dict(),
            "world_size": self.context.world_size,
        }
        stem = checkpoint_stem(self.work_dir / "checkpoints", done)
        save_training_state(stem, self.model, self.optimizer, self.scheduler, self.scaler, TrainingState(done, rng, info))
        if self.recipe.keep_checkpoints:
            prune_checkpoints(stem.parent, self.recipe.keep_checkpoints)

    def _validate(self, done: int) -> None:
        if self.context.is_main:
            # Building the predictor's network draws from the generator; the run's stream must not see it.
            with torch.random.fork_rng(devices=[self.context.device] if self.context.device.type == "cuda" else []):
                path = save_checkpoint(self.model, self.config, self.work_dir / "validation.safetensors")
                metrics = validate(path, self.val_data, str(self.context.device), limit=self.recipe.val_count)
            self.history.append({"step": done, **metrics})
            self.log.validation(done, metrics)
            log.info("step %d: val PQ %.4f mIoU %.4f", done, metrics["pq"], metrics["miou"])
            if better(metrics, self.best):
                self.best = {"step": done, **metrics}
                save_checkpoint(self.model, self.config, best_path(self.out), dtype=self.save_dtype)
        barrier(self.context)

    def _finish(self, done: int) -> TrainResult:
        context = self.context
        broadcast_buffers(self.net, context)
        different = replica_mismatches(self.net, context)
        if different:
            raise RuntimeError(f"the replicas' weights differ after training: {', '.join(different[:8])}")
        if context.distributed:
            log.info("weights bit-identical on all %d ranks after step %d", context.world_size, done)
        if context.is_main:
            save_checkpoint(self.model, self.config, self.out, dtype=self.save_dtype)
            self._write_summary(done)
            plot_curves(self.work_dir)
            self.log.close()
            log.info("saved %s; run directory %s", self.out, self.work_dir)
        barrier(context)
        best = self.best or {}
        return TrainResult(
            checkpoint=self.out,
            best_checkpoint=best_path(self.out) if self.best else None,
            best_miou=best.get("miou", -1.0),
            history=self.history,
            best_pq=_nan_if_none(best.get("pq", math.nan)),
            work_dir=self.work_dir,
            iteration=done,
        )

    def _write_summary(self, done: int) -> None:
        timing, device = self.timing, self.context.device
        timed = max(timing["steps"] - 1, 0)
        summary = {
            "steps": done,
            "timed_steps": timed,
            "iterations_per_second": timed / timing["total"] if timing["total"] else None,
            "data_share": timing["data"] / timing["total"] if timing["total"] else None,
            "world_size": self.context.world_size,
            "images_per_step": self.recipe.batch_size * self.context.world_size,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            "torch": torch.__version__,
            "amp": self.recipe.amp,
            "skipped_steps": self.skipped_steps,
            "best": self.best,
        }
        (self.work_dir / "summary.json").write_text(dump_json(summary))


def _nan_if_none(value: float | None) -> float:
    # A checkpoint stores an undefined score as null.
    return math.nan if value is None else value


def _datasets(data: str | Path | None, config: EfficientPSConfig, recipe: Recipe, scene_cache: Path):
    """The training dataset (None: synthetic) and the validation scenes; refuses what cannot train.

    Synthetic validation scenes are kept in `scene_cache` once made.
    """
    if data is None:
        if tuple(config.classes) != CITYSCAPES_CLASSES:
            raise ValueError(
                f"the config has its own class table ({len(config.classes)} classes), but the synthetic scenes "
                "carry Cityscapes train ids: training without --data needs the Cityscapes class table"
            )
        return None, ValidationScenes(recipe.image_size, recipe.val_count, scene_cache)
    from .data.datasets import PanopticDataset

    splits = PanopticDataset(data, "train", config.classes), PanopticDataset(data, "val", config.classes)
    for split, dataset in zip(("train", "val"), splits):
        if len(dataset) == 0:
            raise ValueError(f"dataset {data}: the {split} split lists no images; training needs both splits")
    return splits


def _threads(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, got {text!r}") from None
    if not 1 <= count <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_THREADS} threads, got {count}")
    return count


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# Flags that override a field of the recipe; None leaves the recipe's value.
_RECIPE_FLAGS = (
    "steps", "batch_size", "image_size", "crop_size", "scales", "lr", "warmup", "clip", "seed", "log_every",
    "val_every", "val_count", "checkpoint_every", "keep_checkpoints", "amp", "workers", "photometric",
    "channels_last", "max_skipped_steps",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m efficientps_ros.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="inference checkpoint to write (.safetensors)")
    parser.add_argument("--recipe", default=None, help="training recipe YAML (default: the defaults of training/recipe.py)")
    parser.add_argument("--preset", default=None, help="preset name or config YAML (default: the recipe's)")
    parser.add_argument("--data", type=Path, default=None, help="Cityscapes-layout dataset root (default: synthetic)")
    parser.add_argument("--resume", type=Path, default=None, help="training checkpoint (.json/.safetensors) or run dir")
    parser.add_argument("--init", type=Path, default=None, help="start from this inference checkpoint's weights")
    parser.add_argument("--backbone-weights", type=Path, default=None, help="timm EfficientNet checkpoint file")
    parser.add_argument("--work-dir", type=Path, default=None, help="logs and training checkpoints (default: OUT.run)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fp16", action="store_true", help="store the weights in half precision")
    parser.add_argument("--threads", type=_threads, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    recipe = parser.add_argument_group("recipe overrides")
    recipe.add_argument("--steps", type=int)
    recipe.add_argument("--batch-size", type=int, help="images per process and step")
    recipe.add_argument("--image-size", type=_size, help="synthetic scenes' HEIGHTxWIDTH")
    recipe.add_argument("--crop-size", type=_size, help="dataset crops' HEIGHTxWIDTH")
    recipe.add_argument("--scales", type=float, nargs="+", help="synthetic image size factors drawn per step")
    recipe.add_argument("--lr", type=float)
    recipe.add_argument("--warmup", type=int)
    recipe.add_argument("--clip", type=float, help="gradient norm limit")
    recipe.add_argument("--max-skipped-steps", type=int, help="non-finite steps in a row that stop the run")
    recipe.add_argument("--seed", type=int)
    recipe.add_argument("--log-every", type=int)
    recipe.add_argument("--val-every", type=int)
    recipe.add_argument("--val-count", type=int)
    recipe.add_argument("--checkpoint-every", type=int)
    recipe.add_argument("--keep-checkpoints", type=int, help="training checkpoints kept, the newest (0: all)")
    recipe.add_argument("--amp", choices=["off", "bf16", "fp16"], help="mixed precision of the forward pass")
    recipe.add_argument("--workers", type=int, help="data loader processes")
    recipe.add_argument("--photometric", action="store_true", default=None,
                        help="jitter brightness, contrast, saturation, hue")
    recipe.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="train with NHWC activations (the recipe's default: on)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet = os.environ.get("RANK", "0") != "0"  # the other ranks speak only of trouble
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        recipe = load_recipe(args.recipe) if args.recipe else Recipe()
        train(
            args.preset, args.out, recipe=recipe, device=args.device, init=args.init, resume=args.resume,
            backbone_weights=args.backbone_weights, data=args.data, work_dir=args.work_dir,
            save_dtype=torch.float16 if args.fp16 else torch.float32, progress=not args.no_progress,
            **{name: getattr(args, name) for name in _RECIPE_FLAGS},
        )
    except (ValueError, CheckpointError) as exc:
        # Bad input of every kind (recipe, config, checkpoint, dataset, device) names itself here.
        print(f"efficientps train: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A file that could be checked at the start but failed later (a full disk, a vanished directory).
        print(f"efficientps train: {exc}", file=sys.stderr)
        return 1
    except FloatingPointError as exc:
        print(f"efficientps train: {exc}; resume from the last checkpoint in the run directory, "
              "perhaps with a lower --lr", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a run leaves for the person watching it: CSV logs, TensorBoard events, a plot.

`metrics.csv` has one row per logged step (losses, learning rate, gradient
norm, seconds spent on data and on the step), `validation.csv` one row per
validation. Both are appended to when a run resumes. TensorBoard events go
to `tensorboard/` when the tensorboard package is installed.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

log = logging.getLogger(__name__)

TRAIN_CSV = "metrics.csv"
VAL_CSV = "validation.csv"
PLOT = "curves.png"


class RunLog:
    """Rows of numbers into CSV files and, where it is installed, TensorBoard."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._writer = _tensorboard(directory / "tensorboard")

    def train(self, step: int, values: dict[str, float]) -> None:
        self._append(TRAIN_CSV, step, values, "train")

    def validation(self, step: int, values: dict[str, float]) -> None:
        self._append(VAL_CSV, step, values, "val")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _append(self, name: str, step: int, values: dict[str, float], group: str) -> None:
        path = self.directory / name
        row = {"step": step, **values}
        fresh = not path.is_file()
        columns = list(row) if fresh else _header(path)
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            if fresh:
                writer.writeheader()
            writer.writerow(row)
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(f"{group}/{key}", value, step)


def read_csv(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def plot_curves(directory: Path) -> Path | None:
    """Loss curves and validation metrics of a run's CSV logs as one PNG."""
    train_rows, val_rows = read_csv(directory / TRAIN_CSV), read_csv(directory / VAL_CSV)
    if not train_rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, metrics) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = [row["step"] for row in train_rows]
    for key in [k for k in train_rows[0] if k.startswith("loss")]:
        losses.plot(steps, [row.get(key, float("nan")) for row in train_rows], label=key.removeprefix("loss_"))
    losses.set(xlabel="step", ylabel="loss", yscale="log", title="training losses")
    losses.legend(fontsize="small")
    for key in ("pq", "miou", "pq_things", "pq_stuff"):
        if val_rows and key in val_rows[0]:
            metrics.plot([r["step"] for r in val_rows], [r[key] for r in val_rows], marker="o", label=key)
    metrics.set(xlabel="step", ylabel="score", title="validation")
    if val_rows:
        metrics.legend(fontsize="small")
    figure.tight_layout()
    path = directory / PLOT
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _header(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return next(csv.reader(handle), [])


def _tensorboard(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(directory))

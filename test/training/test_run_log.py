"""The run's logs: CSV rows that survive a resume, TensorBoard scalars, the curves' PNG."""
from efficientps_ros.training import run_log
from efficientps_ros.training.run_log import RunLog, plot_curves, read_csv


class _Recorder:
    def __init__(self):
        self.scalars, self.closed = [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


def test_rows_append_across_runs_and_reach_tensorboard(tmp_path, monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(run_log, "_tensorboard", lambda directory: recorder)
    first = RunLog(tmp_path)
    first.train(1, {"loss": 2.0, "loss_semantic": 1.5, "lr": 0.1})
    first.validation(1, {"pq": 0.25, "miou": 0.5})
    first.close()
    # A resumed run appends under the header the first one wrote, columns in its order.
    RunLog(tmp_path).train(2, {"lr": 0.05, "loss_semantic": 1.0, "loss": 1.25})
    assert read_csv(tmp_path / "metrics.csv") == [
        {"step": 1.0, "loss": 2.0, "loss_semantic": 1.5, "lr": 0.1},
        {"step": 2.0, "loss": 1.25, "loss_semantic": 1.0, "lr": 0.05},
    ]
    assert ("train/loss_semantic", 1.5, 1) in recorder.scalars and ("val/pq", 0.25, 1) in recorder.scalars
    assert recorder.closed


def test_the_curves_are_drawn_from_the_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(run_log, "_tensorboard", lambda directory: None)
    assert plot_curves(tmp_path) is None  # nothing logged yet
    log = RunLog(tmp_path)
    for step in range(1, 4):
        log.train(step, {"loss": 3.0 / step, "loss_mask": 1.0 / step})
    log.validation(3, {"pq": 0.1, "miou": 0.3})
    path = plot_curves(tmp_path)
    assert path == tmp_path / "curves.png" and path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000

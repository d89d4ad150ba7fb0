import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from efficientps_ros.ros import bench_messages
from efficientps_ros.bench import run_bench
from efficientps_ros.bench_stages import MODEL_STAGES, ROS_STAGES, STAGES

GPU_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench.sh"
REQUIRED = {
    "config", "height", "width", "batch", "device", "device_name", "precision", "torch_version", "compiled",
    "stages", "total_ms", "fps", "eager_fp32_total_ms", "speedup_vs_eager", "semantic_agreement_vs_eager",
    "node_overhead_ms", "peak_memory_mb",
}


def _args(tmp_path, **changes):
    values = dict(config="small", checkpoint=None, device="cpu", precision="bf16", height=64, width=128, batch=1,
                  frames=2, warmup=1, compile=False, agreement_scenes=1, score_threshold=None, ros="off",
                  json=str(tmp_path / "b.json"))
    values.update(changes)
    return argparse.Namespace(**values)


def _times(entry):
    assert set(entry) == {"median_ms", "p95_ms"}
    assert 0 < entry["median_ms"] <= entry["p95_ms"]
    return entry["median_ms"]


def test_without_ros_the_model_stages_are_timed_and_the_ros_stages_absent(tmp_path, capsys):
    assert run_bench(_args(tmp_path, batch=2)) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert REQUIRED <= set(report)
    assert (report["config"], report["height"], report["width"], report["batch"]) == ("small", 64, 128, 2)
    assert (report["device"], report["precision"], report["compiled"], report["frames"]) == ("cpu", "bf16", False, 2)
    assert list(report["stages"]) == list(MODEL_STAGES)
    medians = [_times(report["stages"][stage]) for stage in MODEL_STAGES]
    assert set(report["absent_stages"]) == set(ROS_STAGES)
    assert all("--ros off" in why for why in report["absent_stages"].values())
    # Absent, not zero: with no ROS stages the node's overhead is unknown.
    assert report["node_overhead_ms"] is None and report["fps_with_output_thread"] is None
    total = _times(report["total_ms"])
    assert total >= max(medians)
    assert report["fps"] == pytest.approx(2 * 1000 / total)
    assert report["speedup_vs_eager"] == pytest.approx(report["eager_fp32_total_ms"] / report["model_ms"]["median_ms"])
    assert list(report["eager_fp32_stages"]) == list(MODEL_STAGES)
    assert 0 <= report["semantic_agreement_vs_eager"] <= 100
    assert 0 <= report["detections_matched_vs_eager"] <= report["detections_eager"]
    assert report["peak_memory_mb"] > 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage in out
    absent = [line.split(" absent ")[0].strip() for line in out.splitlines() if " absent " in line]
    assert absent == list(ROS_STAGES)
    assert "speed-up over the plain eager fp32 network: x" in out


def test_the_same_network_agrees_fully_with_itself_in_fp32(tmp_path):
    # fp32 differs from the baseline only by folded norms and the memory layout.
    run_bench(_args(tmp_path, precision="fp32", score_threshold=0.05, frames=1, warmup=0))
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["semantic_agreement_vs_eager"] > 99.9
    assert report["detections_eager"] > 0
    assert report["detections_matched_vs_eager"] == report["detections_eager"] == report["detections"]


def test_agreement_is_pooled_over_the_timed_scenes_and_more_untimed(tmp_path, monkeypatch):
    import efficientps_ros.bench as bench

    seeds, predicted = [], []
    original_scene, original_predict = bench.street_scene, bench.Predictor.predict

    def scene(*args, seed):
        seeds.append(seed)
        return original_scene(*args, seed=seed)

    def predict(self, images, **options):
        predicted.append(len(images))
        return original_predict(self, images, **options)

    monkeypatch.setattr(bench, "street_scene", scene)
    monkeypatch.setattr(bench.Predictor, "predict", predict)
    run_bench(_args(tmp_path, precision="fp32", batch=2, frames=1, warmup=0, agreement_scenes=4))
    report = json.loads((tmp_path / "b.json").read_text())
    # Scenes 0 and 1 make the timed frame; 2 and 3 are predicted after it, one at a time, by both networks.
    assert seeds == [0, 1, 2, 3]
    assert predicted[-4:] == [1, 1, 1, 1] and predicted.count(1) == 4
    assert report["agreement_scenes"] == 4
    assert 99.9 < report["semantic_agreement_worst_scene_vs_eager"] <= report["semantic_agreement_vs_eager"] <= 100


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"frames": 0}, "--frames"),
        ({"agreement_scenes": 0}, "--agreement-scenes"),
        ({"height": 16}, "at least 32"),
        ({"batch": 65}, "--batch 65: allowed: 1 to 64"),
        ({"frames": 100_001}, "--frames 100001: allowed: 1 to 100,000"),
        ({"warmup": 1001}, "--warmup 1001: allowed: 0 to 1,000"),
        ({"warmup": -1}, "--warmup -1: allowed: 0 to 1,000"),
        ({"agreement_scenes": 1001}, "--agreement-scenes 1001: allowed: 1 to 1,000"),
        ({"height": 64, "width": 4096}, "--height 64 and --width 4096: .*aspect ratio beyond 16:1"),
        ({"height": 100_000, "width": 100_000}, "--height 100000 and --width 100000: .*allowed: at most 67108864"),
        ({"score_threshold": float("nan")}, "--score-threshold nan: allowed: a number from 0 to 1"),
        ({"score_threshold": float("inf")}, "--score-threshold inf: allowed: a number from 0 to 1"),
        ({"score_threshold": -1.0}, "--score-threshold -1.0: allowed"),
        ({"score_threshold": 2.0}, "--score-threshold 2.0: allowed"),
        ({"precision": "fp16"}, "'fp16' needs a CUDA device"),
        ({"device": "cuda:7"}, "cuda:7"),
    ],
)
def test_bad_settings_are_refused_by_name(tmp_path, changes, message, monkeypatch):
    import efficientps_ros.bench as bench

    # Refused before a scene is drawn or a network built.
    monkeypatch.setattr(bench, "street_scene", lambda *args, **kwargs: pytest.fail("a scene was drawn"))
    with pytest.raises(ValueError, match=message):
        run_bench(_args(tmp_path, **changes))
    assert not (tmp_path / "b.json").exists()


def test_a_report_path_that_cannot_be_written_is_refused_before_the_benchmark(tmp_path, monkeypatch):
    import efficientps_ros.bench as bench

    monkeypatch.setattr(bench, "run_variants", lambda *args, **kwargs: pytest.fail("the benchmark ran"))
    blocker = tmp_path / "afile"
    blocker.write_text("")
    for path, message in ((tmp_path, "is a folder"), (blocker / "b.json", "its folder cannot be made"),
                          (Path("/proc/b.json"), "its folder takes no new files")):
        with pytest.raises(ValueError, match=f"--json {path}: {message}"):
            run_bench(_args(tmp_path, json=str(path)))


def test_the_bench_command_refuses_out_of_range_options_in_one_line(tmp_path, capsys):
    from efficientps_ros.cli import main

    args = ["bench", "--config", "small", "--ros", "off", "--device", "cpu", "--frames", "1", "--warmup", "0",
            "--agreement-scenes", "1", "--json", str(tmp_path / "b.json")]
    assert main([*args, "--height", "100000", "--width", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efficientps bench: --height 100000 and --width 100000:") and err.count("\n") == 1
    assert not (tmp_path / "b.json").exists()


def test_ros_required_where_there_is_none_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_messages, "ros_available", lambda: "no ROS here (no module named rclpy)")
    with pytest.raises(ValueError, match="--ros on: no ROS here"):
        run_bench(_args(tmp_path, ros="on"))


@pytest.mark.skipif(bench_messages.ros_available() != "", reason="needs rclpy and vision_msgs")
def test_with_ros_every_stage_is_timed_and_the_node_overhead_given(tmp_path):
    # Starts a listener process: run inside the loopback-only namespace (make test).
    run_bench(_args(tmp_path, ros="on"))
    report = json.loads((tmp_path / "b.json").read_text())
    assert list(report["stages"]) == list(STAGES) and report["absent_stages"] == {}
    overhead = report["node_overhead_ms"]
    assert overhead >= max(report["stages"][s]["median_ms"] for s in ROS_STAGES)
    assert overhead < report["total_ms"]["median_ms"]
    # Overlapped, the frame takes as long as the slower thread: at least the output thread's
    # stages, at least everything else, and never longer than all of them one after another.
    # Over 2 frames a median is a mean, so the sum of the stages' medians is the median of their sums.
    output_thread = sum(report["stages"][s]["median_ms"] for s in ("arrays to messages", "publish"))
    rest = sum(report["stages"][s]["median_ms"] for s in STAGES if s not in ("arrays to messages", "publish"))
    assert report["fps_with_output_thread"] == pytest.approx(1000 / max(output_thread, rest))
    assert report["fps"] <= report["fps_with_output_thread"]


@pytest.mark.skipif(bench_messages.ros_available() != "", reason="needs rclpy and vision_msgs")
def test_where_painting_with_the_maps_pays_the_overlay_sent_is_the_predictors(tmp_path, monkeypatch):
    from efficientps_ros import bench
    from efficientps_ros.ros import messages

    monkeypatch.setattr(bench, "pays_on", lambda device: True)
    painted = []
    overlay_image = messages.overlay_image

    def recording(rgb, result, painter, alpha, header):
        painted.append((result.overlay_alpha, alpha))
        return overlay_image(rgb, result, painter, alpha, header)

    monkeypatch.setattr(messages, "overlay_image", recording)
    run_bench(_args(tmp_path, ros="on"))
    # Warm-up and measured frames of the optimised network, each with the predictor's overlay.
    assert painted == [(0.5, 0.5)] * 3


def test_variants_share_one_plain_network_whose_frames_alternate_with_theirs(tmp_path, monkeypatch):
    from efficientps_ros import bench

    built, framed = [], []
    make, frame = bench._predictor, bench._frame

    def counting_predictor(*args, optimize, **kwargs):
        built.append(optimize)
        return make(*args, optimize=optimize, **kwargs)

    def recording_frame(predictor, *args):
        framed.append("variant" if predictor.optimized else "plain")
        return frame(predictor, *args)

    monkeypatch.setattr(bench, "_predictor", counting_predictor)
    monkeypatch.setattr(bench, "_frame", recording_frame)
    arrived = []
    reports = bench.run_variants(_args(tmp_path, frames=2, warmup=1), [("fp32", False), ("bf16", False)], arrived.append)
    assert arrived == reports and [r["precision"] for r in reports] == ["fp32", "bf16"]
    assert built == [False, True, True]
    assert framed == ["plain", "variant"] * 6
    assert all(r["frames"] == 2 and len(r["eager_fp32_stages"]) == 7 for r in reports)


def _gpu_script(out: Path, parts: str) -> subprocess.CompletedProcess:
    """scripts/gpu_bench.sh as the GPU machine runs it (no ROS), on the CPU at a tiny size."""
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "CONFIG": "small", "HEIGHT": "64", "WIDTH": "128",
           "FRAMES": "1", "ROS": "off", "PARTS": parts, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(GPU_SCRIPT)], env=env, cwd=GPU_SCRIPT.parents[1], capture_output=True,
                          text=True, timeout=900)


def test_the_gpu_script_writes_a_report_per_part(tmp_path):
    # A GPU machine is lent rarely and briefly: the script must work the first time it meets one.
    done = _gpu_script(tmp_path, "1:0:400 2:0:400")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert [(r["batch"], r["compiled"], r["precision"], r["device"]) for r in reports] == [
        (1, False, "bf16", "cpu"), (2, False, "bf16", "cpu")]
    for report in reports:
        assert REQUIRED <= set(report) and report["config"] == "small"
        assert set(report["absent_stages"]) == set(ROS_STAGES)
    log = (tmp_path / "bench.log").read_text()
    assert log.count("== exit status 0 ") == 2
    assert any(line.startswith("python ") and " torch " in line for line in log.splitlines())


def test_the_gpu_script_fails_when_a_part_gets_no_time(tmp_path):
    done = _gpu_script(tmp_path, "1:0:5")
    assert done.returncode == 1
    assert "skipped: batch 1, compile 0 (no time left)" in (tmp_path / "bench.log").read_text()
    assert not (tmp_path / "bench.jsonl").exists()

"""`make demo` end to end, shortened: a drive bag played into the node, its outputs recorded and drawn."""
import re

import pytest
from PIL import Image

from efficientps_ros.cli import main

TOPICS = ("semantic", "instance", "panoptic", "overlay", "detections")


def test_the_demo_plays_a_drive_into_the_node_and_draws_what_it_recorded(ros_processes, tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--seconds", "1.2", "--rate", "2.5", "--size", "64x128", "--out", str(out)]
    result = ros_processes.run(module="efficientps_ros.cli", args=args, timeout=300)
    assert re.search(r"frames in:\s+3 played from", result.stdout), result.stdout
    counts = {}
    for topic in TOPICS:
        line = re.search(rf"frames out:\s+(\d+) on /camera/efficientps/{topic}\s+headers matching an input: "
                         rf"(\d+)/(\d+)", result.stdout)
        assert line, f"no report line for {topic}:\n{result.stdout}"
        got, matched, total = map(int, line.groups())
        assert got >= 1 and matched == total == got
        counts[topic] = got
    dropped = int(re.search(r"dropped:\s+(\d+) frames", result.stdout).group(1))
    assert dropped == 3 - counts["overlay"]
    for stage in ("model (network and fusion)", "receive to publish", "camera to overlay, end to end"):
        assert re.search(rf"{re.escape(stage)}.*\d+ ms", result.stdout), result.stdout
    panels = sorted((out / "panels").glob("frame_*.png"))
    assert len(panels) == counts["semantic"]
    assert Image.open(panels[0]).size == (4 * 128, 64)
    gif = Image.open(out / "overlay.gif")
    assert gif.n_frames == counts["overlay"] and gif.size == (128, 64)
    assert f"wrote the overlay over the drive to {out / 'overlay.gif'}" in result.stdout

    again = ros_processes.run(module="efficientps_ros.cli", args=args, timeout=300)
    assert "reusing the synthetic drive" in again.stdout


@pytest.mark.parametrize("option, value", [("--seconds", "inf"), ("--rate", "inf"), ("--seconds", "nan")])
def test_the_demo_refuses_a_drive_that_never_ends_before_it_makes_anything(option, value, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "64x128", option, value, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"efficientps demo: {option} must be a finite number above 0 (got {value})\n"
    assert not out.exists()

"""`make demo` end to end, shortened: node process, synthetic camera, every output."""
import re

from PIL import Image

TOPICS = ("semantic", "instance", "panoptic", "overlay", "detections")


def test_demo_receives_every_output_and_writes_the_last_frame(ros_processes, tmp_path):
    out = tmp_path / "demo"
    result = ros_processes.run(
        module="efficientps_ros.cli",
        args=["demo", "--frames", "4", "--height", "128", "--width", "256", "--out", str(out)],
        timeout=240,
    )
    for topic in TOPICS:
        line = re.search(rf"/camera/efficientps/{topic}\s+(\d+) msgs.*headers match inputs: (\w+)", result.stdout)
        assert line, f"no report line for {topic}:\n{result.stdout}"
        assert int(line.group(1)) >= 1 and line.group(2) == "True"
    assert re.search(r"label_info\s+20 classes", result.stdout), result.stdout
    counts = re.search(r"instances per frame: \[([\d, ]+)\]", result.stdout)
    assert counts and sum(int(c) for c in counts.group(1).split(",")) > 0, result.stdout
    assert Image.open(out / "input_overlay_instances.png").size == (768, 128)
    assert Image.open(out / "semantic.png").size == (256, 128)
    assert Image.open(out / "instance.png").size == (256, 128)

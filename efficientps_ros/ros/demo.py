"""`make demo`: a synthetic drive, played into the node as a recorded drive would be.

The demo makes (or reuses) a drive bag, starts the node with use_sim_time,
plays the bag into it with `bag play --clock`, records what it publishes with
`bag record`, and then reads the recording: frames in and out, dropped
frames and latency per stage, PNG panels (input | semantic | instances |
panoptic) of every frame, and an animated GIF of the overlay over the drive.
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from ..model.config import CITYSCAPES_CLASSES
from ..visualize import class_palette, instance_shades
from .bag.source import BagSource
from .bag.synth import DriveOptions, check_drive, synth_bag
from .camera import output_topics
from .image_codec import image_to_array, to_rgb8
from .middleware import FASTDDS_BUILTIN_TRANSPORTS

CAMERA = "/camera/image_raw"
OUTPUTS = output_topics(CAMERA, "efficientps")
START_TIMEOUT_S = 180.0
# After the last frame is played, the node still has it to process.
DRAIN_S = 3.0
# Beyond the drive's own length: up to 30 s waiting for subscribers, and slack.
PLAY_MARGIN_S = 60.0


@dataclass(frozen=True)
class DemoOptions:
    """The synthetic drive to play (one raw camera), and where the demo writes."""

    drive: DriveOptions = DriveOptions()
    out: Path = Path("outputs/demo")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "efficientps_ros.cli", *args]


class Processes:
    """The demo's children, each logging to a file in the output folder; all stopped on exit."""

    def __init__(self, logs: Path):
        self._logs = logs
        self._children: list[subprocess.Popen] = []
        self._env = dict(os.environ, PYTHONUNBUFFERED="1", FASTDDS_BUILTIN_TRANSPORTS=FASTDDS_BUILTIN_TRANSPORTS)

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self._logs / f"{name}.log").open("w")
        child = subprocess.Popen(command, env=self._env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        self._children.append(child)
        return child

    def log(self, name: str) -> str:
        return (self._logs / f"{name}.log").read_text(errors="replace")

    @staticmethod
    def stop(child: subprocess.Popen, timeout: float = 20.0) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def stop_all(self) -> None:
        for child in reversed(self._children):
            self.stop(child)


def run_demo(options: DemoOptions = DemoOptions()) -> int:
    # Before the output folder is made: a drive refused leaves nothing behind.
    check_drive(options.drive)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    drive = _drive(options)
    recorded = out / "recorded"
    shutil.rmtree(recorded, ignore_errors=True)
    processes = Processes(out)
    try:
        node = processes.start("node", [sys.executable, "-m", "efficientps_ros.ros.node", "--ros-args",
                                        "-p", f"image_topics:=['{CAMERA}']", "-p", "use_sim_time:=true",
                                        # The paper's 2048 px is for 1024x2048 frames.
                                        "-p", "min_stuff_area:=256"])
        recorder = processes.start("record", _cli("bag", "record", str(recorded), "--all-outputs",
                                                  "--topics", CAMERA, "/diagnostics"))
        print(f"waiting for the node to load its model and publish its outputs (logs in {out}/) ...", flush=True)
        if not _wait_for_recording(processes, node):
            print(f"the node did not come up; see {out / 'node.log'}", file=sys.stderr)
            return 1
        print(f"playing {drive} into the node with bag play --clock ...", flush=True)
        started = time.monotonic()
        # Two subscribers on the camera: the node, and the recorder that times it.
        play = processes.start("play", _cli("bag", "play", str(drive), "--clock", "--wait-for-subscribers", "30",
                                            "--subscribers", "2"))
        try:
            play.wait(timeout=options.drive.seconds + PLAY_MARGIN_S)
        except subprocess.TimeoutExpired:
            print(f"bag play did not finish in time; stopped (see {out / 'play.log'})", file=sys.stderr)
        time.sleep(DRAIN_S)
        processes.stop(recorder)
        print(f"played in {time.monotonic() - started:.1f} s", flush=True)
    finally:
        processes.stop_all()
    return _report(drive, recorded, out, options.drive.rate)


def _drive(options: DemoOptions) -> Path:
    """The drive bag for these options, made once and reused after."""
    drive = options.drive
    path = options.out / f"drive_{drive.height}x{drive.width}_{drive.rate:g}hz_{drive.seconds:g}s"
    if (path / "metadata.yaml").exists():
        print(f"reusing the synthetic drive {path}")
        return path
    shutil.rmtree(path, ignore_errors=True)
    frames = synth_bag(path, drive)
    print(f"wrote a synthetic drive of {frames} frames to {path}")
    return path


def _wait_for_recording(processes: Processes, node: subprocess.Popen) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    wanted = [f"recording {topic} " for topic in OUTPUTS.values()]
    while time.monotonic() < deadline and node.poll() is None:
        log = processes.log("record")
        if all(line in log for line in wanted):
            time.sleep(1.0)  # until the node has matched the recorder's subscriptions too
            return True
        time.sleep(0.2)
    return False


@dataclass
class Recording:
    """What the recorder got, by header stamp (ns): messages and their arrival (bag) times."""

    inputs: dict[int, int]
    outputs: dict[str, dict[int, tuple[int, object]]]
    diagnostics: DiagnosticArray | None


def _read_recording(path: Path) -> Recording:
    types = {"semantic": Image, "instance": Image, "panoptic": Image, "overlay": Image,
             "detections": Detection2DArray}
    topics = {OUTPUTS[name]: name for name in types}
    recording = Recording({}, {name: {} for name in types}, None)
    with BagSource(path) as bag:
        for message in bag.messages():
            if message.topic == CAMERA:
                stamp = _stamp_of(bag.decode(message, Image))
                recording.inputs[stamp] = message.timestamp
            elif message.topic in topics:
                name = topics[message.topic]
                decoded = bag.decode(message, types[name])
                recording.outputs[name][_stamp_of(decoded)] = (message.timestamp, decoded)
            elif message.topic == "/diagnostics":
                recording.diagnostics = bag.decode(message, DiagnosticArray)
    return recording


def _stamp_of(message) -> int:
    return message.header.stamp.sec * 10**9 + message.header.stamp.nanosec


def _report(drive: Path, recorded: Path, out: Path, rate: float) -> int:
    with BagSource(drive) as bag:
        frames = {_stamp_of(bag.decode(m, Image)): m for m in bag.messages({CAMERA})}
        images = {s: to_rgb8(bag.decode(m, Image)) for s, m in frames.items()}
    recording = _read_recording(recorded)
    print(f"\nframes in:  {len(images)} played from {drive} ({rate:g} Hz)")
    for name, got in recording.outputs.items():
        matched = sum(stamp in images for stamp in got)
        print(f"frames out: {len(got):3d} on {OUTPUTS[name]:34s} headers matching an input: {matched}/{len(got)}")
    overlays = recording.outputs["overlay"]
    print(f"dropped:    {len(images) - len(overlays)} frames (the node keeps only the newest frame when busy)")
    _print_latencies(recording)
    written = _write_panels(images, recording, out)
    gif = _write_gif(images, overlays, out, rate)
    print(f"\nwrote {written} panels (input | semantic | instances | panoptic) to {out}/panels/"
          f"\nwrote the overlay over the drive to {gif}\nrecording in {recorded}, logs in {out}/")
    ok = bool(overlays) and all(stamp in images for got in recording.outputs.values() for stamp in got)
    return 0 if ok else 1


def _print_latencies(recording: Recording) -> None:
    ends = [arrived - recording.inputs[stamp] for stamp, (arrived, _) in recording.outputs["overlay"].items()
            if stamp in recording.inputs]
    print("latency per stage (median / p95):")
    values = _camera_values(recording.diagnostics)
    if values:
        print(f"  model (network and fusion), in the node      {values['model_time_median_ms']:>7s} ms")
        print(f"  receive to publish, in the node              {values['latency_median_ms']:>7s} / "
              f"{values['latency_p95_ms']} ms")
        print(f"  the node's own count (last report): {values['frames_received']} received, "
              f"{values['frames_published']} published, {values['frames_dropped']} dropped, "
              f"{values['frames_lost_in_transport']} lost in transport")
    if ends:
        print(f"  camera to overlay, end to end at the recorder {statistics.median(ends) / 1e6:>6.0f} / "
              f"{np.percentile(ends, 95) / 1e6:.0f} ms")


def _camera_values(diagnostics: DiagnosticArray | None) -> dict[str, str]:
    if diagnostics is None:
        return {}
    for status in diagnostics.status:
        if status.name.endswith(f"camera {CAMERA}"):
            return {kv.key: kv.value for kv in status.values}
    return {}


def _write_panels(images: dict[int, np.ndarray], recording: Recording, out: Path) -> int:
    folder = out / "panels"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    palette = class_palette(CITYSCAPES_CLASSES)
    semantic, instance = recording.outputs["semantic"], recording.outputs["instance"]
    written = 0
    for index, stamp in enumerate(sorted(images)):
        if stamp not in semantic or stamp not in instance:
            continue
        labels = np.ascontiguousarray(image_to_array(semantic[stamp][1]))
        ids = np.ascontiguousarray(image_to_array(instance[stamp][1]))
        image = images[stamp]
        panel = np.concatenate([image, palette[labels], instance_view(image, ids), panoptic_view(labels, ids, palette)],
                               axis=1)
        PILImage.fromarray(panel).save(folder / f"frame_{index:04d}.png")
        written += 1
    return written


def instance_view(image: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Each instance in its own bright colour over a dimmed grey input."""
    grey = (image.mean(axis=2) // 2).astype(np.uint8)
    view = np.repeat(grey[..., None], 3, axis=2)
    palette = np.random.default_rng(0).integers(64, 256, (int(instance.max()) + 1, 3), dtype=np.uint8)
    things = instance > 0
    view[things] = palette[instance[things]]
    return view


def panoptic_view(semantic: np.ndarray, instance: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class colours, each instance in its own shade of its class colour, as the overlay paints them."""
    view = palette[semantic]
    things = instance > 0
    view[things] = instance_shades(view[things], instance[things])
    return view


def _write_gif(images: dict[int, np.ndarray], overlays: dict, out: Path, rate: float) -> Path:
    """The overlay of every frame that got one, at the drive's own rate."""
    path = out / "overlay.gif"
    frames = [PILImage.fromarray(image_to_array(overlays[s][1])) for s in sorted(images) if s in overlays]
    if frames:
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / rate), loop=0)
    return path

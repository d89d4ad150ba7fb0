"""The inference pipeline: bad frames and out-of-memory batches are skipped, the rest goes on.

The real small predictor runs; the outputs are recorded instead of published.
"""
import threading

import numpy as np
import pytest
import torch
from std_msgs.msg import Header

from efficientps_ros.predictor import Predictor
from efficientps_ros.ros.diagnostics import CameraStats
from efficientps_ros.ros.frame_slots import Frame
from efficientps_ros.ros.image_codec import array_to_image
from efficientps_ros.ros.params import NodeSettings
from efficientps_ros.ros.pipeline import PerceptionPipeline, decode


class RecordedOutputs:
    """Stands in for CameraOutputs: keeps what would have been published."""

    def __init__(self):
        self.sent = []

    def wanted(self, settings):
        return ["semantic"]

    def build(self, outputs, result, rgb, header, settings, painter):
        return {name: (result, rgb.shape, header.frame_id) for name in outputs}

    def send(self, built):
        self.sent.append(built)


class FailingOnce:
    """The real predictor, except that its first batch runs out of memory."""

    def __init__(self, predictor: Predictor):
        self._predictor = predictor
        self.device = predictor.device
        self.config = predictor.config
        self.calls = 0

    def predict(self, images):
        self.calls += 1
        if self.calls == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self._predictor.predict(images)


@pytest.fixture(scope="module")
def predictor():
    return Predictor("small", device="cpu")


def frame(camera: str, height: int = 48, width: int = 64, encoding: str = "rgb8") -> Frame:
    message = array_to_image(np.zeros((height, width, 3), np.uint8), "rgb8", Header(frame_id=camera))
    message.encoding = encoding
    return Frame(camera, message, received=0.0)


@pytest.fixture(params=[False, True], ids=["inline", "output thread"])
def overlap(request):
    return request.param


def make_pipeline(predictor, overlap=False, **settings):
    cameras = ("/a", "/b")
    outputs = {camera: RecordedOutputs() for camera in cameras}
    stats = {camera: CameraStats() for camera in cameras}
    logged = []
    pipeline = PerceptionPipeline(
        predictor, NodeSettings.from_values(settings), outputs, stats, logged.append, overlap_outputs=overlap
    )
    return pipeline, outputs, stats, logged


def processed(pipeline, frames):
    """`process`, and then whatever the output thread still has to send."""
    pipeline.process(frames)
    assert pipeline.drain(30.0)


def test_an_out_of_memory_batch_is_skipped_and_the_next_one_published(predictor, overlap):
    pipeline, outputs, stats, logged = make_pipeline(FailingOnce(predictor), overlap)
    processed(pipeline, [frame("/a")])
    assert outputs["/a"].sent == []
    assert stats["/a"].snapshot().errors == 1
    assert logged == ["camera /a: frame skipped, out of memory on cpu"]
    processed(pipeline, [frame("/a")])
    assert len(outputs["/a"].sent) == 1
    assert stats["/a"].snapshot().published == 1


def test_a_bad_frame_does_not_hold_back_the_other_camera_in_its_batch(predictor, overlap):
    pipeline, outputs, stats, logged = make_pipeline(predictor, overlap)
    processed(pipeline, [frame("/a", encoding="yuv9"), frame("/b")])
    assert outputs["/a"].sent == [] and len(outputs["/b"].sent) == 1
    assert "yuv9" in stats["/a"].snapshot().last_error
    assert len(logged) == 1 and logged[0].startswith("camera /a: frame skipped, bad input:")


def test_the_same_bad_input_is_logged_once_but_counted_every_time(predictor):
    pipeline, _, stats, logged = make_pipeline(predictor)
    for _ in range(3):
        processed(pipeline, [frame("/a", encoding="yuv9")])
    assert len(logged) == 1
    assert stats["/a"].snapshot().errors == 3


def test_each_camera_gets_its_own_result_at_its_own_size(predictor, overlap):
    pipeline, outputs, _, _ = make_pipeline(predictor, overlap)
    processed(pipeline, [frame("/a", 48, 64), frame("/b", 32, 96)])
    (result_a, shape_a, frame_a), = outputs["/a"].sent[0].values()
    (result_b, shape_b, frame_b), = outputs["/b"].sent[0].values()
    assert result_a.semantic.shape == (48, 64) and shape_a == (48, 64, 3) and frame_a == "/a"
    assert result_b.semantic.shape == (32, 96) and shape_b == (32, 96, 3) and frame_b == "/b"


def test_decode_refuses_images_above_the_pixel_limit_before_reading_them():
    message = frame("/a", 48, 64).message
    with pytest.raises(ValueError, match="exceeds max_image_pixels"):
        decode(message, "raw", max_pixels=1000)
    assert decode(message, "raw", max_pixels=48 * 64).shape == (48, 64, 3)


def test_the_pixel_limit_counts_the_padded_area_the_model_sees(predictor):
    # 40x100 is 4,000 pixels; the small model pads it to 64x128, 8,192.
    pipeline, outputs, stats, logged = make_pipeline(predictor, max_image_pixels=5000)
    processed(pipeline, [frame("/a", 40, 100)])
    assert outputs["/a"].sent == [] and stats["/a"].snapshot().errors == 1
    assert "padded to" in logged[0] and "max_image_pixels (5000)" in logged[0]
    pipeline, outputs, _, _ = make_pipeline(predictor, max_image_pixels=64 * 128)
    processed(pipeline, [frame("/a", 40, 100)])
    assert len(outputs["/a"].sent) == 1


class ClosedDuringBatch:
    """The real predictor, except that the pipeline is closed (deactivated) while the batch runs."""

    def __init__(self, predictor: Predictor, fail: bool = False):
        self._predictor = predictor
        self.device = predictor.device
        self.config = predictor.config
        self.fail = fail
        self.pipeline = None

    def predict(self, images):
        self.pipeline.close()
        if self.fail:
            raise RuntimeError("the model was freed under the batch")
        return self._predictor.predict(images)


@pytest.mark.parametrize("fail", [False, True], ids=["result", "failure"])
def test_a_batch_in_the_model_when_closed_is_dropped_without_a_word(predictor, fail, overlap):
    closing = ClosedDuringBatch(predictor, fail)
    pipeline, outputs, stats, logged = make_pipeline(closing, overlap)
    closing.pipeline = pipeline
    processed(pipeline, [frame("/a")])
    assert outputs["/a"].sent == []
    assert logged == [] and stats["/a"].snapshot().errors == 0
    processed(pipeline, [frame("/a", encoding="yuv9")])
    assert logged == [], "a closed pipeline reports nothing"


class HeldOutputs(RecordedOutputs):
    """Sends only once `release` is set, as a slow subscriber or a large frame would hold them."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()
        self.sending = threading.Event()

    def send(self, built):
        self.sending.set()
        assert self.release.wait(30.0)
        super().send(built)


def pipeline_held_in_its_first_send(predictor):
    """A pipeline with the output thread, its first batch of camera /a held in its send."""
    pipeline, outputs, stats, logged = make_pipeline(predictor, overlap=True)
    held = outputs["/a"] = HeldOutputs()
    pipeline.process([frame("/a")])
    assert held.sending.wait(30.0)
    return pipeline, held, stats, logged


def test_with_the_output_thread_the_next_batch_is_predicted_while_one_is_sent(predictor):
    pipeline, held, stats, _ = pipeline_held_in_its_first_send(predictor)
    # The first batch is held in its send; the second is predicted meanwhile and waits its turn.
    pipeline.process([frame("/a", 32, 32)])
    third = threading.Thread(target=pipeline.process, args=([frame("/a", 16, 16)],))
    third.start()
    third.join(2.0)
    assert third.is_alive(), "a third batch went past the one waiting: outputs could pile up"
    assert held.sent == []
    held.release.set()
    third.join(30.0)
    assert pipeline.drain(30.0)
    assert [built["semantic"][1] for built in held.sent] == [(48, 64, 3), (32, 32, 3), (16, 16, 3)]
    assert stats["/a"].snapshot().published == 3


def test_closing_drops_the_batch_waiting_for_the_output_thread(predictor):
    pipeline, held, stats, logged = pipeline_held_in_its_first_send(predictor)
    pipeline.process([frame("/a", 32, 32)])
    closing = threading.Thread(target=pipeline.close)
    closing.start()
    closing.join(0.5)
    assert closing.is_alive(), "close returned while a send was in progress"
    held.release.set()
    closing.join(30.0)
    assert not closing.is_alive()
    processed(pipeline, [frame("/a", 16, 16)])
    assert [built["semantic"][1] for built in held.sent] == [(48, 64, 3)]
    assert logged == [] and stats["/a"].snapshot().errors == 0


class OverlayOutputs(RecordedOutputs):
    """Wants the overlay, and records the overlay the predictor painted."""

    def wanted(self, settings):
        return ["overlay"]

    def build(self, outputs, result, rgb, header, settings, painter):
        return {"overlay": (result.overlay_alpha, result.overlay is not None)}


@pytest.mark.parametrize("device_overlay", [False, True])
def test_the_predictor_paints_the_overlay_where_asked_at_the_current_alpha(predictor, device_overlay):
    outputs = {"/a": OverlayOutputs()}
    pipeline = PerceptionPipeline(predictor, NodeSettings.from_values({"overlay_alpha": 0.3}), outputs,
                                  {"/a": CameraStats()}, print, device_overlay=device_overlay)
    try:
        processed(pipeline, [frame("/a")])
        pipeline.settings = NodeSettings.from_values({"overlay_alpha": 0.7})
        processed(pipeline, [frame("/a")])
        sent = [built["overlay"] for built in outputs["/a"].sent]
        assert sent == ([(0.3, True), (0.7, True)] if device_overlay else [(None, False), (None, False)])
    finally:
        predictor.set_overlay(None)

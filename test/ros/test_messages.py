"""PanopticResult -> messages, on hand-made results: encodings, data, header, boxes, class table.

The images come serialised, as they are published; they are read back as a subscriber reads them.
"""
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseWithCovariance
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from efficientps_ros.model.config import load_config
from efficientps_ros.result import Instance, PanopticResult
from efficientps_ros.ros import messages
from efficientps_ros.visualize import PanopticPainter

CONFIG = load_config("small")
CAR = next(c for c in CONFIG.classes if c.name == "car")
PERSON = next(c for c in CONFIG.classes if c.name == "person")
ROAD = next(c for c in CONFIG.classes if c.name == "road")
HEADER = Header(stamp=Time(sec=1712345678, nanosec=123456789), frame_id="front_camera")


def street(height: int = 30, width: int = 50) -> PanopticResult:
    """Road with a car and a person, each with the box around its pixels, and void."""
    semantic = np.full((height, width), ROAD.train_id, np.uint8)
    semantic[0] = 255
    instance = np.zeros((height, width), np.uint16)
    instance[10:20, 5:21] = 1
    instance[4:26, 30:37] = 2
    semantic[instance == 1] = CAR.train_id
    semantic[instance == 2] = PERSON.train_id
    panoptic = np.full((height, width), ROAD.label_id, np.int32)
    panoptic[0] = 0
    panoptic[instance == 1] = CAR.label_id * 1000 + 1
    panoptic[instance == 2] = PERSON.label_id * 1000 + 2
    instances = [
        Instance(1, CAR.train_id, "car", 0.91, (5.0, 10.0, 21.0, 20.0)),
        Instance(2, PERSON.train_id, "person", 0.75, (30.0, 4.0, 37.0, 26.0)),
    ]
    return PanopticResult(semantic, instance, panoptic, instances, model_time=0.1)


def pixels(image, dtype) -> np.ndarray:
    return np.frombuffer(bytes(image.data), dtype).reshape(image.height, image.width)


def assert_same_header(header: Header) -> None:
    assert header.stamp.sec == HEADER.stamp.sec and header.stamp.nanosec == HEADER.stamp.nanosec
    assert header.frame_id == HEADER.frame_id


@pytest.mark.parametrize(
    "build, encoding, dtype, field",
    [
        (messages.semantic_image, "mono8", np.uint8, "semantic"),
        (messages.instance_image, "mono16", np.uint16, "instance"),
        (messages.panoptic_image, "32SC1", np.int32, "panoptic"),
    ],
)
def test_label_images_carry_the_maps_exactly(build, encoding, dtype, field):
    result = street()
    image = deserialize_message(build(result, HEADER), Image)
    assert image.encoding == encoding
    assert (image.height, image.width) == (30, 50)
    assert image.step == 50 * np.dtype(dtype).itemsize
    assert image.is_bigendian == 0
    assert_same_header(image.header)
    assert np.array_equal(pixels(image, dtype), getattr(result, field))


def test_instance_ids_above_255_survive():
    result = street()
    result.instance[result.instance == 2] = 300
    assert pixels(deserialize_message(messages.instance_image(result, HEADER), Image), np.uint16).max() == 300


def test_overlay_is_rgb8_of_the_painter_blend():
    result = street()
    rgb = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    painter = PanopticPainter(CONFIG.classes)
    image = deserialize_message(messages.overlay_image(rgb, result, painter, 0.4, HEADER), Image)
    assert image.encoding == "rgb8" and image.step == 150
    assert_same_header(image.header)
    expected = painter.overlay(rgb, result, 0.4)
    assert np.array_equal(np.frombuffer(bytes(image.data), np.uint8).reshape(30, 50, 3), expected)


def test_an_overlay_the_predictor_painted_at_the_same_alpha_is_sent_as_it_is():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    painter = PanopticPainter(CONFIG.classes)
    result = street()
    result.overlay, result.overlay_alpha = np.full((30, 50, 3), 7, np.uint8), 0.4

    def sent(alpha):
        image = deserialize_message(messages.overlay_image(rgb, result, painter, alpha, HEADER), Image)
        return np.frombuffer(bytes(image.data), np.uint8).reshape(30, 50, 3)

    assert (sent(0.4) == 7).all()
    # Painted at another alpha (a live parameter changed since): painted again here.
    assert np.array_equal(sent(0.6), painter.overlay(rgb, result, 0.6))


def detections(result: PanopticResult) -> Detection2DArray:
    return deserialize_message(messages.detection_array(result, HEADER), Detection2DArray)


def test_one_detection_per_instance_with_id_class_and_score():
    array = detections(street())
    assert_same_header(array.header)
    assert [d.id for d in array.detections] == ["1", "2"]
    for detection, name, score in zip(array.detections, ("car", "person"), (0.91, 0.75)):
        assert_same_header(detection.header)
        assert len(detection.results) == 1
        assert detection.results[0].hypothesis.class_id == name
        assert detection.results[0].hypothesis.score == pytest.approx(score)
        assert detection.results[0].pose == PoseWithCovariance()
        assert detection.bbox.center.theta == 0.0


def box_of(detection) -> tuple[float, float, float, float]:
    bbox = detection.bbox
    cx, cy = bbox.center.position.x, bbox.center.position.y
    return cx - bbox.size_x / 2, cy - bbox.size_y / 2, cx + bbox.size_x / 2, cy + bbox.size_y / 2


def test_boxes_are_the_instances_boxes_as_center_and_size():
    for detection, inst in zip(detections(street()).detections, street().instances):
        assert box_of(detection) == pytest.approx(inst.box)
    car = detections(street()).detections[0]
    assert (car.bbox.center.position.x, car.bbox.center.position.y) == (13.0, 15.0)
    assert (car.bbox.size_x, car.bbox.size_y) == (16.0, 10.0)


def test_no_instances_gives_an_empty_detection_array():
    result = street()
    result = PanopticResult(result.semantic, np.zeros_like(result.instance), result.panoptic, [])
    array = detections(result)
    assert array.detections == [] and array.header.frame_id == "front_camera"


def test_label_info_lists_every_class_by_its_semantic_value_and_void():
    info = messages.label_info(CONFIG.classes, 0.5, HEADER)
    assert_same_header(info.header)
    table = {c.class_id: c.class_name for c in info.class_map}
    assert table == {**{c.train_id: c.name for c in CONFIG.classes}, 255: "void"}
    assert info.threshold == pytest.approx(0.5)

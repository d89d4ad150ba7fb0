"""A camera's topic names: outputs beside the resolved input, for raw and compressed transports."""
from efficientps_ros.ros.camera import camera_topic, input_topic, output_topics
from efficientps_ros.ros.params import OUTPUTS


def test_outputs_sit_beside_the_resolved_input_under_the_output_namespace():
    topics = output_topics("/car1/front/image_raw", "efficientps")
    assert set(topics) == {*OUTPUTS, "label_info"}
    assert topics["semantic"] == "/car1/front/efficientps/semantic"
    assert topics["label_info"] == "/car1/front/efficientps/label_info"
    assert output_topics("/image", "seg/v2")["overlay"] == "/seg/v2/overlay"


def test_a_compressed_subscription_names_the_camera_without_its_suffix():
    assert camera_topic("/cam/image_raw/compressed", "compressed") == "/cam/image_raw"
    assert output_topics("/cam/image_raw/compressed", "efficientps", "compressed")["detections"] == (
        "/cam/efficientps/detections")
    # A raw topic that happens to end in /compressed is a camera of its own.
    assert camera_topic("/cam/compressed", "raw") == "/cam/compressed"
    # Remapped away from the suffix, the remapped name is the camera.
    assert camera_topic("/elsewhere", "compressed") == "/elsewhere"


def test_the_subscribed_topic_of_each_transport():
    assert input_topic("camera/image_raw", "compressed") == "camera/image_raw/compressed"
    assert input_topic("camera/image_raw", "raw") == "camera/image_raw"

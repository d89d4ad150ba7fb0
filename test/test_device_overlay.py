"""The overlay painted with the maps, in torch: the numpy painter's output, bit for bit."""
import numpy as np
import pytest
import torch

from efficientps_ros.data.synthetic import street_scene
from efficientps_ros.device_overlay import DeviceOverlay
from efficientps_ros.model.config import load_config
from efficientps_ros.predictor import Predictor
from efficientps_ros.result import Instance, PanopticResult
from efficientps_ros.visualize import PanopticPainter

CONFIG = load_config("small")
THINGS = [c for c in CONFIG.classes if c.is_thing]


def crowded(height=40, width=60, count=12, seed=0) -> PanopticResult:
    """Stuff of every class, void, and `count` instances of several thing classes."""
    rng = np.random.default_rng(seed)
    semantic = rng.choice([c.train_id for c in CONFIG.classes] + [255], (height, width)).astype(np.uint8)
    instance = np.zeros((height, width), np.uint16)
    instances = []
    for k in range(1, count + 1):
        info = THINGS[k % len(THINGS)]
        y, x = rng.integers(0, height - 5), rng.integers(0, width - 5)
        instance[y : y + 5, x : x + 5] = k
        instances.append(Instance(k, info.train_id, info.name, 0.9, (x, y, x + 5, y + 5)))
    for inst in instances:
        semantic[instance == inst.id] = inst.class_id
    return PanopticResult(semantic, instance, np.zeros((height, width), np.int32), instances)


@pytest.mark.parametrize("alpha", [0.0, 0.35, 0.5, 1.0])
def test_paint_equals_the_numpy_painter(alpha):
    result = crowded()
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    painter = DeviceOverlay(CONFIG.classes, alpha, max_instances=20, device=torch.device("cpu"))
    class_ids = torch.tensor([inst.class_id for inst in result.instances])
    painted = painter.paint(torch.from_numpy(image), torch.from_numpy(result.semantic),
                            torch.from_numpy(result.instance.astype(np.int16)), class_ids)
    assert painted.dtype == torch.uint8 and painted.shape == (40, 60, 3)
    np.testing.assert_array_equal(painted.numpy(), PanopticPainter(CONFIG.classes).overlay(image, result, alpha))


def test_more_instances_than_it_was_made_for_are_refused():
    painter = DeviceOverlay(CONFIG.classes, 0.5, max_instances=2, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="3 instances, more than the 2"):
        painter.paint(torch.zeros(4, 4, 3, dtype=torch.uint8), torch.zeros(4, 4, dtype=torch.uint8),
                      torch.zeros(4, 4, dtype=torch.int16), torch.tensor([11, 11, 13]))


@pytest.mark.parametrize("packed_copy", [False, True], ids=["copies", "one packed copy"])
@pytest.mark.parametrize("input_size", [None, (128, 256)], ids=["own size", "resized"])
def test_the_predictor_paints_the_overlay_the_node_would(packed_copy, input_size):
    predictor = Predictor("small", device="cpu", input_size=input_size)
    predictor.packed_copy = packed_copy
    images = [street_scene(192, 320, seed=s).image for s in (21, 22)]
    predictor.set_overlay(0.4)
    results = predictor.predict(images)
    assert sum(len(r.instances) for r in results) > 0
    painter = PanopticPainter(CONFIG.classes)
    for image, result in zip(images, results):
        assert result.overlay_alpha == 0.4
        np.testing.assert_array_equal(result.overlay, painter.overlay(image, result, 0.4))
    predictor.set_overlay(None)
    assert predictor.predict(images[0]).overlay is None

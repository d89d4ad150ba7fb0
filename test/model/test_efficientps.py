"""The assembled network at real camera sizes, in training and in inference."""
from dataclasses import replace

import pytest
import torch

from efficientps_ros.data.synthetic import street_scene
from efficientps_ros.data.targets import scene_target
from efficientps_ros.model import build_model, load_config
from efficientps_ros.model.efficientps import parameter_counts

LOSSES = {"loss_semantic", "loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box", "loss_mask"}


def _padded(size, divisor=32):
    return tuple(s + (-s % divisor) for s in size)


def _targets(size, seed):
    """Ground truth of a synthetic street scene, padded like the network input."""
    return scene_target(street_scene(*size, seed=seed), load_config("small"), _padded(size))


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.mark.parametrize(
    "name, size",
    [("small", (512, 1024)), ("small", (1024, 2048)), ("small", (375, 1242)), ("b5_cityscapes", (512, 1024))],
)
def test_training_step_gives_every_loss_with_gradients(name, size):
    torch.manual_seed(0)
    model = build_model(load_config(name)).train()
    images = torch.randn(1, 3, *_padded(size))
    losses = model(images, [size], [_targets(size, seed=sum(size))])
    assert set(losses) == LOSSES
    assert all(torch.isfinite(v) for v in losses.values())
    total = sum(losses.values())
    total.backward()
    assert model.backbone.conv_stem.weight.grad.abs().sum() > 0
    assert model.instance_head.mask_head.conv_logits.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name, size",
    [("small", (1024, 2048)), ("small", (375, 1242)), ("b5_cityscapes", (512, 1024)), ("b5_cityscapes", (375, 1242))],
)
def test_inference_outputs(name, size):
    torch.manual_seed(0)
    config = load_config(name)
    config = replace(config, roi=replace(config.roi, score_threshold=0.0))
    model = build_model(config).eval()
    padded = _padded(size)
    with torch.inference_mode():
        out = model(torch.randn(2, 3, *padded), [size, size])
    assert out["semantic_logits"].shape == (2, config.num_classes, *padded)
    assert len(out["detections"]) == 2
    for detections in out["detections"]:
        k = len(detections["scores"])
        assert 0 < k <= config.roi.detections_per_image
        assert detections["boxes"].shape == (k, 4)
        assert detections["mask_logits"].shape == (k, 28, 28)
        assert (detections["boxes"][:, 2] <= size[1]).all() and (detections["boxes"][:, 3] <= size[0]).all()


def test_parameter_counts_per_module():
    counts = parameter_counts(build_model(load_config("small")))
    assert set(counts) == {"backbone", "fpn", "semantic_head", "instance_head", "total"}
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    # The small preset is for CPUs: a fraction of the paper's model.
    assert counts["total"] < 10_000_000

from dataclasses import replace

import pytest
import torch

from efficientps_ros.model.config import load_config
from efficientps_ros.model.instance_head import STRIDES, InstanceHead
from efficientps_ros.model.roi_heads import roi_features

SIZE = 64


@pytest.fixture(scope="module")
def b5_head() -> InstanceHead:
    return InstanceHead(load_config("b5_cityscapes"))


@pytest.mark.parametrize(
    "name, count", [("rpn_head", 593_935), ("bbox_head", 13_941_805), ("mask_head", 540_169)]
)
def test_b5_matches_the_authors_tensors(b5_head, official_shapes, shapes_of, name, count):
    module = getattr(b5_head, name)
    assert shapes_of(module) == official_shapes(f"{name}.")
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == count


def test_b5_state_dict_holds_only_the_three_heads(b5_head):
    prefixes = {key.split(".")[0] for key in b5_head.state_dict()}
    assert prefixes == {"rpn_head", "bbox_head", "mask_head"}


def _features(config, batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, config.fpn_channels, SIZE // s, SIZE // s, generator=generator).requires_grad_()
        for s in STRIDES
    ]


def _targets() -> list[dict[str, torch.Tensor]]:
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[0, 8:40, 8:40] = True
    masks[1, 30:60, 20:44] = True
    return [
        {"boxes": torch.tensor([[8.0, 8, 39, 39], [20, 30, 43, 59]]), "labels": torch.tensor([0, 5]), "masks": masks},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, SIZE, SIZE)},
    ]


def test_training_losses_are_finite_and_reach_every_parameter():
    torch.manual_seed(0)
    config = load_config("small")
    head = InstanceHead(config).train()
    features = _features(config)
    losses = head(features, [(SIZE, SIZE), (SIZE, SIZE - 8)], _targets())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box", "loss_mask"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    untouched = [name for name, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert untouched == []
    # Boxes this small are read from P4, where the RPN also sees its anchors.
    assert features[0].grad.abs().sum() > 0


def test_training_without_any_ground_truth():
    torch.manual_seed(0)
    config = load_config("small")
    head = InstanceHead(config).train()
    empty = _targets()[1]
    losses = head(_features(config), [(SIZE, SIZE)] * 2, [empty, empty])
    assert losses["loss_box"].item() == 0.0 and losses["loss_mask"].item() == 0.0
    assert torch.isfinite(losses["loss_cls"]) and torch.isfinite(losses["loss_rpn_cls"])
    sum(losses.values()).backward()


def test_inference_outputs_per_image():
    torch.manual_seed(0)
    config = load_config("small")
    # Untrained class scores sit near 1/9, under the authors' 0.5.
    config = replace(config, roi=replace(config.roi, score_threshold=0.05))
    head = InstanceHead(config).eval()
    features = [f.detach() for f in _features(config)]
    sizes = [(SIZE, SIZE), (48, 40)]
    with torch.no_grad():
        outputs = head(features, sizes)
    assert len(outputs) == 2
    for (height, width), out in zip(sizes, outputs):
        k = out["scores"].shape[0]
        assert 0 < k <= config.roi.detections_per_image
        assert out["boxes"].shape == (k, 4) and out["labels"].shape == (k,)
        assert out["mask_logits"].shape == (k, 28, 28)
        assert (out["scores"][:-1] >= out["scores"][1:]).all()
        assert (out["scores"] > config.roi.score_threshold).all()
        assert out["labels"].min() >= 0 and out["labels"].max() < config.num_things
        assert (out["boxes"][:, 0::2] <= width - 1).all() and (out["boxes"][:, 1::2] <= height - 1).all()
        assert (out["boxes"] >= 0).all()

    # The mask logits are the channel of each detection's own class.
    image = 1
    out = outputs[image]
    rois = torch.cat([torch.full((out["boxes"].shape[0], 1), float(image)), out["boxes"]], dim=1)
    with torch.no_grad():
        all_classes = head.mask_head(roi_features(features, STRIDES, rois, 14, config.roi))
    own = all_classes[torch.arange(rois.shape[0]), out["labels"] + 1]
    assert torch.allclose(out["mask_logits"], own, atol=1e-5)


def test_inference_with_no_detection():
    config = load_config("small")
    config = replace(config, roi=replace(config.roi, score_threshold=1.0))
    head = InstanceHead(config).eval()
    with torch.no_grad():
        (out,) = head([f[:1].detach() for f in _features(config)], [(SIZE, SIZE)])
    assert out["boxes"].shape == (0, 4) and out["mask_logits"].shape == (0, 28, 28)


def test_bad_inputs_are_named():
    config = load_config("small")
    head = InstanceHead(config)
    features = [f.detach() for f in _features(config)]
    with pytest.raises(ValueError, match="4 FPN levels"):
        head(features[:3], [(SIZE, SIZE)] * 2)
    with pytest.raises(ValueError, match=r"features\[2\] \(P16\)"):
        head(features[:2] + [features[2][:, :3]] + features[3:], [(SIZE, SIZE)] * 2)
    with pytest.raises(ValueError, match="image_sizes"):
        head(features, [(SIZE, SIZE)])
    bad = _targets()
    bad[0]["labels"] = torch.tensor([0, config.num_things])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        head(features, [(SIZE, SIZE)] * 2, bad)
    bad = _targets()
    del bad[1]["masks"]
    with pytest.raises(ValueError, match=r"targets\[1\]: missing \['masks'\]"):
        head(features, [(SIZE, SIZE)] * 2, bad)

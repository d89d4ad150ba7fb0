import math
from dataclasses import replace

import pytest
import torch

from efficientps_ros.model.config import VOID_TRAIN_ID, load_config
from efficientps_ros.model.fusion import (
    fuse_logits,
    panoptic_fusion,
    paste_masks,
    select_detections,
)

SIZE = 64
ROAD = 0


def _config(**fusion):
    config = load_config("small")
    return replace(config, fusion=replace(config.fusion, **{"min_stuff_area": 0, **fusion}))


def _road_logits(config) -> torch.Tensor:
    """Every class at 0 except road at 1: road wins wherever nothing else is set."""
    logits = torch.zeros(config.num_classes, SIZE, SIZE)
    logits[ROAD] = 1.0
    return logits


def _detections(boxes, scores, labels, mask_values) -> dict[str, torch.Tensor]:
    """Detections whose 28x28 mask logits are each one constant."""
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.long),
        "mask_logits": torch.tensor(mask_values, dtype=torch.float32).reshape(-1, 1, 1).expand(-1, 28, 28).clone(),
    }


def _authors_paste(mask: torch.Tensor, box: list[float], height: int, width: int) -> torch.Tensor:
    """The authors' inverse RoI sampling, pixel by pixel: pixel centre i + 0.5 lands at
    M * (i + 0.5 - y1) / (y2 - y1) in the mask, read bilinearly between the cells whose
    centres (k + 0.5) surround it, cells beyond the grid counting as zero."""
    grid = mask.shape[0]
    out = torch.zeros(height, width)
    for i in range(height):
        sy = grid * (i + 0.5 - box[1]) / (box[3] - box[1]) - 0.5
        for j in range(width):
            sx = grid * (j + 0.5 - box[0]) / (box[2] - box[0]) - 0.5
            low_y, low_x = math.floor(sy), math.floor(sx)
            for cell_y, weight_y in ((low_y, 1 - (sy - low_y)), (low_y + 1, sy - low_y)):
                for cell_x, weight_x in ((low_x, 1 - (sx - low_x)), (low_x + 1, sx - low_x)):
                    if 0 <= cell_y < grid and 0 <= cell_x < grid:
                        out[i, j] += weight_y * weight_x * mask[cell_y, cell_x]
    return out


def test_paste_matches_the_authors_inverse_roi_sampling():
    torch.manual_seed(0)
    masks = torch.randn(2, 6, 6)
    boxes = [[2.3, 1.7, 9.6, 10.2], [-3.0, 5.0, 20.0, 8.0]]
    pasted = paste_masks(masks, torch.tensor(boxes), (12, 16))
    for mask, box, result in zip(masks, boxes, pasted):
        assert torch.allclose(result, _authors_paste(mask, box, 12, 16), atol=1e-5)


def test_selection_thresholds_scores_then_nms_within_class_then_caps():
    box = [10.0, 10, 40, 40]
    detections = _detections(
        [box, [12, 10, 42, 40], box, [50, 50, 60, 60], [45, 0, 60, 10]],
        [0.9, 0.8, 0.85, 0.5, 0.6],
        [0, 0, 1, 2, 2],
        [1.0] * 5,
    )
    args = detections["boxes"], detections["scores"], detections["labels"]
    # 1 is suppressed by 0 (same class); 2 is another class; 3 is not above 0.5.
    assert select_detections(*args, _config()).tolist() == [0, 2, 4]
    assert select_detections(*args, _config(max_instances=2)).tolist() == [0, 2]
    assert select_detections(*args, _config(score_threshold=0.86)).tolist() == [0]


def test_an_instance_mostly_on_a_kept_one_is_dropped():
    config = _config()
    # Boxes 28 wide paste a mask of exactly their 28x28 pixels.
    detections = _detections(
        [[0, 0, 28, 28], [10, 0, 38, 28], [14, 0, 42, 28]],
        [0.9, 0.8, 0.7],
        [0, 1, 2],
        [5.0, 5.0, 5.0],
    )
    out = panoptic_fusion(_road_logits(config), detections, config)
    # The second lies 18/28 on the first: dropped. The third lies 14/28 = 0.5 on it,
    # not more: kept. It loses the shared columns to the higher-scoring first.
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])
    assert out.class_ids.tolist() == [config.num_stuff + 0, config.num_stuff + 2]
    assert (out.instance[:28, :28] == 1).all()
    assert (out.instance[:28, 28:42] == 2).all()
    assert (out.instance[:28, 42:] == 0).all() and (out.instance[28:] == 0).all()
    assert (out.semantic[:28, :28] == config.num_stuff).all()
    assert (out.semantic[:28, 28:42] == config.num_stuff + 2).all()
    assert (out.semantic[28:] == ROAD).all()


def test_a_small_stuff_class_becomes_void():
    config = _config()
    logits = _road_logits(config)
    logits[3, 20:30, 20:30] = 2.0  # 100 pixels of wall
    empty = _detections([], [], [], [])
    strict = panoptic_fusion(logits, empty, replace(config, fusion=replace(config.fusion, min_stuff_area=2048)))
    assert (strict.semantic[20:30, 20:30] == VOID_TRAIN_ID).all()
    assert (strict.semantic == ROAD).sum() == SIZE * SIZE - 100
    lenient = panoptic_fusion(logits, empty, replace(config, fusion=replace(config.fusion, min_stuff_area=50)))
    assert (lenient.semantic[20:30, 20:30] == 3).all()
    assert (lenient.instance == 0).all() and lenient.boxes.shape == (0, 4)


def test_thing_pixels_no_instance_claims_are_void():
    config = _config()
    car = config.num_stuff + 2
    logits = _road_logits(config)
    logits[car, 0:28, 0:56] = 2.0
    detections = _detections([[0, 0, 28, 28]], [0.9], [2], [5.0])
    out = panoptic_fusion(logits, detections, config)
    assert (out.semantic[:28, :28] == car).all() and (out.instance[:28, :28] == 1).all()
    assert (out.semantic[:28, 28:56] == VOID_TRAIN_ID).all() and (out.instance[:28, 28:] == 0).all()
    assert (out.semantic[28:] == ROAD).all()


def test_instance_ids_stay_dense_when_one_loses_all_pixels():
    config = _config()
    logits = _road_logits(config)
    logits[config.num_stuff + 1] = -10.0
    detections = _detections(
        [[0, 0, 28, 28], [28, 0, 56, 28], [0, 28, 28, 56]],
        [0.9, 0.8, 0.7],
        [0, 1, 2],
        # The second has an empty binary mask, which the overlap test keeps (0 of 0 pixels),
        # but its fused logit, about -0.002, loses to road everywhere.
        [5.0, -10.0, 5.0],
    )
    out = panoptic_fusion(logits, detections, config)
    assert sorted(out.instance.unique().tolist()) == [0, 1, 2]
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])
    assert out.boxes.tolist() == [[0, 0, 28, 28], [0, 28, 28, 56]]
    assert out.class_ids.tolist() == [config.num_stuff + 0, config.num_stuff + 2]
    assert (out.instance[28:56, :28] == 2).all() and (out.instance[:28, 28:56] == 0).all()


def test_far_pixels_with_only_negative_stuff_logits_go_to_the_first_instance():
    config = _config()
    logits = _road_logits(config)
    logits[:, 40:50, 40:50] = -1.0  # every class, road included
    detections = _detections([[0, 0, 28, 28], [0, 28, 28, 56]], [0.9, 0.8], [0, 1], [5.0, 5.0])
    out = panoptic_fusion(logits, detections, config)
    # Both fused logits are 0 there, above every stuff logit; the first instance wins the tie.
    assert (out.instance[40:50, 40:50] == 1).all()
    assert (out.instance[28:56, :28] == 2).all()


def test_fused_logit_combines_mask_and_semantic_logits():
    torch.manual_seed(0)
    pasted = torch.randn(1, 24, 24)
    class_logits = torch.randn(1, 24, 24)
    fused = fuse_logits(pasted, class_logits, torch.tensor([[10.0, 10.0, 20.0, 20.0]]), scale=4.0)
    # The authors cut the box as rows and columns floor(10 + 1) = 11 to round(20 - 1) = 19.
    inside = torch.zeros(24, 24, dtype=torch.bool)
    inside[11:20, 11:20] = True
    mla = 4.0 * pasted[0]
    mlb = torch.where(inside, class_logits[0], torch.zeros(()))
    expected = (mla.sigmoid() + mlb.sigmoid()) * (mla + mlb)
    assert torch.allclose(fused[0], expected, atol=1e-6)


def test_semantic_evidence_can_claim_pixels_the_mask_leaves_out():
    config = _config()
    person = config.num_stuff
    logits = _road_logits(config)
    logits[person, :28, :28] = 6.0
    # Mask logit -0.5 everywhere: MLA = -2. Inside the box cut (rows and columns 1..27)
    # the fused logit is (sigmoid(-2) + sigmoid(6)) * 4 = 4.47 > 1, outside it
    # (sigmoid(-2) + 0.5) * -2 < 0: row 0 and column 0 stay person-looking but unclaimed.
    out = panoptic_fusion(logits, _detections([[0, 0, 28, 28]], [0.9], [0], [-0.5]), config)
    assert (out.instance[1:28, 1:28] == 1).all() and (out.semantic[1:28, 1:28] == person).all()
    assert (out.instance[0, :28] == 0).all() and (out.semantic[0, :28] == VOID_TRAIN_ID).all()
    assert (out.semantic[:, 28:] == ROAD).all()


def test_outputs_have_the_documented_types():
    config = _config()
    out = panoptic_fusion(_road_logits(config), _detections([[0, 0, 28, 28]], [0.9], [0], [5.0]), config)
    assert out.semantic.dtype == torch.int64 and out.instance.dtype == torch.int64
    assert out.semantic.shape == out.instance.shape == (SIZE, SIZE)
    assert out.boxes.shape == (1, 4) and out.scores.shape == (1,) and out.class_ids.dtype == torch.int64


def test_bad_inputs_are_named():
    config = _config()
    detections = _detections([[0, 0, 28, 28]], [0.9], [0], [5.0])
    with pytest.raises(ValueError, match=r"semantic_logits: expected \[19, H, W\]"):
        panoptic_fusion(torch.zeros(5, SIZE, SIZE), detections, config)
    with pytest.raises(ValueError, match="missing \\['mask_logits'\\]"):
        panoptic_fusion(_road_logits(config), {k: v for k, v in detections.items() if k != "mask_logits"}, config)
    with pytest.raises(ValueError, match="labels"):
        panoptic_fusion(_road_logits(config), {**detections, "labels": torch.tensor([8])}, config)
    with pytest.raises(ValueError, match=r"detections\['boxes'\]"):
        panoptic_fusion(_road_logits(config), {**detections, "boxes": torch.zeros(2, 4)}, config)

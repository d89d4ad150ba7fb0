import math
from dataclasses import replace

import numpy as np
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
f32 = np.float32
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
    """The authors' `invert_roi_bbx` then `roi_sampling` (bilinear, zero padding), pixel by pixel,
    in their float32 operations: the image's edges in mask cells, `i0 = -M * y1 / h` and
    `i1 = M * (H - y1) / h` with the signed extent `h = y2 - y1`; pixel i read at
    `(i + 0.5) / H * (i1 - i0) + i0`, between the cells whose centres (k + 0.5) surround it."""
    grid = f32(mask.shape[0])
    x1, y1, x2, y2 = (f32(v) for v in box)
    i0, j0 = -grid * y1 / (y2 - y1), -grid * x1 / (x2 - x1)
    i1, j1 = grid * (f32(height) - y1) / (y2 - y1), grid * (f32(width) - x1) / (x2 - x1)
    out = torch.zeros(height, width)
    for i in range(height):
        sy = (f32(i) + f32(0.5)) / f32(height) * (i1 - i0) + i0
        for j in range(width):
            sx = (f32(j) + f32(0.5)) / f32(width) * (j1 - j0) + j0
            out[i, j] = _bilinear_zero_padded(mask, sy, sx)
    return out


def _bilinear_zero_padded(mask: torch.Tensor, sy: np.float32, sx: np.float32) -> float:
    # Their cell index and offset are computed in double, the offset stored as float32.
    low_y, low_x = math.floor(float(sy) - 0.5), math.floor(float(sx) - 0.5)
    dy, dx = f32(float(sy) - (low_y + 0.5)), f32(float(sx) - (low_x + 0.5))

    def cell(i: int, j: int) -> np.float32:
        inside = 0 <= i < mask.shape[0] and 0 <= j < mask.shape[1]
        return f32(mask[i, j].item()) if inside else f32(0)

    low = (f32(1) - dx) * cell(low_y, low_x) + dx * cell(low_y, low_x + 1)
    high = (f32(1) - dx) * cell(low_y + 1, low_x) + dx * cell(low_y + 1, low_x + 1)
    return float((f32(1) - dy) * low + dy * high)


@pytest.mark.parametrize(
    "box",
    [
        [2.3, 1.7, 9.6, 10.2],
        [-3.0, 5.0, 20.0, 8.0],  # across the border
        [9.6, 1.7, 2.3, 10.2],  # x2 < x1: mirrored
        [4.0, 9.5, 12.25, 8.75],  # y2 < y1, by less than a pixel
        [7.6, 3.4, 7.4, 3.6],  # a sliver each way, over one pixel centre
    ],
)
def test_paste_matches_the_authors_inverse_roi_sampling(box):
    torch.manual_seed(0)
    mask = torch.randn(6, 6)
    pasted = paste_masks(mask[None], torch.tensor([box]), (12, 16))[0]
    expected = _authors_paste(mask, box, 12, 16)
    assert expected.abs().sum() > 0
    assert (pasted - expected).abs().max() <= 1e-5


def test_paste_far_from_the_image_origin_follows_their_rounding():
    # A small box at the far corner of a 1024x2048 image: the image spans thousands of mask
    # cells there, and the order of float operations shows in the pasted values.
    torch.manual_seed(1)
    mask = torch.randn(28, 28)
    box = [2031.3, 1001.6, 2035.9, 995.2]  # 4.6 px wide, y2 < y1
    pasted = paste_masks(mask[None], torch.tensor([box]), (1024, 2048))[0]
    rows, cols = slice(990, 1010), slice(2025, 2040)
    expected = _authors_paste_window(mask, box, (1024, 2048), rows, cols)
    assert pasted[rows, cols].abs().sum() > 0 and pasted.abs().sum() == pytest.approx(pasted[rows, cols].abs().sum())
    assert (pasted[rows, cols] - expected).abs().max() <= 1e-5


def _authors_paste_window(mask, box, size, rows, cols):
    """`_authors_paste` over a window of a large image only."""
    full = torch.zeros(size)
    height, width = size
    grid = f32(mask.shape[0])
    x1, y1, x2, y2 = (f32(v) for v in box)
    i0, j0 = -grid * y1 / (y2 - y1), -grid * x1 / (x2 - x1)
    i1, j1 = grid * (f32(height) - y1) / (y2 - y1), grid * (f32(width) - x1) / (x2 - x1)
    for i in range(rows.start, rows.stop):
        sy = (f32(i) + f32(0.5)) / f32(height) * (i1 - i0) + i0
        for j in range(cols.start, cols.stop):
            sx = (f32(j) + f32(0.5)) / f32(width) * (j1 - j0) + j0
            full[i, j] = _bilinear_zero_padded(mask, sy, sx)
    return full[rows, cols]


def test_a_box_without_extent_is_dropped_and_the_others_stay():
    config = _config()
    normal = _detections([[0, 0, 28, 28]], [0.8], [0], [5.0])
    with_empty = _detections(
        [[0, 0, 28, 28], [40, 10, 40, 30], [40, 30, 50, 30]], [0.8, 0.9, 0.95], [0, 1, 2], [5.0] * 3
    )
    # Their paste of a box without width or height is NaN everywhere.
    assert torch.isnan(paste_masks(with_empty["mask_logits"][1:], with_empty["boxes"][1:], (SIZE, SIZE))).all()
    alone = panoptic_fusion(_road_logits(config), normal, config)
    out = panoptic_fusion(_road_logits(config), with_empty, config)
    assert out.scores.tolist() == pytest.approx([0.8])
    assert torch.equal(out.instance, alone.instance) and torch.equal(out.semantic, alone.semantic)
    assert (out.instance[:28, :28] == 1).all()


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

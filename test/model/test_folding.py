"""The paper's model with its norms folded into its convs computes what it computed before."""
import copy
from dataclasses import replace

import torch

from efficientps_ros.model import build_model, load_config
from efficientps_ros.model.norm import NormAct, fold_norms

SIZE = (512, 1024)


def _seeded_b5(randomize_norms) -> torch.nn.Module:
    """b5_cityscapes with trained-looking norms whose detections are real boxes with spread scores.

    Every norm gets random affine terms and statistics; those of the FPN and
    the heads then take the statistics of their own inputs, so the features
    reach the heads at unit scale. (With every norm so calibrated, a random
    backbone is chaotic: float32 alone then strays 4e-4 from float64, folded
    or not.) A wider class layer spreads the scores.
    """
    torch.manual_seed(0)
    config = load_config("b5_cityscapes")
    model = build_model(replace(config, roi=replace(config.roi, score_threshold=0.2))).eval()
    randomize_norms(model)
    generator = torch.Generator().manual_seed(1)
    heads = [model.fpn, model.semantic_head, model.instance_head]
    norms = [m for head in heads for m in head.modules() if isinstance(m, NormAct)]
    with torch.no_grad():
        for head in heads:
            head.train()
        for norm in norms:  # a cumulative average over one batch: its statistics
            norm.momentum, norm.num_batches_tracked = None, torch.zeros_like(norm.num_batches_tracked)
        model(torch.randn(1, 3, 256, 512, generator=generator), [(256, 512)])
        for norm in norms:
            norm.momentum = 0.1
        model.instance_head.bbox_head.fc_cls.weight.normal_(0, 0.05, generator=generator)
    return model.eval()


def test_folded_b5_gives_the_unfolded_logits_and_detections(randomize_norms):
    model = _seeded_b5(randomize_norms)
    folded = fold_norms(copy.deepcopy(model))
    assert not any(isinstance(m, NormAct) for m in folded.modules())
    image = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected, out = model(image, [SIZE]), folded(image, [SIZE])

    logits = expected["semantic_logits"]
    assert (out["semantic_logits"] - logits).abs().max() <= 1e-4 * logits.abs().max()

    theirs, ours = expected["detections"][0], out["detections"][0]
    sides = theirs["boxes"][:, 2:] - theirs["boxes"][:, :2]
    assert len(theirs["scores"]) >= 20 and (sides > 4).all() and theirs["scores"].std() > 0.01
    assert torch.equal(ours["labels"], theirs["labels"])
    torch.testing.assert_close(ours["boxes"], theirs["boxes"], rtol=0, atol=1e-2)
    torch.testing.assert_close(ours["scores"], theirs["scores"], rtol=0, atol=1e-4)
    torch.testing.assert_close(ours["mask_logits"], theirs["mask_logits"], rtol=0, atol=1e-4)

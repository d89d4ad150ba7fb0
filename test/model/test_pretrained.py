"""ImageNet backbone weights from timm files: every tensor checked by name and shape.

The files are written by timm from randomly initialised models, so nothing is downloaded.
"""
import pytest
import timm
import torch
from safetensors.torch import save_file

from efficientps_ros.model.backbone import Backbone
from efficientps_ros.model.checkpoint import CheckpointError
from efficientps_ros.model.config import load_config
from efficientps_ros.model.pretrained import load_backbone_weights, read_timm_state

from .conftest import legacy_file_declaring


@pytest.fixture(scope="module")
def timm_state():
    torch.manual_seed(0)
    state = timm.create_model("tf_efficientnet_b0", pretrained=False).state_dict()
    # Trained scales vary, and a few are below eps or negative, which |weight| + eps cannot be.
    for key, tensor in state.items():
        if key.endswith("weight") and tensor.dim() == 1:
            state[key] = torch.rand_like(tensor) * 2 - 0.1
        elif key.endswith(("running_mean", "running_var", "bias")):
            state[key] = torch.rand_like(tensor)
    return state


@pytest.fixture
def backbone():
    return Backbone(load_config("small").backbone)


def _write(tmp_path, state, name="b0.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_a_timm_checkpoint_loads_with_se_and_classifier_left_out(tmp_path, timm_state, backbone):
    assert any(".se." in k for k in timm_state) and any(k.startswith("classifier.") for k in timm_state)
    clamped = load_backbone_weights(backbone, _write(tmp_path, timm_state))
    ours = backbone.state_dict()
    assert not any(".se." in k or k.startswith("classifier.") for k in ours)
    for key in ("conv_stem.weight", "blocks.3.1.conv_dw.weight", "conv_head.weight", "bn2.running_var"):
        assert torch.equal(ours[key], timm_state[key])
    # The scale |weight| + eps reproduces timm's weight wherever it is at least eps, and is eps elsewhere.
    eps = backbone.bn1.eps
    scale = backbone.bn1.weight.abs() + eps
    reference = timm_state["bn1.weight"]
    torch.testing.assert_close(scale, reference.clamp_min(eps))
    expected = sum(int((timm_state[f"{n}.weight"] < m.eps).sum())
                   for n, m in backbone.named_modules() if hasattr(m, "running_var"))
    assert clamped == expected > 0


def test_a_torch_file_is_read_without_executing_code(tmp_path, timm_state, backbone):
    path = tmp_path / "b0.pth"
    torch.save({"state_dict": timm_state}, path)
    load_backbone_weights(backbone, path)
    assert torch.equal(backbone.state_dict()["conv_stem.weight"], timm_state["conv_stem.weight"])
    hostile = tmp_path / "hostile.pth"
    torch.save({"state_dict": timm_state, "hook": _Payload()}, hostile)
    with pytest.raises(CheckpointError, match="hostile.pth: not a readable timm checkpoint"):
        load_backbone_weights(backbone, hostile)


class _Payload:
    """Stands for an object a pickle would construct on load."""


def test_a_missing_tensor_is_refused_by_name(tmp_path, timm_state, backbone):
    state = dict(timm_state)
    del state["blocks.2.0.conv_pwl.weight"]
    before = backbone.state_dict()["conv_stem.weight"].clone()
    with pytest.raises(CheckpointError, match=r"1 missing: blocks\.2\.0\.conv_pwl\.weight"):
        load_backbone_weights(backbone, _write(tmp_path, state))
    assert torch.equal(backbone.state_dict()["conv_stem.weight"], before)  # nothing half-loaded


def test_a_misshapen_tensor_is_refused_by_name_and_shape(tmp_path, timm_state, backbone):
    state = dict(timm_state)
    state["conv_head.weight"] = torch.zeros(1280, 320, 3, 3)
    with pytest.raises(CheckpointError, match=r"wrong shape: conv_head\.weight \(1280, 320, 3, 3\) != \(1280, 320, 1, 1\)"):
        load_backbone_weights(backbone, _write(tmp_path, state))


def test_another_width_is_refused(tmp_path, backbone):
    state = timm.create_model("tf_efficientnet_b1", pretrained=False).state_dict()
    with pytest.raises(CheckpointError, match="does not fit the backbone"):
        load_backbone_weights(backbone, _write(tmp_path, state, "b1.safetensors"))


def test_a_missing_file_is_named(tmp_path, backbone):
    with pytest.raises(CheckpointError, match="nope.safetensors: backbone weights file not found"):
        load_backbone_weights(backbone, tmp_path / "nope.safetensors")


def test_a_torch_file_whose_entries_were_recompressed_is_refused_before_unpacking(tmp_path, backbone):
    import zipfile

    plain = tmp_path / "plain.pth"
    torch.save({"conv_stem.weight": torch.zeros(4 * 2**20)}, plain)  # 16 MB of zeros
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry.filename))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(CheckpointError, match=r"bomb.pth: entry '.*' is compressed"):
        load_backbone_weights(backbone, bomb)


def test_bytes_that_are_no_pickle_are_refused_in_one_line(tmp_path, backbone):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"hello")
    with pytest.raises(CheckpointError, match=rf"^{garbage}: not a readable timm checkpoint "
                                              r"\(malformed pickle data: KeyError: 101\)$"):
        load_backbone_weights(backbone, garbage)


def test_a_refused_pickle_is_named_without_advice_to_load_it_unsafely(tmp_path, timm_state, backbone):
    hostile = tmp_path / "hostile.pth"
    torch.save({"state_dict": timm_state, "hook": _Payload()}, hostile)
    with pytest.raises(CheckpointError) as raised:
        load_backbone_weights(backbone, hostile)
    message = str(raised.value)
    assert "refused to load: it holds the type" in message and "_Payload" in message
    assert "weights_only" not in message and "\n" not in message


def test_a_newer_pickle_protocol_loads_without_a_warning(tmp_path, timm_state, backbone):
    import warnings

    path = tmp_path / "protocol3.pth"
    torch.save(timm_state, path, pickle_protocol=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_backbone_weights(backbone, path)
    assert torch.equal(backbone.state_dict()["conv_stem.weight"], timm_state["conv_stem.weight"])


def test_a_legacy_torch_file_declaring_gigabytes_is_refused(tmp_path, backbone):
    path = legacy_file_declaring(tmp_path / "legacy.pth", "conv_stem.weight", 10**9)
    with pytest.raises(CheckpointError, match=(
        r"legacy\.pth: not a readable timm checkpoint \(.*(wrong byte size|can't allocate memory)"
    )):
        load_backbone_weights(backbone, path)


def test_a_legacy_torch_file_that_holds_what_it_declares_loads(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": {"conv_stem.weight": torch.ones(3)}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_timm_state(path)["conv_stem.weight"], torch.ones(3))

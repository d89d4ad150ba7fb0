"""Import of the authors' checkpoints, checked against their state-dict table."""
import datetime
import math
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from efficientps_ros.cli import main as cli_main
from efficientps_ros.model.checkpoint import CheckpointError, load_checkpoint
from efficientps_ros.model.config import CITYSCAPES_CLASSES, load_config
from efficientps_ros.model.efficientps import EfficientPS, parameter_counts
from efficientps_ros.model import official
from efficientps_ros.model.official import convert_official, our_key, read_official

from .conftest import legacy_file_declaring, read_official_state_dict

OFFICIAL_PARAMETERS = 42_988_744


def _value(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A seeded value that keeps a forward pass well scaled and tells tensors apart."""
    if key.endswith("num_batches_tracked"):
        return torch.randint(1, 10_000, (), generator=generator)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=generator)
    if key.endswith(("running_mean", ".bias")):
        return 0.1 * torch.randn(shape, generator=generator)
    if len(shape) == 1:  # norm weights, about a third negative as InPlaceABN allows
        sign = torch.where(torch.rand(shape, generator=generator) < 0.3, -1.0, 1.0)
        return sign * (0.5 + 0.5 * torch.rand(shape, generator=generator))
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)


def _official_state_dict(seed: int = 0) -> OrderedDict:
    generator = torch.Generator().manual_seed(seed)
    return OrderedDict((key, _value(key, shape, generator)) for key, shape in read_official_state_dict())


def _mmcv_file(path, state, **meta):
    meta = {"mmdet_version": "1.0rc0+e1c92c3", "config": "model = dict(type='EfficientPS')",
            "CLASSES": tuple(c.name for c in CITYSCAPES_CLASSES[11:]), "epoch": 160, "iter": 0,
            "mmcv_version": "0.5.9", "time": "Thu Jan  7 10:00:00 2021", **meta}
    torch.save({"meta": meta, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def official_state():
    return _official_state_dict()


@pytest.fixture(scope="module")
def converted(official_state, tmp_path_factory):
    directory = tmp_path_factory.mktemp("official")
    src = _mmcv_file(directory / "efficientPS_cityscapes.pth", official_state)
    return convert_official(src, directory / "converted.safetensors")


def test_b5_has_the_authors_parameter_count():
    counts = parameter_counts(EfficientPS(load_config("b5_cityscapes")))
    assert counts["total"] == OFFICIAL_PARAMETERS
    assert counts["backbone"] == 23_148_912
    assert counts["fpn"] == 3_557_376
    assert counts["semantic_head"] == 1_206_547
    assert counts["instance_head"] == 593_935 + 13_941_805 + 540_169


def test_every_official_tensor_has_exactly_one_of_ours():
    ours = EfficientPS(load_config("b5_cityscapes")).state_dict()
    table = read_official_state_dict()
    mapped = [our_key(key) for key, _ in table]
    assert len(set(mapped)) == len(table) == 1064
    assert set(mapped) == set(ours)
    for (key, shape), name in zip(table, mapped):
        assert tuple(ours[name].shape) == shape, key


def test_conversion_puts_every_value_where_the_mapping_says(official_state, converted):
    tensors = load_file(str(converted))
    assert len(tensors) == len(official_state)
    for key, value in official_state.items():
        assert torch.equal(tensors[our_key(key)], value), key
    model = EfficientPS(load_config("b5_cityscapes"))
    model.load_state_dict(tensors, strict=True)  # no missing, no unexpected
    assert torch.equal(model.fpn.fpn_convs[0].conv.weight, official_state["neck.fpn_convs.0.conv.weight"])
    assert torch.equal(
        model.instance_head.mask_head.conv_logits.bias, official_state["mask_head.conv_logits.bias"]
    )


def test_converted_checkpoint_carries_config_and_class_table(converted):
    _, config = load_checkpoint(converted)
    assert config.name == "b5_cityscapes"
    assert config.classes == CITYSCAPES_CLASSES
    assert config.backbone.name == "tf_efficientnet_b5"


def test_dense_path_with_converted_weights_is_finite_and_deterministic(converted):
    torch.set_num_threads(2)
    state, config = load_checkpoint(converted)
    model = EfficientPS(config).eval()
    model.load_state_dict(state)
    image = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (1, 3, 1024, 2048)).astype(np.float32))

    def dense(x):
        return model.semantic_head(model.fpn(model.backbone(x)), x.shape[-2:])

    with torch.inference_mode():
        first, second = dense(image), dense(image)
    assert first.shape == (1, 19, 1024, 2048)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    # Different weights give different logits: the values really arrived.
    assert first.std() > 0


def test_checkpoints_without_batch_counters_and_with_module_prefix(official_state, tmp_path):
    # inplace_abn 1.0 had no num_batches_tracked; DataParallel adds "module.".
    state = OrderedDict(
        (f"module.{key}", value) for key, value in official_state.items() if not key.endswith("num_batches_tracked")
    )
    out = convert_official(_mmcv_file(tmp_path / "old.pth", state), tmp_path / "old.safetensors")
    tensors = load_file(str(out))
    assert torch.equal(tensors["backbone.conv_stem.weight"], official_state["backbone.conv_stem.weight"])
    assert tensors["backbone.bn1.num_batches_tracked"].item() == 0


def test_missing_and_unexpected_tensors_are_named(official_state, tmp_path):
    state = OrderedDict(official_state)
    del state["semantic_head.conv_logits.weight"]
    state["neck.extra_conv.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        convert_official(_mmcv_file(tmp_path / "bad.pth", state), tmp_path / "bad.safetensors")
    message = str(info.value)
    assert "missing: semantic_head.conv_logits.weight" in message
    assert "unexpected: fpn.extra_conv.weight" in message
    assert not (tmp_path / "bad.safetensors").exists()


def test_numpy_scalars_in_meta_are_allowed_but_other_types_are_refused(tmp_path):
    state = {"backbone.conv_stem.weight": torch.zeros(1)}
    allowed = _mmcv_file(tmp_path / "np.pth", state, epoch=np.int64(160), lr=np.float64(0.07))
    assert torch.equal(read_official(allowed)["backbone.conv_stem.weight"], torch.zeros(1))

    refused = _mmcv_file(tmp_path / "dt.pth", state, saved=datetime.datetime(2021, 1, 7))
    with pytest.raises(CheckpointError, match=r"dt.pth: refused to load: it holds the type datetime\.datetime"):
        read_official(refused)


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        read_official(tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        read_official(garbage)


def test_a_broken_file_named_safetensors_is_refused_as_unreadable(tmp_path):
    # torch.load hands such a file to safetensors, whose error is of its own type.
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable PyTorch checkpoint \(.*header"):
        read_official(broken)


@pytest.mark.parametrize("data, error", [
    (b"hello", "KeyError: 101"), (b"q\x05", "IndexError: list index out of range"),
    (b"K\x01s.", "IndexError: pop from empty list"),
])
def test_bytes_that_are_no_pickle_are_refused_in_one_line(tmp_path, data, error):
    # The weights-only unpickler meets them with errors of any type.
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(data)
    with pytest.raises(CheckpointError, match=rf"^{garbage}: not a readable PyTorch checkpoint "
                                              rf"\(malformed pickle data: {error}\)$"):
        read_official(garbage)


def test_a_refused_pickle_is_named_by_its_opcode_without_advice_to_load_it_unsafely(tmp_path):
    class Runs:
        def __reduce__(self):
            return (print, ("ran",))

    # Protocol 4 frames its data and names types through STACK_GLOBAL.
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Runs()}, protocol=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as refused:
            read_official(evil)
    message = str(refused.value)
    assert "does not allow the pickle opcode FRAME" in message
    assert "weights_only" not in message and "\n" not in message
    text = tmp_path / "text.pt"
    text.write_bytes(b"!!python/object:os.system\n")
    with pytest.raises(CheckpointError, match="met byte 33, which is no pickle opcode"):
        read_official(text)


def test_command_line_conversion_reports_errors_without_traceback(tmp_path, capsys):
    assert cli_main(["convert-official", str(tmp_path / "absent.pth"), str(tmp_path / "out.safetensors")]) == 2
    assert "absent.pth: checkpoint file not found" in capsys.readouterr().err


def test_predictor_and_command_line_run_the_converted_checkpoint(converted, tmp_path, capsys):
    from PIL import Image

    from efficientps_ros.predictor import Predictor

    predictor = Predictor(checkpoint=converted, device="cpu")
    assert predictor.config.name == "b5_cityscapes" and predictor.weights_source == str(converted)
    image = np.random.default_rng(1).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    result = predictor.predict(image)
    assert result.semantic.shape == (96, 160)
    assert set(np.unique(result.semantic)) <= set(range(19)) | {255}

    Image.fromarray(image).save(tmp_path / "frame.png")
    args = ["predict", "--checkpoint", str(converted), "--device", "cpu", "--out", str(tmp_path / "out"),
            str(tmp_path / "frame.png")]
    assert cli_main(args) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "frame_semantic.png")), result.semantic)
    assert np.array_equal(np.load(tmp_path / "out" / "frame_panoptic.npy"), result.panoptic)


# --- the file's own table of contents, checked before anything is unpacked ----

def _rewritten(src, dst, deflate_data=False, zeros=None):
    """A copy of the zip-format .pth `src`, its tensor entries deflated, or with
    `zeros` = (name, size, compression): that entry holding that many zero bytes."""
    name, size, compression = zeros or ("", 0, zipfile.ZIP_STORED)
    with zipfile.ZipFile(src) as source, zipfile.ZipFile(dst, "w") as target:
        for entry in source.infolist():
            if entry.filename == name:
                continue
            deflate = deflate_data and "/data/" in entry.filename
            target.writestr(entry, source.read(entry), compress_type=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
        if name:
            entry = zipfile.ZipInfo(name)
            entry.compress_type = compression
            with target.open(entry, "w", force_zip64=True) as stream:
                for _ in range(size // 2**20):
                    stream.write(bytes(2**20))
    return dst


@pytest.fixture
def loads(monkeypatch):
    """Records every torch.load, to show a refusal came before one."""
    calls = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs))
    return calls


def test_a_small_file_declaring_much_compressed_data_is_refused_before_unpacking(tmp_path, loads):
    small = _mmcv_file(tmp_path / "small.pth", {"backbone.conv_stem.weight": torch.zeros(4)})
    # 256 MiB of zeros in well under 1 MB: torch.load would unpack every byte.
    bomb = _rewritten(small, tmp_path / "bomb.pth", zeros=("small/data/0", 256 * 2**20, zipfile.ZIP_DEFLATED))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(CheckpointError, match=re.escape(
        "bomb.pth: entry 'small/data/0' is compressed (268,435,456 bytes declared in"
    )):
        read_official(bomb)
    deflated = _rewritten(small, tmp_path / "deflated.pth", deflate_data=True)
    with pytest.raises(CheckpointError, match=re.escape("deflated.pth: entry 'small/data/0' is compressed")):
        read_official(deflated)
    assert loads == []


def test_a_file_whose_entries_declare_too_much_is_refused_before_unpacking(tmp_path, loads, monkeypatch):
    monkeypatch.setattr(official, "MAX_CHECKPOINT_BYTES", 10 * 2**20)
    small = _mmcv_file(tmp_path / "small.pth", {"backbone.conv_stem.weight": torch.zeros(4)})
    big = _rewritten(small, tmp_path / "big.pth", zeros=("small/data/99", 16 * 2**20, zipfile.ZIP_STORED))
    with pytest.raises(CheckpointError, match=r"big.pth: its entries declare [\d,]+ bytes; allowed: at most 10,485,760"):
        read_official(big)
    assert loads == []


def test_tensors_are_mapped_not_read_until_used(tmp_path):
    path = _mmcv_file(tmp_path / "mapped.pth", {"backbone.conv_stem.weight": torch.arange(6.0)})
    tensor = read_official(path)["backbone.conv_stem.weight"]
    assert _mapped_from(tensor.data_ptr()) == str(path)
    assert torch.equal(tensor, torch.arange(6.0))


def _mapped_from(address: int) -> str:
    """The file mapped at `address` in this process, '' for anonymous memory."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if start <= address < end:
            return fields[5].strip() if len(fields) == 6 else ""
    return ""


def test_the_legacy_format_still_loads(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": {"backbone.conv_stem.weight": torch.ones(3)}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_official(path)["backbone.conv_stem.weight"], torch.ones(3))


def test_a_nan_in_their_checkpoint_is_refused_by_our_name(official_state, tmp_path):
    state = OrderedDict(official_state)
    state["neck.fpn_convs.0.conv.weight"] = state["neck.fpn_convs.0.conv.weight"].clone()
    state["neck.fpn_convs.0.conv.weight"].view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"1 non-finite: fpn.fpn_convs.0.conv.weight \(1 NaN, 0 Inf\)"):
        convert_official(_mmcv_file(tmp_path / "nan.pth", state), tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()


def test_the_crafted_legacy_file_is_a_legacy_file_when_it_declares_what_it_holds(tmp_path):
    path = legacy_file_declaring(tmp_path / "legacy.pth", "backbone.conv_stem.weight", 3)
    assert torch.equal(read_official(path)["backbone.conv_stem.weight"], torch.ones(3))


@pytest.mark.parametrize("numel", [10**9, 10**11])
def test_a_legacy_file_declaring_more_than_it_holds_is_refused_without_reading_it(tmp_path, numel):
    """The pre-zip format has no directory to check: torch reserves each storage
    as declared (address space, never touched) and compares it with the bytes
    behind it, unless the allocator refuses the reservation first."""
    path = legacy_file_declaring(tmp_path / "legacy.pth", "backbone.conv_stem.weight", numel)
    assert path.stat().st_size < 1000
    with pytest.raises(CheckpointError, match=(
        r"legacy\.pth: not a readable PyTorch checkpoint \(.*(wrong byte size|can't allocate memory)"
    )):
        read_official(path)

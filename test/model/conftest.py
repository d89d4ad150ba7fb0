"""Shared fixtures for the model tests."""
from __future__ import annotations

import io
import pickle
import pickletools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from efficientps_ros.model.norm import NormAct

OFFICIAL_STATE_DICT = Path(__file__).resolve().parents[1] / "data" / "official_efficientps_cityscapes_state_dict.tsv"

Shapes = list[tuple[str, tuple[int, ...]]]


def read_official_state_dict(prefix: str = "") -> Shapes:
    """`(key, shape)` rows of the authors' Cityscapes model under `prefix`, prefix removed, in order."""
    rows = OFFICIAL_STATE_DICT.read_text().splitlines()[1:]
    shapes = []
    for row in rows:
        key, shape, _numel = row.split("\t")
        if key.startswith(prefix):
            dims = tuple(int(d) for d in shape.split(",")) if shape else ()
            shapes.append((key[len(prefix):], dims))
    return shapes


def state_dict_shapes(module: torch.nn.Module) -> Shapes:
    return [(key, tuple(value.shape)) for key, value in module.state_dict().items()]


@pytest.fixture(scope="session")
def official_shapes() -> Callable[[str], Shapes]:
    """The reader of the authors' state-dict table, by key prefix."""
    return read_official_state_dict


@pytest.fixture(scope="session")
def shapes_of() -> Callable[[torch.nn.Module], Shapes]:
    """A module's state dict as ordered `(key, shape)` rows, to compare with the table."""
    return state_dict_shapes


def randomize_norm_layers(module: torch.nn.Module, seed: int = 0) -> None:
    """Random statistics and affine terms in every NormAct; about a third of the weights negative."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, NormAct):
                n = norm.num_features
                sign = torch.where(torch.rand(n, generator=generator) < 0.3, -1.0, 1.0)
                norm.weight.copy_(sign * (0.5 + torch.rand(n, generator=generator)))
                norm.bias.copy_(0.1 * torch.randn(n, generator=generator))
                norm.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                norm.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))


@pytest.fixture(scope="session")
def randomize_norms() -> Callable[..., None]:
    """`randomize_norms(module, seed=0)`: trained-looking norms, so folding and wiring tests see them."""
    return randomize_norm_layers


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # The test machine's cores are shared.
    torch.set_num_threads(2)


def legacy_file_declaring(path: Path, key: str, numel: int) -> Path:
    """A pre-zip torch file holding 3 floats under `key`, whose storage record declares `numel` of them.

    The legacy format is four small pickles (magic, protocol, system info, the
    object with its storages as persistent ids) followed by the raw storages;
    the first integer of the fourth pickle is the storage's element count.
    """
    buffer = io.BytesIO()
    torch.save({key: torch.ones(3)}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    stream = io.BytesIO(data)
    for _ in range(3):
        pickle.load(stream)  # our own three header pickles
    count = next(pos for op, arg, pos in pickletools.genops(stream) if op.name == "BININT1" and arg == 3)
    body = numel.to_bytes((numel.bit_length() + 8) // 8, "little", signed=True)
    path.write_bytes(data[:count] + b"\x8a" + bytes([len(body)]) + body + data[count + 2:])
    return path

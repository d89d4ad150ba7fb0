"""The EfficientPS network in plain PyTorch.

The network modules are imported on first use, so that reading a config or a
class table does not pull in timm and torchvision.
"""
import functools
import json

from .config import EfficientPSConfig, check_config, config_from_dict, load_config

# Four times the paper's model, and room for a B8 backbone under its heads;
# 600 MB in fp32.
MAX_PARAMETERS = 150_000_000


def build_model(config: EfficientPSConfig):
    """The `torch.nn.Module` for `config`, with freshly initialised weights.

    An invalid config is refused by field, and one with more than
    MAX_PARAMETERS parameters by its count, before any weight is allocated.
    """
    from .efficientps import EfficientPS

    check_config(config)
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"config {config.name!r}: the network would have {count:,} parameters; "
            f"allowed: at most {MAX_PARAMETERS:,} (fpn_channels, semantic_channels, roi.box_fc_channels, "
            "roi.mask_channels and backbone.name set its size)"
        )
    return EfficientPS(config)


def parameter_count(config: EfficientPSConfig) -> int:
    """The network's parameter count, from a build on the meta device, which allocates nothing."""
    return _parameter_count(json.dumps(config.to_dict()))


# A meta build takes longer than a small real one; a process builds few distinct configs.
@functools.lru_cache(maxsize=16)
def _parameter_count(config_json: str) -> int:
    import torch

    from .efficientps import EfficientPS

    with torch.device("meta"):
        return sum(p.numel() for p in EfficientPS(config_from_dict(json.loads(config_json))).parameters())


__all__ = ["EfficientPSConfig", "build_model", "load_config", "parameter_count"]

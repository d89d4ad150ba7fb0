"""The EfficientPS network in plain PyTorch.

The network modules are imported on first use, so that reading a config or a
class table does not pull in timm and torchvision.
"""
from .config import EfficientPSConfig, load_config


def build_model(config: EfficientPSConfig):
    """The `torch.nn.Module` for `config`, with freshly initialised weights."""
    from .efficientps import EfficientPS

    return EfficientPS(config)


__all__ = ["EfficientPSConfig", "build_model", "load_config"]

"""Typed run configuration: dataclass schemas merged with OmegaConf (defaults < recipe < --set < flags)."""

from vidbooth.config.load import load_config, save_config, to_yaml
from vidbooth.config.schema import BackboneConfig, GenerateConfig, RuntimeConfig, SamplingConfig

__all__ = [
    "BackboneConfig",
    "GenerateConfig",
    "RuntimeConfig",
    "SamplingConfig",
    "load_config",
    "save_config",
    "to_yaml",
]

"""adapterhub: one frozen, quantized base LLM; many small LoRA adapters for recommendation scenarios."""
__version__ = "0.1.0"

from .errors import (AdapterHubError, AdapterNotFoundError, BaseModelError, ConfigError,  # noqa: E402
                     DataError, IncompatibleAdapterError, RegistryError)


def __getattr__(name):
    # The model stack (torch, transformers) loads only when first used, so `adapterhub --help` is fast.
    if name == "Hub":
        from .hub import Hub
        return Hub
    if name == "Registry":
        from .registry import Registry
        return Registry
    if name == "TrainConfig":
        from .config import TrainConfig
        return TrainConfig
    raise AttributeError(f"module 'adapterhub' has no attribute {name!r}")


__all__ = ["Hub", "Registry", "TrainConfig", "AdapterHubError", "AdapterNotFoundError",
           "BaseModelError", "ConfigError", "DataError", "IncompatibleAdapterError", "RegistryError"]

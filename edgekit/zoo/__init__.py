"""The model zoo: published lightweight medical-imaging CNNs plus MobileNetV2."""

from edgekit.zoo.registry import (
    ModelConfig,
    create_model,
    list_models,
    model_config,
    register_model,
)

__all__ = ["ModelConfig", "create_model", "list_models", "model_config", "register_model"]

"""Model registry: ``@register_model`` + ``create_model(name, ...)`` + ``list_models()``.

Each architecture file registers one small constructor per variant. ``create_model`` takes
explicit keyword arguments only, so a typo fails at the top instead of four layers down.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

# One module per architecture: adding one means a new file and a line here.
ARCHITECTURES = ("edgekit.zoo.dsconv_cbam", "edgekit.zoo.ich_mrf", "edgekit.zoo.mobilenetv2",
                 "edgekit.zoo.prudensnet")
TASKS = ("multiclass", "multilabel")
MODALITIES = ("mri", "ct")


@dataclass(frozen=True)
class ModelConfig:
    """What a zoo entry is and what it expects by default."""

    name: str
    constructor: Callable[..., nn.Module]
    task: str  # "multiclass" (softmax over classes) or "multilabel" (independent sigmoids)
    modality: str  # "mri" (raster images in [0,1]) or "ct" (Hounsfield windows)
    num_classes: int
    input_size: int
    labels: tuple[str, ...]
    summary: str
    reference: str

    def default_spec(self, input_size: int | None = None) -> PreprocessSpec:
        """The preprocessing spec this model is trained with by default."""
        size = input_size or self.input_size
        if self.modality == "ct":
            return PreprocessSpec.for_ct(size)
        return PreprocessSpec(input_size=size)


_REGISTRY: dict[str, ModelConfig] = {}


def register_model(
    name: str,
    *,
    task: str,
    modality: str,
    num_classes: int,
    input_size: int,
    labels: tuple[str, ...],
    summary: str,
    reference: str,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``fn(num_classes: int, input_size: int) -> nn.Module`` under ``name``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}")
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}")
    if len(labels) != num_classes:
        raise ValueError(f"{name}: {len(labels)} labels for {num_classes} classes")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelConfig(name, fn, task, modality, num_classes, input_size,
                                      tuple(labels), summary, reference)
        return fn

    return deco


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def model_config(name: str) -> ModelConfig:
    """The registry entry for ``name``; a ConfigError listing the known names otherwise."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Unknown model {name!r}.{hint} Known models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create_model(name: str, *, num_classes: int | None = None,
                 input_size: int | None = None) -> nn.Module:
    """Build a freshly initialised zoo model.

    ``num_classes`` defaults to the published head; ``input_size`` (square, pixels) matters for
    architectures whose head depends on it (``dsconv_cbam``'s Flatten→Dense).
    """
    cfg = model_config(name)
    n = cfg.num_classes if num_classes is None else int(num_classes)
    size = cfg.input_size if input_size is None else int(input_size)
    if n < 1:
        raise ConfigError(f"num_classes must be >= 1, got {n}")
    if size < 32:
        raise ConfigError(f"input_size must be >= 32 pixels, got {size}")
    from edgekit.zoo.blocks import init_weights

    model = init_weights(cfg.constructor(num_classes=n, input_size=size))
    model.edgekit_name = name  # lets inspect/train record the architecture
    return model


def _ensure_loaded() -> None:
    """Import the architecture modules (torch-bound), which runs their ``@register_model``
    decorators: on the first query, so that ``import edgekit.zoo`` stays free of torch."""
    for module in ARCHITECTURES:
        import_module(module)

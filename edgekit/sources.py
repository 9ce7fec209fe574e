"""Load a model source into a ``LoadedModel``: an ``nn.Module`` with everything needed to use it.

Supported here: a zoo name (fresh weights, for inspection and tests), an edgekit checkpoint
(``model.pt``, whose metadata names the architecture), and ``zoo_name:weights.pt`` for a plain
state_dict. Checkpoints are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.checkpoint import load_checkpoint
from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import ConfigError, DataError
from edgekit.zoo import create_model, list_models, model_config


@dataclass
class LoadedModel:
    """A ready-to-run model plus its identity, classes, task and preprocessing spec."""

    module: Any  # torch.nn.Module in eval mode (kind "torch"); None for kind "onnx"
    name: str
    task: str
    class_names: tuple[str, ...]
    spec: PreprocessSpec
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    kind: str = "torch"  # "torch" (module) or "onnx" (onnx_path, no module)
    onnx_path: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _from_zoo(name: str, *, input_size: int | None, num_classes: int | None) -> LoadedModel:
    cfg = model_config(name)
    n = num_classes or cfg.num_classes
    size = input_size or cfg.input_size
    labels = cfg.labels if n == cfg.num_classes else tuple(f"class_{i}" for i in range(n))
    module = create_model(name, num_classes=n, input_size=size).eval()
    return LoadedModel(module, name, cfg.task, labels, cfg.default_spec(size), name)


def load_model(source: str | Path, *, input_size: int | None = None,
               num_classes: int | None = None) -> LoadedModel:
    """Resolve ``source``: ``ckpt.pt``, ``zoo_name:weights.pt`` or a bare zoo name."""
    text = str(source)
    name, sep, weights = text.partition(":")
    if sep and name in list_models():
        return _from_checkpoint(Path(weights), text, arch=name)
    path = Path(text)
    if path.suffix in (".pt", ".pth") or path.is_file():
        return _from_checkpoint(path, text, arch=None)
    if text in list_models():
        return _from_zoo(text, input_size=input_size, num_classes=num_classes)
    model_config(text)  # raises ConfigError with the known names and a close match
    raise ConfigError(f"Unknown model source {text!r}")  # pragma: no cover


def _from_checkpoint(path: Path, source: str, *, arch: str | None) -> LoadedModel:
    state, meta = load_checkpoint(path)
    arch = arch or meta.get("architecture")
    if not arch:
        raise ConfigError(
            f"{path}: a plain state_dict does not say its architecture; "
            f"name it as ARCH:{path} with ARCH one of {', '.join(list_models())}")
    cfg = model_config(arch)
    spec = (PreprocessSpec.from_dict(meta["preprocess"]) if "preprocess" in meta
            else cfg.default_spec())
    classes = tuple(meta.get("class_names") or cfg.labels)
    module = create_model(arch, num_classes=len(classes), input_size=spec.height)
    what = f"{arch} with {len(classes)} classes at {spec.height}px"
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), "")
        raise DataError(f"{path}: weights do not fit {what}: {first or exc}") from exc
    if missing or unexpected:
        raise DataError(
            f"{path}: weights do not fit {what} (missing: {', '.join(missing[:3]) or '-'}; "
            f"unexpected: {', '.join(unexpected[:3]) or '-'})")
    return LoadedModel(module.eval(), arch, meta.get("task", cfg.task), classes, spec, source,
                       meta, pretrained=True)

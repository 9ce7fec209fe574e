"""Load a model source into a ``LoadedModel``: the model plus everything needed to use it.

Sources:

- an edgekit checkpoint (``model.pt``, whose metadata names the architecture, classes and
  preprocessing), or ``zoo_name:weights.pt`` for a plain state_dict — read with
  ``torch.load(weights_only=True)``; a pickle that needs code execution is refused;
- a bare zoo name (fresh weights, for inspection and tests);
- a ``torch.export`` program (``.pt2``), a TorchScript archive (``.ts``/``.torchscript``, or a
  ``.pt`` that is one) or an ONNX file (``.onnx``). These carry no class names: they come from
  the data folder (``with_classes``). Their preprocessing is the default [0, 1] RGB spec at the
  model's input size (``--input-size`` when the file does not fix it);
- a Keras model (``.keras``, legacy ``.h5``, or a SavedModel folder; ``edgekit[keras]``), loaded in
  safe mode and cleaned of inference-time no-ops (``edgekit.keras_source``). Its preprocessing is
  NHWC at the scale the model's own in-graph layers expect (0–255 pixels after an in-graph
  ``Rescaling``), so nothing scales twice; class names come from the data folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.checkpoint import load_checkpoint
from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import BackendUnavailable, ConfigError, DataError
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
    kind: str = "torch"  # "torch" (module), "torchscript", "onnx" (onnx_path) or "keras"
    onnx_path: Path | None = None
    keras: Any = None  # edgekit.keras_source.KerasModel (kind "keras")
    # how to read the outputs: "logits" or "probs" (an in-graph softmax/sigmoid), and the
    # decision threshold of sigmoid heads (binary: one output unit; multi-label)
    head: dict[str, Any] = field(default_factory=lambda: {"scores_are": "logits",
                                                          "threshold": 0.5})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_classes(self, class_names: tuple[str, ...]) -> LoadedModel:
        """Attach class names (from a data folder) to a source that has none, checking that
        the model's output width matches."""
        import dataclasses

        import numpy as np

        if self.class_names:
            return self
        width = reference_outputs(self, np.zeros(self.spec.input_shape(1), np.float32)).shape[-1]
        if width == 1 and len(class_names) == 2 and self.task != "multilabel":
            return dataclasses.replace(self, class_names=tuple(class_names),  # binary head
                                       head={**self.head, "binary": True})
        if width != len(class_names):
            raise DataError(f"{self.source} has {width} outputs but the data has "
                            f"{len(class_names)} classes ({', '.join(class_names)})")
        return dataclasses.replace(self, class_names=tuple(class_names))

    def onnx_file(self) -> Path | None:
        """The ONNX graph the ONNX Runtime and OpenVINO backends convert from: the source file
        itself, or (Keras) the cleaned model converted once per process into a temp folder."""
        if self.onnx_path is None and self.keras is not None:
            import atexit
            import shutil
            import tempfile

            tmp = Path(tempfile.mkdtemp(prefix="edgekit-keras-onnx-"))
            atexit.register(shutil.rmtree, tmp, ignore_errors=True)
            self.onnx_path = self.keras.to_onnx(tmp / "model.onnx", size=self.spec.input_size)
        return self.onnx_path


def reference_outputs(loaded: LoadedModel, x: Any, batch_size: int = 32) -> Any:
    """The source model's own float32 outputs for a batch: what every artifact is held to."""
    import numpy as np

    if loaded.kind == "keras":
        return np.asarray(loaded.keras.predict(np.asarray(x, np.float32), batch_size=batch_size),
                          np.float32)
    if loaded.kind == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        fixed = sess.get_inputs()[0].shape[0] == 1
        step = 1 if fixed else batch_size
        return np.concatenate([sess.run(None, {name: np.ascontiguousarray(x[i:i + step])})[0]
                               for i in range(0, len(x), step)]).astype(np.float32)
    from edgekit.evaluate import predict

    return predict(loaded.module, x, batch_size=batch_size)


def _from_zoo(name: str, *, input_size: int | None, num_classes: int | None) -> LoadedModel:
    cfg = model_config(name)
    n = num_classes or cfg.num_classes
    size = input_size or cfg.input_size
    labels = cfg.labels if n == cfg.num_classes else tuple(f"class_{i}" for i in range(n))
    module = create_model(name, num_classes=n, input_size=size).eval()
    return LoadedModel(module, name, cfg.task, labels, cfg.default_spec(size), name)


def load_model(source: str | Path, *, input_size: int | None = None,
               num_classes: int | None = None, trust_source: bool = False,
               input_range: str | None = None) -> LoadedModel:
    """Resolve ``source``: a checkpoint, ``zoo_name:weights.pt``, ``.pt2``, TorchScript, ``.onnx``,
    a Keras model (``.keras``/``.h5``/SavedModel folder) or a bare zoo name.

    ``trust_source`` lets a Keras model with ``Lambda`` layers (arbitrary Python) load;
    ``input_range`` ("0-255" or "0-1") overrides the pixel range edgekit reads from a Keras
    model's in-graph preprocessing."""
    from edgekit.keras_source import is_keras_source

    text = str(source)
    name, sep, weights = text.partition(":")
    if sep and name in list_models():
        return _from_checkpoint(Path(weights), text, arch=name, input_size=input_size)
    path = Path(text)
    if is_keras_source(path):
        return _from_keras(path, input_size, trust_source, input_range)
    if input_range is not None:
        raise ConfigError("--input-range applies to Keras sources only (edgekit checkpoints "
                          "carry their preprocessing; ONNX/TorchScript/.pt2 take [0, 1] RGB)")
    if path.suffix.lower() == ".onnx":
        return _from_onnx(path, input_size)
    if path.suffix.lower() == ".pt2":
        return _from_exported(path)
    if path.suffix.lower() in (".ts", ".torchscript") or _is_torchscript(path):
        return _from_torchscript(path, input_size)
    if path.suffix in (".pt", ".pth") or path.is_file():
        return _from_checkpoint(path, text, arch=None, input_size=input_size)
    if text in list_models():
        return _from_zoo(text, input_size=input_size, num_classes=num_classes)
    model_config(text)  # raises ConfigError with the known names and a close match
    raise ConfigError(f"Unknown model source {text!r}")  # pragma: no cover


def _from_checkpoint(path: Path, source: str, *, arch: str | None,
                     input_size: int | None = None) -> LoadedModel:
    """An edgekit checkpoint (its metadata wins) or a plain state_dict of zoo model ``arch``
    (default classes; ``input_size`` or the model's published size)."""
    state, meta = load_checkpoint(path)
    arch = arch or meta.get("architecture")
    if not arch:
        raise ConfigError(
            f"{path}: a plain state_dict does not say its architecture; "
            f"name it as ARCH:{path} with ARCH one of {', '.join(list_models())}")
    cfg = model_config(arch)
    spec = (PreprocessSpec.from_dict(meta["preprocess"]) if "preprocess" in meta
            else cfg.default_spec(input_size))
    classes = tuple(meta.get("class_names") or cfg.labels)
    module = create_model(arch, num_classes=len(classes), input_size=spec.height)
    what = f"{arch} with {len(classes)} classes at {spec.height}px"
    plan = (meta.get("pruning") or {}).get("plan")
    if plan:  # a pruned checkpoint: rebuild the pruned widths from the recorded plan
        import torch

        from edgekit.prune import apply_plan

        apply_plan(module, torch.zeros(spec.input_shape(1)), plan)
        what += " (pruned)"
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


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"Model file not found: {path}")


def _plain_spec(shape: list[Any] | None, input_size: int | None, source: Path) -> PreprocessSpec:
    """[0, 1] RGB NCHW at the size the model fixes, or ``input_size``."""
    dims = [d for d in (shape or [])[2:] if isinstance(d, int) and d > 0]
    if len(dims) == 2 and (input_size is None or tuple(dims) == (input_size, input_size)):
        return PreprocessSpec(input_size=tuple(dims))
    if len(dims) == 2:
        raise ConfigError(f"{source} takes {dims[0]}×{dims[1]} inputs, not --input-size {input_size}")
    if input_size is None:
        raise ConfigError(f"{source} does not fix its input size: pass --input-size")
    return PreprocessSpec(input_size=input_size)


def _from_onnx(path: Path, input_size: int | None) -> LoadedModel:
    _require_file(path)
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailable("Reading ONNX sources needs onnx: pip install 'edgekit[torch]'") from exc
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable ONNX model ({exc})") from exc
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in model.graph.input[0].type.tensor_type.shape.dim]
    spec = _plain_spec(dims, input_size, path)
    return LoadedModel(None, path.stem, "multiclass", (), spec, str(path), pretrained=True,
                       kind="onnx", onnx_path=path)


def _from_exported(path: Path) -> LoadedModel:
    """A ``torch.export`` program: its example input fixes the spec; loaded without pickles."""
    import torch

    _require_file(path)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise DataError(f"{path}: not a readable torch.export program ({exc})") from exc
    shape = [list(a.shape) for a in program.example_inputs[0]][0] if program.example_inputs else None
    module = _ExportedModule(program.module(), shape[0] if shape else None)
    return LoadedModel(module, path.stem, "multiclass", (), _plain_spec(shape, None, path),
                       str(path), pretrained=True)


def _exported_module_class() -> type:
    import torch

    class ExportedModule(torch.nn.Module):
        """Wraps ``ExportedProgram.module()``, which refuses ``.eval()``/``.train()``: an exported
        program is already in inference form, so mode switches are recorded, not propagated.
        A program exported at batch 1 is called row by row for larger batches."""

        def __init__(self, graph_module: Any, batch: int | None) -> None:
            super().__init__()
            self.graph_module = graph_module
            self.batch = batch

        def forward(self, x: Any) -> Any:
            if self.batch == 1 and x.shape[0] != 1:
                return torch.cat([self.graph_module(x[i:i + 1]) for i in range(x.shape[0])])
            return self.graph_module(x)

        def train(self, mode: bool = True) -> ExportedModule:
            self.training = mode
            return self

    return ExportedModule


def _ExportedModule(graph_module: Any, batch: int | None) -> Any:  # noqa: N802 - built lazily
    return _exported_module_class()(graph_module, batch)


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.split("/", 2)[1:2] == ["code"] for n in zf.namelist())


def _from_torchscript(path: Path, input_size: int | None) -> LoadedModel:
    import torch

    _require_file(path)
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise DataError(f"{path}: not a readable TorchScript archive ({exc})") from exc
    return LoadedModel(module, path.stem, "multiclass", (), _plain_spec(None, input_size, path),
                       str(path), pretrained=True, kind="torchscript")


INPUT_RANGES = ("0-255", "0-1")


def _from_keras(path: Path, input_size: int | None, trust_source: bool,
                input_range: str | None) -> LoadedModel:
    """A Keras model, cleaned for inference. The spec is NHWC, RGB (or grey for 1 channel), at
    the pixel range the model's own first layers expect: an in-graph ``Rescaling(1/255)`` means
    the model takes 0–255 pixels and the spec must not scale them again."""
    from edgekit.keras_source import load_keras

    if input_range is not None and input_range not in INPUT_RANGES:
        raise ConfigError(f"--input-range must be one of {', '.join(INPUT_RANGES)}, "
                          f"got {input_range!r}")
    km = load_keras(path, trust_source=trust_source)
    size = km.input_size
    if size is None:
        if input_size is None:
            raise ConfigError(f"{path} does not fix its input size: pass --input-size")
        size = (input_size, input_size)
    elif input_size is not None and tuple(size) != (input_size, input_size):
        raise ConfigError(f"{path} takes {size[0]}×{size[1]} inputs, not --input-size {input_size}")
    if km.channels not in (1, 3):
        raise ConfigError(f"{path} takes {km.channels}-channel images; edgekit reads RGB (3) or "
                          "greyscale (1) images")
    rng = input_range or km.input_range
    reason = (km.range_reason if input_range is None or input_range == km.input_range
              else f"--input-range {input_range} (edgekit had read {km.input_range}: "
                   f"{km.range_reason})")
    c = km.channels
    spec = PreprocessSpec(input_size=size, color="rgb" if c == 3 else "gray",
                          scale=1.0 if rng == "0-255" else 1.0 / 255.0, mean=(0.0,) * c,
                          std=(1.0,) * c, layout="NHWC")
    activation = km.final_activation
    task = "multilabel" if activation == "sigmoid" and km.outputs > 1 else "multiclass"
    head = {"scores_are": "probs" if activation in ("softmax", "sigmoid") else "logits",
            "threshold": 0.5}
    meta = {"keras": {"flavor": km.flavor, "removed_layers": list(km.removed),
                      "input_range": rng, "input_range_reason": reason,
                      "final_activation": activation, "outputs": km.outputs}}
    return LoadedModel(None, km.name, task, (), spec, str(path), meta, pretrained=True,
                       kind="keras", keras=km, head=head)

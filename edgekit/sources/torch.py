"""PyTorch sources: edgekit checkpoints, ``ARCH:weights.pt``, zoo names, ``torch.export``
programs (``.pt2``) and TorchScript archives.

Checkpoints are read with ``torch.load(weights_only=True)`` (``edgekit.checkpoint``): a pickle
that needs code execution is refused. A pruned checkpoint carries a replayable JSON plan that
rebuilds the pruned widths on the zoo architecture before the weights load. ``.pt2`` and
TorchScript files carry no class names (they come from the data folder) and take the default
[0, 1] RGB spec at the size the file fixes (or ``--input-size``) — except a ``.pt2`` edgekit
wrote (a pruned program), whose JSON extra file ``edgekit.json`` records its classes, task,
preprocessing and pruning record (read as JSON: ``torch.export.load`` runs no pickle).

torch is imported inside the functions: this module is imported by ``edgekit.sources``, which
the CLI imports without torch.
"""

from __future__ import annotations

import functools
import io
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgekit.backends.base import TORCH_REFERENCE
from edgekit.checkpoint import load_checkpoint
from edgekit.data.preprocess import PREPROCESS_KEYS, PreprocessSpec
from edgekit.errors import ConfigError, DataError
from edgekit.prune.engine import apply_plan
from edgekit.prune.graph import PROGRAM_METADATA
from edgekit.sources.base import Source, default_head, require_file, shaped_spec
from edgekit.sources.declared import DeclaredPreprocess, resolve_spec
from edgekit.sources.onnx import replayed
from edgekit.zoo import create_model, list_models, model_config


def predict_module(module: Any, x: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Logits of a torch module on an in-memory batch array, in eval mode, as float32 numpy."""
    import torch

    module.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32))
            outs.append(module(xb).float().numpy())
    return np.concatenate(outs, axis=0)


@dataclass(frozen=True, kw_only=True)
class TorchSource(Source):
    """A ``torch.nn.Module`` in eval mode: an edgekit checkpoint or zoo model (prunable, its
    ``module.edgekit_name`` names the architecture) or a ``torch.export`` program (prunable
    through ``edgekit.prune.graph.editable``)."""

    kind: ClassVar[str] = "torch"
    runtime: ClassVar[str] = TORCH_REFERENCE.name
    runtime_label: ClassVar[str] = "PyTorch eager"
    timed_by_bench: ClassVar[bool] = True  # edgekit.bench.torch_source

    module: Any

    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return predict_module(self.module, x, batch_size=batch_size)


@dataclass(frozen=True, kw_only=True)
class TorchScriptSource(TorchSource):
    """A TorchScript archive: runs like a module, but has no ``torch.export`` graph (litert
    converts it through ONNX, ``torch_module``) and no editable graph (it cannot be pruned; a
    ``.pt2`` can)."""

    kind: ClassVar[str] = "torchscript"

    def torch_module(self) -> Any:
        """A module torch.export can trace, for litert-torch (a TorchScript archive has no
        torch.export graph): the archive exported to ONNX with PyTorch's TorchScript exporter,
        then replayed with PyTorch ops (``edgekit.sources.onnx_torch``). Built once per source;
        an ExportError names an operator that cannot be translated."""
        def graph() -> Any:
            import onnx
            import torch

            buffer = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
                torch.onnx.export(self.module.eval(), (torch.zeros(self.spec.input_shape(1)),),
                                  buffer, dynamo=False, opset_version=17)
            return onnx.load_from_string(buffer.getvalue())

        return replayed(self, graph)


def from_zoo(name: str, *, input_size: int | None, num_classes: int | None) -> TorchSource:
    """A zoo architecture with fresh (untrained) weights."""
    cfg = model_config(name)
    n = num_classes or cfg.num_classes
    size = input_size or cfg.input_size
    labels = cfg.labels if n == cfg.num_classes else tuple(f"class_{i}" for i in range(n))
    module = create_model(name, num_classes=n, input_size=size).eval()
    return TorchSource(module=module, name=name, task=cfg.task, class_names=labels,
                       spec=cfg.default_spec(size), source=name)


def from_checkpoint(path: Path, source: str, *, arch: str | None,
                    input_size: int | None = None) -> TorchSource:
    """An edgekit checkpoint (its metadata wins) or a plain state_dict of zoo model ``arch``
    (default classes; ``input_size`` or the model's published size)."""
    import torch

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
    return TorchSource(module=module.eval(), name=arch, task=meta.get("task", cfg.task),
                       class_names=classes, spec=spec, source=source, metadata=meta,
                       pretrained=True)


def from_exported(path: Path, decl: DeclaredPreprocess | None = None) -> TorchSource:
    """A ``torch.export`` program: its example input fixes the spec; loaded without pickles."""
    import torch

    require_file(path)
    extra = {PROGRAM_METADATA: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:
        raise DataError(f"{path}: not a readable torch.export program ({exc})") from exc
    shape = [list(a.shape) for a in program.example_inputs[0]][0] if program.example_inputs else None
    meta = _program_metadata(path, extra[PROGRAM_METADATA])
    if "preprocess" in meta:  # a program edgekit wrote (a pruned .pt2): its record fixes the spec
        recorded = PreprocessSpec.from_dict(meta["preprocess"])
        spec, origins = resolve_spec(path, decl, fixed={k: getattr(recorded, k)
                                                        for k in PREPROCESS_KEYS},
                                     fixed_by="program's edgekit record")
    else:
        spec, origins = shaped_spec(shape, decl, path)
    module = _exported_module_class()(program.module(), shape[0] if shape else None)
    head = default_head()
    if exported_activation(program.graph) is not None:
        head["scores_are"] = "probs"
    return TorchSource(module=module, name=str(meta.get("architecture") or path.stem),
                       task=str(meta.get("task") or "multiclass"),
                       class_names=tuple(meta.get("class_names") or ()), spec=spec,
                       source=str(path), pretrained=True, spec_sources=origins, head=head,
                       metadata=meta)


def _program_metadata(path: Path, text: str) -> dict[str, Any]:
    """The JSON record edgekit writes beside a pruned program's graph ({} when absent)."""
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path}: its {PROGRAM_METADATA} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path}: its {PROGRAM_METADATA} is not a JSON object")
    return meta


_FINAL = {"softmax": "softmax", "_softmax": "softmax", "sigmoid": "sigmoid"}
_SHAPE_ONLY = ("view", "reshape", "flatten", "squeeze", "unsqueeze", "clone", "contiguous",
               "_unsafe_view", "alias")


def exported_activation(graph: Any) -> str | None:
    """"softmax" or "sigmoid" when an exported program's (first) output is computed by one,
    through shape-only ops; None otherwise."""
    out = next((n for n in graph.nodes if n.op == "output"), None)
    args = out.args[0] if out is not None and out.args else None
    node = args[0] if isinstance(args, tuple | list) and args else args
    while getattr(node, "op", None) == "call_function":
        name = getattr(getattr(node.target, "_overloadpacket", None), "__name__", "")
        if name in _FINAL:
            return _FINAL[name]
        if name not in _SHAPE_ONLY or not node.args:
            return None
        node = node.args[0]
    return None


@functools.cache
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


def is_torchscript(path: Path) -> bool:
    """A zip archive with a ``code/`` folder: what ``torch.jit.save`` writes."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.split("/", 2)[1:2] == ["code"] for n in zf.namelist())


def from_torchscript(path: Path, decl: DeclaredPreprocess | None) -> TorchScriptSource:
    import torch

    require_file(path)
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise DataError(f"{path}: not a readable TorchScript archive ({exc})") from exc
    spec, origins = shaped_spec(None, decl, path)
    return TorchScriptSource(module=module, name=path.stem, task="multiclass", class_names=(),
                             spec=spec, source=str(path), pretrained=True,
                             spec_sources=origins)

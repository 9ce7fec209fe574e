"""The ``Source``: a model a user hands edgekit, plus everything needed to use it.

Every stage after loading reads a ``Source`` and never the file it came from: its classes, its
task, how its outputs are read (``head``), its preprocessing spec, and two methods — ``predict``
(the source's own float32 outputs: what every artifact is held to) and ``onnx_file`` (the ONNX
graph the ONNX Runtime and OpenVINO backends convert from, where there is one). One subclass per
kind of model (``TorchSource``, ``TorchScriptSource``, ``OnnxSource``, ``KerasSource``); a
backend dispatches on ``kind`` and reads only the fields of that subclass.

Sources are immutable: ``with_classes`` and ``with_threshold`` return new ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import ConfigError, DataError
from edgekit.sources.declared import DeclaredPreprocess, resolve_spec, shape_facts


def default_head() -> dict[str, Any]:
    """Outputs are logits; a sigmoid head decides at 0.5."""
    return {"scores_are": "logits", "threshold": 0.5}


@dataclass(frozen=True, kw_only=True)
class Source:
    """What every kind of model source has in common.

    ``head`` says how to read the outputs: ``scores_are`` "logits" or "probs" (an in-graph
    softmax/sigmoid), the decision ``threshold`` of sigmoid heads (binary: one output unit;
    multi-label) and ``binary`` for a one-unit head over two classes.
    """

    kind: ClassVar[str] = ""  # "torch", "torchscript", "onnx", "keras": what backends dispatch on
    runtime: ClassVar[str] = ""  # what computes the source's own outputs (reports name it)
    runtime_label: ClassVar[str] = ""  # the same, for people
    timed_by_bench: ClassVar[bool] = False  # bench times it in a fresh process, like artifacts

    name: str
    task: str
    class_names: tuple[str, ...]
    spec: PreprocessSpec
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    head: dict[str, Any] = field(default_factory=default_head)
    # where each preprocessing value came from ("model", "--preprocess FILE", "--color",
    # "default", ...; ``edgekit.sources.declared``); empty when nobody recorded it
    spec_sources: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """The source model's own float32 outputs for a batch in the spec's layout."""
        raise NotImplementedError(f"{type(self).__name__}.predict")

    def onnx_file(self) -> Path | None:
        """The ONNX graph ONNX Runtime and OpenVINO convert from; None when the source is
        converted some other way (a PyTorch module is exported by each backend itself)."""
        return None

    def with_classes(self, class_names: tuple[str, ...]) -> Source:
        """Attach class names (from a data folder) to a source that has none, checking that
        the model's output width matches."""
        if self.class_names:
            return self
        width = self.predict(np.zeros(self.spec.input_shape(1), np.float32)).shape[-1]
        if width == 1 and len(class_names) == 2 and self.task != "multilabel":
            return dataclasses.replace(self, class_names=tuple(class_names),  # binary head
                                       head={**self.head, "binary": True})
        if width != len(class_names):
            raise DataError(f"{self.source} has {width} outputs but the data has "
                            f"{len(class_names)} classes ({', '.join(class_names)})")
        return dataclasses.replace(self, class_names=tuple(class_names))

    def with_class_order(self, class_names: tuple[str, ...]) -> Source:
        """This source with its outputs named ``class_names`` in that order (``--classes``),
        replacing any names the file carries; the output width must match."""
        names = tuple(class_names)
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"--classes must name each class once, got {', '.join(names)}")
        width = self.predict(np.zeros(self.spec.input_shape(1), np.float32)).shape[-1]
        if width != len(names) and not (width == 1 and len(names) == 2):
            raise ConfigError(f"--classes names {len(names)} classes but {self.source} has "
                              f"{width} outputs")
        return dataclasses.replace(self, class_names=()).with_classes(names)

    def with_threshold(self, threshold: float) -> Source:
        """This source with its sigmoid head's decision threshold set (a usage error
        otherwise)."""
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"--threshold must be a probability strictly between 0 and 1, "
                              f"got {threshold}")
        if self.task != "multilabel" and len(self.class_names) != 2:
            raise ConfigError(f"--threshold is for sigmoid heads (one output for two classes, "
                              f"or multi-label); {self.source} picks one of "
                              f"{len(self.class_names)} classes by arg-max")
        return dataclasses.replace(self, head={**self.head, "threshold": float(threshold)})


def require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"Model file not found: {path}")


def shaped_spec(shape: list[Any] | None, decl: DeclaredPreprocess | None,
                source: Path) -> tuple[PreprocessSpec, dict[str, str]]:
    """The spec of a model whose input shape is ``shape`` (None: unknown): what the shape fixes
    (size, layout, channels) from the model, the rest declared or edgekit's default ([0, 1]
    RGB NCHW, bilinear); and where each value came from."""
    return resolve_spec(source, decl, fixed=shape_facts(shape, source),
                        evidence=f"its input shape is {[d or '?' for d in shape]}" if shape else "")

"""Helpers shared by the backend test files (ONNX Runtime, OpenVINO): phantom calibration
streams, seeded zoo models at 64 px, eager references and INT8 soundness checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.data.preprocess import PreprocessSpec
from edgekit.sources import OnnxSource, Source, load_model
from edgekit.zoo import model_config

SIZE = 64
N_CALIB = 8
N_EVAL = 8
REPO = Path(__file__).resolve().parents[1]


class LazyImages:
    """CalibrationData the way edgekit's data layer provides it: files read on iteration."""

    def __init__(self, files: list[Path], spec: PreprocessSpec) -> None:
        self.files, self.spec = list(files), spec
        self.passes = 0
        self.loaded = 0

    def __iter__(self):
        self.passes += 1
        for f in self.files:
            self.loaded += 1
            yield self.spec.load(f)[None]

    def __len__(self) -> int:
        return len(self.files)


def zoo_model(name: str) -> Source:
    torch.manual_seed(0)
    return load_model(name, input_size=SIZE)


def calibration_for(name: str, files: dict[str, list[Path]], spec: PreprocessSpec) -> LazyImages:
    return LazyImages(files[model_config(name).modality][:N_CALIB], spec)


def eval_batch(name: str, files: dict[str, list[Path]], spec: PreprocessSpec) -> np.ndarray:
    chosen = files[model_config(name).modality][N_CALIB:N_CALIB + N_EVAL]
    return np.stack([spec.load(f) for f in chosen]).astype(np.float32)


def eager(model: Source, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.module(torch.from_numpy(batch)).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_int8_sound(fp32: np.ndarray, int8: np.ndarray) -> None:
    assert int8.shape == fp32.shape
    assert np.isfinite(int8).all()
    assert cosine(fp32, int8) > 0.9
    assert np.linalg.norm(int8 - fp32) < 0.3 * np.linalg.norm(fp32)
    assert int8.std(axis=0).max() > 0, "int8 logits do not depend on the input"


def onnx_source(model: Source, path: Path, *, dynamic_batch: bool) -> Source:
    """Export ``model`` to ``path`` the way a user would and wrap it as an "onnx" source."""
    pytest.importorskip("onnxscript", reason="pip install 'edgekit[torch]'")
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=64)},)
    torch.onnx.export(model.module, (torch.zeros(model.spec.input_shape(1)),), str(path),
                      dynamo=True, opset_version=18, external_data=False, verbose=False,
                      input_names=["pixels"], output_names=["scores"], **kwargs)
    return OnnxSource(path=path, name=model.name, task=model.task,
                      class_names=model.class_names, spec=model.spec, source=str(path))

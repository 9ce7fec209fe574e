"""Helpers shared by the backend test files (the contract test and one file per runtime):
phantom calibration streams, seeded zoo models at 64 px, ONE way to build hand-made sources,
eager references, INT8 soundness checks, and a store of exports made once per test session.

Exports are the slow part of these tests (a litert-torch conversion takes seconds), so every
(backend, model, precision) export the contract test and the runtime files need is made once by
``store()`` and shared: the runtime files assert what only their runtime does on the same files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgekit.backends import Artifact, ExportRequest, QuantOptions, get_backend
from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import BackendUnavailable
from edgekit.sources import OnnxSource, Source, TorchSource, load_model
from edgekit.zoo import model_config

SIZE = 64
N_CALIB = 8
N_EVAL = 8
REPO = Path(__file__).resolve().parents[1]
FAST = "dsconv_cbam_gap"  # the quickest zoo model: checks that need one model use it


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


def hand_made(module: Any, name: str, spec: PreprocessSpec, *, kind: str = "torch",
              onnx_path: Path | None = None, class_names: tuple[str, ...] = ("a", "b", "c"),
              source: str = "test", task: str = "multiclass") -> Source:
    """A source built by hand (no loader): the one place tests construct one."""
    common = {"name": name, "task": task, "class_names": class_names, "spec": spec,
              "source": source}
    if kind == "onnx":
        return OnnxSource(path=onnx_path, **common)
    return TorchSource(module=module, **common)


class Bessel(torch.nn.Module):
    """A model with an operator no converter lowers (``torch.special.i1e``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i1e(x).mean(dim=(2, 3))


def bessel_source() -> Source:
    return hand_made(Bessel().eval(), "bessel", PreprocessSpec(input_size=16))


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


def total_size(artifact: Artifact) -> int:
    return sum(f.stat().st_size for f in artifact.files)


def export(backend: Any, model: Source, precision: str, out: Path, stem: str,
           calibration=None, **options) -> Artifact:
    """``backend`` (a plugin or its registry name) exports ``model`` with QuantOptions(**options);
    the test is skipped when the converters that export needs are not installed."""
    plugin = get_backend(backend) if isinstance(backend, str) else backend
    try:
        return plugin.export(ExportRequest(model, precision, out, stem, calibration,
                                           QuantOptions(**options)))
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


def resized(source: Source, size: int) -> Source:
    """An "onnx" source whose preprocessing spec asks for ``size`` px (not what the file takes)."""
    return hand_made(None, source.name, source.spec.with_size(size), kind="onnx",
                     onnx_path=source.onnx_file(), class_names=source.class_names,
                     source=source.source, task=source.task)


def onnx_source(model: Source, path: Path, *, dynamic_batch: bool) -> Source:
    """Export ``model`` to ``path`` the way a user would and wrap it as an "onnx" source."""
    pytest.importorskip("onnxscript", reason="pip install 'edgekit[torch]'")
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=64)},)
    torch.onnx.export(model.module, (torch.zeros(model.spec.input_shape(1)),), str(path),
                      dynamo=True, opset_version=18, external_data=False, verbose=False,
                      input_names=["pixels"], output_names=["scores"], **kwargs)
    return hand_made(None, model.name, model.spec, kind="onnx", onnx_path=path,
                     class_names=model.class_names, source=str(path), task=model.task)


def run_without_torch(backend: str, paths: Iterable[Path], x: np.ndarray, work: Path,
                      threads: int = 1) -> dict[str, Any]:
    """Open and run ``paths`` with ``backend`` in a fresh interpreter where torch and the
    converters cannot import and HOME is an empty folder.

    Returns ``outputs`` (one array per path), ``heavy`` (converter/training modules that got
    imported), ``telemetry`` (OpenVINO's telemetry module stayed unimportable), ``precision``
    (each session's ``inference_precision``), ``available`` and ``home`` (files written there).
    """
    paths = [str(p) for p in paths]
    np.save(work / "x.npy", x)
    script = textwrap.dedent(f"""
        import json, sys
        for name in ("torch", "torchao", "litert_torch", "tensorflow"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import numpy as np
        from edgekit.backends import get_backend
        backend = get_backend({backend!r})
        x = np.load({str(work / 'x.npy')!r})
        precision = []
        for i, path in enumerate({paths!r}):
            session = backend.open(path, threads={threads})
            np.save({str(work)!r} + f"/y{{i}}.npy", session.run(x))
            precision.append(session.inference_precision)
        heavy = sorted(m for m in ("torch", "torchao", "litert_torch", "tensorflow", "onnx",
                                   "onnxscript", "nncf") if sys.modules.get(m))
        print(json.dumps({{"heavy": heavy, "precision": precision,
                           "available": backend.available(),
                           "telemetry": sys.modules.get("openvino_telemetry") is None}}))
    """)
    home = work / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home),  # OpenVINO telemetry keeps its files in ~/intel
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["outputs"] = [np.load(work / f"y{i}.npy") for i in range(len(paths))]
    report["home"] = sorted(p.name for p in home.iterdir())
    return report


@dataclass
class Reexport:
    """A second export of artifacts the Store holds: (first, again) pairs, what the exports
    printed on stdout, and the two converter environment variables afterwards."""

    pairs: list[tuple[Artifact, Artifact]]
    stdout: str
    environ: dict[str, str | None]


class Store:
    """Zoo models and exports made once per test session, shared by every backend test file.

    Each export gets a folder of its own (``root/backend/model/stem``), so a test can check that
    an export wrote its artifact files and nothing else. ``calibration[key]`` is the stream an
    int8 export read (to check it was streamed, not collected).
    """

    def __init__(self, root: Path, files: dict[str, list[Path]]) -> None:
        self.root, self.files = root, files
        self.models: dict[Any, Source] = {}
        self.artifacts: dict[tuple[Any, ...], Artifact] = {}
        self.calibration: dict[tuple[Any, ...], LazyImages] = {}
        self.reexports: dict[str, Reexport] = {}
        self.torch_free_runs: dict[str, dict[str, Any]] = {}

    def model(self, name: str) -> Source:
        if name not in self.models:
            self.models[name] = zoo_model(name)
        return self.models[name]

    def batch(self, name: str) -> np.ndarray:
        return eval_batch(name, self.files, self.model(name).spec)

    def export(self, backend: str, name: str, precision: str, **options) -> Artifact:
        key = (backend, name, precision, *sorted(options.items()))
        if key not in self.artifacts:
            model = self.model(name)
            stem = "-".join([f"{name}-{precision}", *(f"{k}={v}" for k, v in sorted(
                options.items()))])
            calibration = None
            if precision == "int8":
                calibration = self.calibration[key] = calibration_for(name, self.files,
                                                                      model.spec)
            self.artifacts[key] = export(backend, model, precision,
                                         self.root / backend / name / stem, stem, calibration,
                                         **options)
        return self.artifacts[key]

    def reexport(self, backend: str, capfd: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> Reexport:
        """``FAST`` exported again in fp32 and int8 (once per session), with a changed
        environment the export must leave as it found it, and its stdout."""
        if backend not in self.reexports:
            plugin = get_backend(backend)
            first = [self.export(backend, FAST, p) for p in ("fp32", "int8")
                     if p in plugin.precisions]
            monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
            monkeypatch.delenv("LITERT_TORCH_SHOW_PROGRESS", raising=False)
            capfd.readouterr()
            pairs = [(a, export(plugin, self.model(FAST), a.precision,
                                self.root / "again" / backend / a.precision, a.path.stem,
                                self.calibration.get((backend, FAST, a.precision))))
                     for a in first]
            self.reexports[backend] = Reexport(pairs, capfd.readouterr().out, {
                k: os.environ.get(k) for k in ("TF_CPP_MIN_LOG_LEVEL",
                                               "LITERT_TORCH_SHOW_PROGRESS")})
        return self.reexports[backend]

    def torch_free_run(self, backend: str) -> dict[str, Any]:
        """``run_without_torch`` on FAST's fp32 and int8 artifacts (once per session), plus
        ``artifacts`` (the artifacts it ran) and ``x`` (the input)."""
        if backend not in self.torch_free_runs:
            plugin = get_backend(backend)
            arts = [self.export(backend, FAST, p) for p in ("fp32", "int8")
                    if p in plugin.precisions]
            x = self.batch(FAST)[:2]
            work = self.root / "torch-free" / backend
            work.mkdir(parents=True)
            report = run_without_torch(backend, [a.path for a in arts], x, work)
            self.torch_free_runs[backend] = {**report, "artifacts": arts, "x": x}
        return self.torch_free_runs[backend]

    def onnx_source(self, name: str, *, dynamic_batch: bool) -> Source:
        """The zoo model ``name`` as a user's ONNX file (exported once), as an "onnx" source."""
        path = self.root / "onnx" / f"{name}-{'dynamic' if dynamic_batch else 'static'}.onnx"
        key = ("onnx-source", str(path))
        if key not in self.models:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.models[key] = onnx_source(self.model(name), path, dynamic_batch=dynamic_batch)
        return self.models[key]


_STORE: list[Store] = []


def store(tmp_path_factory: pytest.TempPathFactory, files: dict[str, list[Path]]) -> Store:
    """The session's Store (made on first use; module fixtures in each test file return it)."""
    if not _STORE:
        _STORE.append(Store(tmp_path_factory.mktemp("backend-exports"), files))
    return _STORE[0]

"""Shared fixtures: small synthetic phantom datasets (generated once per session) and helpers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_manifest import image, tiny  # noqa: F401  (the tiny bundle and image fixtures, shared)

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """The real Kaggle Training folder: $EDGEKIT_DATA_DIR or ../shared/data, if present."""
    base = os.environ.get("EDGEKIT_DATA_DIR")
    candidates = [Path(base)] if base else [REPO.parent / "shared" / "data"]
    for c in candidates:
        for p in (c / "brain-tumor-mri" / "Training", c / "Training", c):
            if p.is_dir() and (p / "glioma").is_dir():
                return p
    return None


def _xdist_group(module: object) -> str | None:
    """The pytest-xdist worker group of a test module's tests (``--dist loadgroup`` in
    scripts/test.sh), else None (each test goes where a worker is free).

    - Every module that reads ``backend_support``'s export Store: one group. The Store exports
      each (backend, model, precision) once per process; split over two workers, 77 of 231 s
      of its exports (mostly LiteRT int8 conversions) were done twice.
    - A module with a module-scoped fixture: a group of its own, so the fixture is built once
      (the trained Keras model and its three-backend bundle, 37 s, was built on both workers).
    """
    if any(getattr(v, "__module__", None) == "backend_support" for v in vars(module).values()):
        return "backend-exports"
    for v in vars(module).values():
        marker = (getattr(v, "_fixture_function_marker", None)
                  or getattr(v, "_pytestfixturefunction", None))
        if marker is not None and marker.scope == "module":
            return module.__name__
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        group = _xdist_group(module) if module is not None else None
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def real_mri() -> Path:
    path = real_data_dir()
    if path is None:
        pytest.skip("real brain-tumour MRI data not found: set EDGEKIT_DATA_DIR or put it at "
                    "../shared/data/brain-tumor-mri/Training")
    return path


@pytest.fixture(scope="session")
def mri_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 synthetic MRI phantoms per class at 64 px (read-only: copy before modifying)."""
    from edgekit.data.phantoms import generate_mri_dataset

    out = tmp_path_factory.mktemp("mri") / "data"
    generate_mri_dataset(out, n_per_class=32, size=64, seed=1)
    return out


@pytest.fixture(scope="session")
def ct_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 synthetic head-CT DICOM slices at 64 px with RSNA labels (read-only)."""
    from edgekit.data.phantoms import generate_ct_dataset

    out = tmp_path_factory.mktemp("ct") / "data"
    generate_ct_dataset(out, n=48, size=64, seed=1)
    return out


@pytest.fixture
def mri_copy(mri_phantoms: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the MRI phantoms (for corrupting files)."""
    dst = tmp_path / "data"
    shutil.copytree(mri_phantoms, dst)
    return dst


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread():
    """One torch thread for the whole session: every test net is tiny, so intra-op threads buy
    nothing, and on a 2-core machine shared with other processes two threads spin against each
    other (measured: a dsconv_cbam_gap epoch on the real MRI data takes 20 s with two threads,
    4.4 s with one). The backend tests still name it (``usefixtures``); it is on for all."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantom_files(mri_phantoms: Path, ct_phantoms: Path) -> dict[str, list[Path]]:
    """A few phantom files per modality: every MRI class interleaved, all CT slices."""
    return {"mri": sorted(mri_phantoms.rglob("*.jpg"))[::4],
            "ct": sorted(ct_phantoms.glob("*.dcm"))}


@pytest.fixture(scope="session")
def trained(mri_phantoms, tmp_path_factory) -> Path:
    """dsconv_cbam_gap trained for 2 epochs on the 64 px MRI phantoms (an edgekit checkpoint)."""
    from edgekit.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "model.pt"
    train(TrainConfig(model="dsconv_cbam_gap", data=str(mri_phantoms), out=str(out), epochs=2,
                      input_size=64, batch_size=16, lr=3e-3))
    return out


@pytest.fixture(scope="session")
def bundle_options() -> dict:
    """The ``compress`` settings of ``bundle`` (for a test that compresses the same again)."""
    return {"recipe": "int8", "calibration_images": 16, "verification_images": 24,
            "allow_accuracy_drop": True}


@pytest.fixture(scope="session")
def bundle(trained, mri_phantoms, bundle_options, tmp_path_factory) -> Path:
    """An int8 bundle of ``trained`` with all three backends (64 px; shared by the bench, SSH,
    emulation, prediction and compress tests; read-only)."""
    from edgekit.compress import compress

    out = tmp_path_factory.mktemp("bundles") / "model-int8"
    compress(trained, data=mri_phantoms, out=out, **bundle_options)
    return out


@pytest.fixture(scope="session")
def fp32_bundle(trained, mri_phantoms, tmp_path_factory) -> Path:
    from edgekit.compress import compress

    out = tmp_path_factory.mktemp("bundles") / "model-fp32"
    compress(trained, data=mri_phantoms, out=out, recipe="fp32", verification_images=24,
             backends=["onnxruntime"])
    return out


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 (``tests/sshd.py``); skips when sshd is absent."""
    from sshd import serve

    yield from serve(tmp_path_factory)


@pytest.fixture
def cli():
    """``cli("bench", path, code=2)``: run the CLI in-process and assert its exit code."""
    from cli_support import run_cli

    return run_cli

"""Choose calibration and verification images, and stream them through the preprocessing spec.

Calibration images and verification images never overlap. When the model is an edgekit
checkpoint trained on the same folder, verification uses the checkpoint's own held-out files
(never trained on) and calibration draws from the training files; otherwise the folder is split
(seeded, stratified, de-duplicated). Both draws are stratified by class and seeded, so the same
seed and data give the same images — and byte-identical artifacts where a backend allows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.data.folder import Dataset, Sample, files_digest, scan, split_dataset
from edgekit.data.preprocess import PreprocessSpec, small_images_warning
from edgekit.errors import DataError
from edgekit.ui import progress_bar


def stratified_sample(samples: Sequence[Sample], n: int, seed: int) -> list[Sample]:
    """``n`` samples spread over the strata in proportion (at least one each), seeded."""
    if n >= len(samples):
        return sorted(samples, key=lambda s: s.path.as_posix())
    rng = np.random.default_rng(seed)
    by: dict[int, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.path.as_posix()):
        by.setdefault(s.stratum, []).append(s)
    total = len(samples)
    keys = sorted(by)
    exact = {k: n * len(by[k]) / total for k in keys}
    quota = {k: min(len(by[k]), max(1, int(exact[k]))) for k in keys}
    # largest remainder first, until exactly n (every stratum keeps at least one)
    order = sorted(keys, key=lambda k: (exact[k] - int(exact[k]), -k), reverse=True)
    while sum(quota.values()) < n:
        grew = False
        for k in order:
            if sum(quota.values()) < n and quota[k] < len(by[k]):
                quota[k] += 1
                grew = True
        if not grew:
            break
    while sum(quota.values()) > n:
        quota[max(quota, key=quota.get)] -= 1
    picked: list[Sample] = []
    for k in sorted(by):
        items = by[k]
        idx = rng.permutation(len(items))[: min(quota[k], len(items))]
        picked.extend(items[i] for i in sorted(idx))
    return sorted(picked, key=lambda s: s.path.as_posix())


class StreamedImages:
    """Re-iterable, sized stream of preprocessed (1, ...) float32 inputs, read lazily.

    Memory stays flat in the number of images. ``progress`` receives the running count of each
    pass (backends may iterate several times).
    """

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec,
                 progress: Callable[[int], None] | None = None) -> None:
        self.samples = list(samples)
        self.spec = spec
        self.progress = progress

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i, s in enumerate(self.samples, start=1):
            yield self.spec.load(s.path)[None]
            if self.progress:
                self.progress(i)


@dataclass
class DataPlan:
    """Which images calibrate and which verify, and where that choice came from."""

    dataset: Dataset
    calibration: list[Sample]
    verification: list[Sample]
    origin: str  # "checkpoint held-out split" or "seeded split of --data"
    skipped: list[str]
    train_pool: list[Sample] = field(default_factory=list)  # every non-verification image

    def with_calibration(self, n: int, seed: int, spec: PreprocessSpec,
                         on_error: str) -> DataPlan:
        """A copy drawing ``n`` calibration images from the same non-verification pool with the
        same seed (what ``plan_data`` would pick for ``n``); verification and split unchanged.
        Only the newly chosen images are decoded."""
        calibration, bad = draw_calibration(self.train_pool, n, seed, spec, on_error)
        return DataPlan(self.dataset, calibration, list(self.verification), self.origin,
                        list(self.skipped) + bad, list(self.train_pool))

    def describe(self) -> dict[str, Any]:
        root = self.dataset.root
        return {"data_root": str(root), "origin": self.origin,
                "calibration_images": len(self.calibration),
                "calibration_files_sha256": files_digest(self.calibration, root),
                "verification_images": len(self.verification),
                "verification_files_sha256": files_digest(self.verification, root),
                "skipped_files": self.skipped}


def draw_calibration(pool: Sequence[Sample], n: int, seed: int, spec: PreprocessSpec,
                     on_error: str) -> tuple[list[Sample], list[str]]:
    """``n`` stratified, seeded calibration images of ``pool`` and the files skipped as unreadable.
    They are decoded once here so a corrupt file fails before any conversion; verification images
    are checked when compress loads them (load_arrays), not twice."""
    return check_readable(stratified_sample(pool, n, seed), spec, on_error, "calibration")


def check_readable(samples: list[Sample], spec: PreprocessSpec, on_error: str,
                    what: str) -> tuple[list[Sample], list[str]]:
    """Decode each chosen image once, before any conversion starts (fail early, by path)."""
    kept, skipped = [], []
    small: list[Path] = []
    with progress_bar(f"Checking {what} images", len(samples)) as bar:
        for s in samples:
            try:
                spec.load(s.path, small)
                kept.append(s)
            except DataError as exc:
                if on_error == "fail":
                    raise
                warnings.warn(f"skipping {exc}", stacklevel=2)
                skipped.append(str(s.path))
            bar.advance()
    note = small_images_warning(small, len(kept), spec)
    if note:
        warnings.warn(f"{what} images: {note}", stacklevel=2)
    return kept, skipped


def plan_data(loaded: Any, data: str | Path, *, calibration_images: int,
              verification_images: int | None, seed: int, on_error: str = "skip",
              calibration_only: bool = False) -> DataPlan:
    """Pick disjoint, stratified, seeded calibration and verification images from ``data``.

    ``verification_images`` None: every image of the verification side. ``calibration_only``:
    the non-verification images serve only calibration (no pruning recovery trains on them),
    so a seeded split of the folder leaves ~1.25 × ``calibration_images`` on that side and
    verifies on all the rest (at least 30 % of the folder either way)."""
    dataset = scan(data, task=loaded.task, on_error=on_error,
                   expected_classes=None if loaded.task == "multilabel" else loaded.class_names)
    split = loaded.metadata.get("split") or {}
    val_files = set(split.get("val_files") or [])
    rel = {dataset.relative(s): s for s in dataset.samples}
    if val_files and val_files <= set(rel):
        verify_pool = [rel[f] for f in sorted(val_files)]
        calib_pool = [s for f, s in rel.items() if f not in val_files]
        origin = "held-out split recorded in the checkpoint (never trained on)"
    else:
        with progress_bar("Hashing images (near-duplicate check)", len(dataset)) as bar:
            share = 0.3
            if calibration_only and len(dataset):
                share = min(0.9, max(0.3, 1 - 1.25 * calibration_images / len(dataset)))
            sp = split_dataset(dataset, val_fraction=share, seed=seed, on_error=on_error,
                               progress=bar.set)
        calib_pool, verify_pool = sp.train.samples, sp.val.samples
        origin = "seeded, stratified, de-duplicated split of the data folder"
    if not verify_pool:
        raise DataError(f"{dataset.root}: no images left for verification")
    verification = stratified_sample(verify_pool, len(verify_pool) if verification_images is None
                                     else verification_images, seed + 1)
    calibration, bad = draw_calibration(calib_pool, calibration_images, seed, loaded.spec,
                                        on_error)
    if not calibration or not verification:
        raise DataError(f"{dataset.root}: no readable images for calibration/verification")
    return DataPlan(dataset, calibration, verification, origin,
                    [str(p) for p, _ in dataset.skipped] + bad, list(calib_pool))

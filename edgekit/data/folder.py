"""Class-per-folder datasets (the Kaggle Brain Tumor MRI layout) and CT folders with RSNA labels.

``scan_folder`` lists ``root/<class>/*`` without decoding anything; ``hash_images`` decodes each
file once (which also finds corrupt ones) and computes a 64-bit perceptual hash (dHash);
``split_dataset`` removes near-duplicates and makes a seeded, stratified train/validation split
so that validation accuracy is not inflated by copies of training images.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from edgekit.data.dicom import BRAIN_WINDOW, ICH_LABELS, is_dicom, read_hu, read_rsna_labels
from edgekit.data.preprocess import DICOM_EXTENSIONS, RASTER_EXTENSIONS, gray_pixels, open_image
from edgekit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ON_ERROR = ("skip", "fail")


@dataclass(frozen=True)
class Sample:
    """One file and its target: a class index (multiclass) or a 0/1 vector (multilabel)."""

    path: Path
    target: int | tuple[float, ...]

    @property
    def stratum(self) -> int:
        """The class used to stratify splits (for multilabel: the first label, e.g. ``any``)."""
        return self.target if isinstance(self.target, int) else int(self.target[0] > 0.5)


@dataclass
class Dataset:
    """A scanned dataset: its samples, class names, task and the files that were skipped."""

    root: Path
    classes: tuple[str, ...]
    samples: list[Sample]
    task: str = "multiclass"  # or "multilabel"
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def counts(self) -> dict[str, int]:
        """Samples per class (multilabel: positives per label)."""
        if self.task == "multilabel":
            totals = np.sum([s.target for s in self.samples], axis=0) if self.samples else []
            return {c: int(t) for c, t in zip(self.classes, totals, strict=False)}
        out = dict.fromkeys(self.classes, 0)
        for s in self.samples:
            out[self.classes[s.target]] += 1
        return out

    def subset(self, samples: Sequence[Sample]) -> Dataset:
        return Dataset(self.root, self.classes, list(samples), self.task, [])

    def relative(self, sample: Sample) -> str:
        return sample.path.relative_to(self.root).as_posix()


def files_digest(samples: Sequence[Sample], root: Path) -> str:
    """sha256 over the samples' paths relative to ``root``: records which images were used.

    Names are hashed as the bytes the file system holds (``os.fsencode``), so a file name that
    is not UTF-8 (Linux names are bytes) hashes too; UTF-8 names give the digest they always had.
    """
    names = b"\n".join(os.fsencode(s.path.relative_to(root).as_posix()) for s in samples)
    return hashlib.sha256(names).hexdigest()


def _skip_or_fail(path: Path, reason: str, on_error: str, skipped: list[tuple[Path, str]]) -> None:
    if on_error == "fail":
        raise DataError(f"{path}: {reason}")
    warnings.warn(f"skipping {path}: {reason}", stacklevel=3)
    skipped.append((path, reason))


def _check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"Data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"Data path is not a folder: {root}")
    return root


def scan_folder(root: str | Path, *, on_error: str = "skip",
                expected_classes: Sequence[str] | None = None) -> Dataset:
    """List a class-per-folder dataset: ``root/<class>/<image files>`` (nested folders allowed).

    Files whose extension is not an image are reported by path and skipped (``on_error="skip"``,
    a warning) or raise DataError (``"fail"``); hidden files are ignored. An empty class folder,
    fewer than two classes, or a class set different from ``expected_classes`` is a DataError.
    With ``expected_classes`` (the model's output order), each image's target is its class's
    index in THAT order, and the dataset's classes are in that order; otherwise folders are
    sorted by name.
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    root = _check_root(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = [p.name for p in class_dirs]
    if {"Training", "Testing"} <= set(names):
        raise DataError(
            f"{root} holds Training/ and Testing/ folders: pass one of them, "
            f"e.g. {root / 'Training'}")
    if len(class_dirs) < 2:
        found = f"only {names[0]!r}" if names else "none"
        raise DataError(
            f"{root}: need at least 2 class folders (root/<class>/<images>), found {found}")
    if expected_classes is not None and sorted(expected_classes) != names:
        missing = sorted(set(expected_classes) - set(names))
        extra = sorted(set(names) - set(expected_classes))
        raise DataError(
            f"{root}: class folders do not match the model's classes "
            f"({', '.join(expected_classes)}); missing: {', '.join(missing) or '-'}; "
            f"unexpected: {', '.join(extra) or '-'}")
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    allowed = RASTER_EXTENSIONS + DICOM_EXTENSIONS
    order = list(expected_classes) if expected_classes is not None else names
    for cdir in class_dirs:
        idx = order.index(cdir.name)
        files = sorted(p for p in cdir.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(cdir).parts))
        images = []
        for f in files:
            if f.suffix.lower() in allowed:
                images.append(f)
            else:
                _skip_or_fail(f, f"not an image file (extension {f.suffix or 'none'!r})",
                              on_error, skipped)
        if not images:
            raise DataError(f"Class folder {cdir} contains no images")
        samples.extend(Sample(f, idx) for f in images)
    return Dataset(root, tuple(order), samples, "multiclass", skipped)


def scan_ct_folder(root: str | Path, *, labels_csv: str | Path | None = None,
                   on_error: str = "skip") -> Dataset:
    """List a head-CT folder: ``root/**/ID_<hex>.dcm`` plus RSNA labels (``root/labels.csv``).

    Every slice in the label file must exist; a DICOM without labels is skipped with a warning
    (or fails with ``on_error="fail"``).
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    root = _check_root(root)
    labels = read_rsna_labels(Path(labels_csv) if labels_csv else root / "labels.csv")
    files = {p.stem: p for p in sorted(root.rglob("*")) if p.is_file() and is_dicom(p)}
    missing = sorted(set(labels) - set(files))
    if missing:
        raise DataError(f"{root}: {len(missing)} labelled slice(s) have no DICOM file, "
                        f"e.g. {missing[0]}.dcm")
    skipped: list[tuple[Path, str]] = []
    for stem in sorted(set(files) - set(labels)):
        _skip_or_fail(files[stem], "no labels for this slice in labels.csv", on_error, skipped)
    samples = [Sample(files[k], tuple(float(v) for v in labels[k])) for k in sorted(labels)]
    if not samples:
        raise DataError(f"{root}: no labelled DICOM slices found")
    return Dataset(root, ICH_LABELS, samples, "multilabel", skipped)


def scan(root: str | Path, *, task: str = "multiclass", on_error: str = "skip",
         expected_classes: Sequence[str] | None = None) -> Dataset:
    """Scan ``root`` the way ``task`` expects: class folders, or a CT folder with labels.csv."""
    if task == "multilabel":
        return scan_ct_folder(root, on_error=on_error)
    return scan_folder(root, on_error=on_error, expected_classes=expected_classes)


# --------------------------------------------------------------------------- perceptual hashing
HASH_ROWS = 16  # a 16 × 17 difference hash: 256 bits (64-bit hashes collide on brain MRI slices)
HASH_BITS = HASH_ROWS * HASH_ROWS
HASH_MARGIN = 1.0  # grey levels: differences within ±1 count as "not brighter" (JPEG noise, flat areas)


def _dhash_gray(img) -> bytes:
    """dHash computed in float with a small dead zone, so re-encoding and contrast changes of
    flat regions (black background) do not flip bits."""
    small = np.asarray(img.convert("F").resize((HASH_ROWS + 1, HASH_ROWS),
                                               Image.Resampling.BILINEAR), dtype=np.float32)
    return np.packbits((small[:, 1:] - small[:, :-1]) > HASH_MARGIN).tobytes()


def dhash_file(path: Path) -> bytes:
    """Decode one image (raster or CT DICOM) and return its 256-bit dHash; DataError if corrupt."""
    if is_dicom(path):
        return _dhash_gray(Image.fromarray((BRAIN_WINDOW.apply(read_hu(path)) * 255).astype(np.uint8)))
    image = open_image(path)
    try:  # at the file's full bit depth, on the 8-bit scale (16-bit scans are not clipped)
        return _dhash_gray(Image.fromarray(gray_pixels(image)))
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc


def hash_images(dataset: Dataset, *, on_error: str = "skip",
                progress: Callable[[int], None] | None = None) -> dict[Path, bytes]:
    """Decode every image once: returns ``{path: dHash}`` and drops corrupt files from ``dataset``.

    Corrupt files are reported by path: skipped with a warning, or DataError with ``"fail"``.
    """
    hashes: dict[Path, bytes] = {}
    kept: list[Sample] = []
    for i, s in enumerate(dataset.samples, start=1):
        try:
            hashes[s.path] = dhash_file(s.path)
            kept.append(s)
        except DataError as exc:
            if on_error == "fail":
                raise
            _skip_or_fail(s.path, str(exc).removeprefix(f"{s.path}: "), on_error, dataset.skipped)
        if progress:
            progress(i)
    dataset.samples = kept
    return hashes


def near_duplicate_groups(hashes: Sequence[bytes], max_distance: int) -> list[list[int]]:
    """Group indices whose hashes differ in at most ``max_distance`` bits (transitively)."""
    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n:
        h = np.frombuffer(b"".join(hashes), dtype=np.uint64).reshape(n, -1)
        chunk = 256
        for start in range(0, n, chunk):
            dist = np.bitwise_count(h[start:start + chunk, None, :] ^ h[None, :, :]).sum(-1)
            rows, cols = np.nonzero(dist <= max_distance)
            for r, c in zip(rows + start, cols, strict=True):
                if c > r:
                    a, b = find(int(r)), find(int(c))
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


# --------------------------------------------------------------------------- splitting
@dataclass
class Split:
    """A seeded, stratified, leak-free train/validation split and what it removed."""

    train: Dataset
    val: Dataset
    seed: int
    val_fraction: float
    duplicate_distance: int | None
    group_distance: int | None
    duplicates_removed: int = 0
    conflicting_removed: int = 0
    similar_groups: int = 0

    def summary(self) -> dict:
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "train": len(self.train),
            "val": len(self.val),
            "hash": f"dhash{HASH_BITS}",
            "duplicate_distance": self.duplicate_distance,
            "group_distance": self.group_distance,
            "duplicates_removed": self.duplicates_removed,
            "conflicting_label_images_removed": self.conflicting_removed,
            "similar_groups_kept_together": self.similar_groups,
            "skipped_files": [str(p) for p, _ in self.train.skipped],
            "val_files_sha256": files_digest(self.val.samples, self.val.root),
        }


def split_dataset(dataset: Dataset, *, val_fraction: float = 0.2, seed: int = 0,
                  dedup: bool = True, duplicate_distance: int = 8, group_distance: int = 16,
                  on_error: str = "skip", progress: Callable[[int], None] | None = None) -> Split:
    """De-duplicate with a perceptual hash, then split per class with a seeded shuffle.

    Two thresholds on the 256-bit dHash (measured on the Kaggle Training folder, where 64-bit
    hashes collide and copies differ only in contrast or crop):

    - ``duplicate_distance`` (default 8 bits): copies. Each group keeps one image (the first by
      path); a group whose copies carry different labels is dropped whole.
    - ``group_distance`` (default 16 bits): near-identical slices (e.g. neighbouring slices of one
      scan). They are kept, but a whole group goes to the same side of the split, so validation
      never sees a near-copy of a training image. (At 24 bits, transitive chaining already
      merged 159 different Kaggle images into one group.)

    Stratified by class (multilabel: by the first label); every class with two or more images
    keeps at least one on each side. ``dedup=False`` splits the raw files.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    hashes = hash_images(dataset, on_error=on_error, progress=progress)
    samples = sorted(dataset.samples, key=lambda s: s.path.as_posix())
    removed = conflicting = 0
    if dedup:
        keep: list[Sample] = []
        for g in near_duplicate_groups([hashes[s.path] for s in samples], duplicate_distance):
            if len({samples[i].target for i in g}) > 1:
                conflicting += len(g)
                continue
            keep.append(samples[min(g)])
            removed += len(g) - 1
        samples = sorted(keep, key=lambda s: s.path.as_posix())
        groups = near_duplicate_groups([hashes[s.path] for s in samples], group_distance)
    else:
        groups = [[i] for i in range(len(samples))]
    rng = np.random.default_rng(seed)
    by_stratum: dict[int, list[list[int]]] = {}
    for g in groups:
        strata = [samples[i].stratum for i in g]
        by_stratum.setdefault(max(set(strata), key=strata.count), []).append(g)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for stratum in sorted(by_stratum):
        gs = [by_stratum[stratum][k] for k in rng.permutation(len(by_stratum[stratum]))]
        target = int(round(sum(len(g) for g in gs) * val_fraction))
        chosen: list[list[int]] = []
        n_val = 0
        for g in gs:  # greedy fill in seeded order; a group never straddles the split
            if n_val + len(g) <= target:
                chosen.append(g)
                n_val += len(g)
        if not chosen and len(gs) > 1:
            chosen = [min(gs, key=len)]
        for g in gs:
            (val_idx if any(g is c for c in chosen) else train_idx).extend(g)
    if not train_idx or not val_idx:
        raise DataError(
            f"{dataset.root}: too few distinct images to split ({len(samples)} after removing "
            f"{removed} near-duplicates)")
    train = sorted((samples[i] for i in train_idx), key=lambda s: s.path.as_posix())
    val = sorted((samples[i] for i in val_idx), key=lambda s: s.path.as_posix())
    tr, va = dataset.subset(train), dataset.subset(val)
    tr.skipped = list(dataset.skipped)
    similar = sum(1 for g in groups if len(g) > 1)
    return Split(tr, va, seed, val_fraction, duplicate_distance if dedup else None,
                 group_distance if dedup else None, removed, conflicting, similar)

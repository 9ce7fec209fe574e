"""Head CT DICOM → Hounsfield units → stacked intensity windows.

The efficient ICH network (SEED_MODELS.md §3) reads CT slices as three windows stacked as
channels: brain (L40/W80), subdural (L80/W200) and bone (L600/W2800). Hounsfield units are
``pixel * RescaleSlope + RescaleIntercept``. Labels follow the RSNA ICH layout
(``ID,Label`` rows ``ID_<hex>_<subtype>,0|1``, six rows per slice).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import DataError

ICH_LABELS: tuple[str, ...] = (
    "any",
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
ICH_SUBTYPES: tuple[str, ...] = ICH_LABELS[1:]


@dataclass(frozen=True)
class CTWindow:
    """A display window in Hounsfield units: values map linearly from level±width/2 to [0, 1]."""

    name: str
    level: float
    width: float

    def apply(self, hu: np.ndarray) -> np.ndarray:
        lo = self.level - self.width / 2.0
        return np.clip((hu.astype(np.float32) - lo) / float(self.width), 0.0, 1.0)


BRAIN_WINDOW = CTWindow("brain", 40.0, 80.0)
SUBDURAL_WINDOW = CTWindow("subdural", 80.0, 200.0)
BONE_WINDOW = CTWindow("bone", 600.0, 2800.0)
DEFAULT_CT_WINDOWS: tuple[CTWindow, ...] = (BRAIN_WINDOW, SUBDURAL_WINDOW, BONE_WINDOW)


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm`` file or any file with the DICOM preamble magic ``DICM`` at byte 128."""
    p = Path(path)
    if p.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(p, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_hu(path: str | Path) -> np.ndarray:
    """Read one CT slice and return Hounsfield units as a float32 (H, W) array.

    Raises DataError naming the file when it is not a readable single-frame DICOM image.
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as exc:  # pragma: no cover - pydicom is a core dependency
        raise DataError("Reading DICOM needs pydicom: pip install pydicom") from exc
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except (InvalidDicomError, AttributeError, ValueError, KeyError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable DICOM image ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # pydicom raises assorted errors on truncated pixel data
        raise DataError(f"{path}: not a readable DICOM image ({type(exc).__name__}: {exc})") from exc
    if pixels.ndim != 2:
        raise DataError(f"{path}: expected a single-frame 2-D slice, got pixel array {pixels.shape}")
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return pixels.astype(np.float32) * slope + intercept


def stack_windows(hu: np.ndarray, windows: tuple[CTWindow, ...] = DEFAULT_CT_WINDOWS) -> np.ndarray:
    """Stack each window of an (H, W) HU slice as a channel: float32 (len(windows), H, W) in [0, 1]."""
    return np.stack([w.apply(hu) for w in windows], axis=0).astype(np.float32)


def read_rsna_labels(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Read an RSNA ICH label file into ``{slice_id: float32 vector in ICH_LABELS order}``.

    Rows are ``ID_<hex>_<subtype>,<0|1>``; the slice id is ``ID_<hex>``. A slice missing one of
    the six rows, an unknown subtype or a label other than 0/1 is a DataError naming the line.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: label file not found")
    index = {name: i for i, name in enumerate(ICH_LABELS)}
    labels: dict[str, np.ndarray] = {}
    seen: dict[str, set[str]] = {}
    with open(csv_path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ID", "Label"]:
            raise DataError(f"{csv_path}: expected an 'ID,Label' header, got {header}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise DataError(f"{csv_path}:{lineno}: expected 'ID_<hex>_<subtype>,<0|1>'")
            ident, value = row[0].strip(), row[1].strip()
            slice_id, _, subtype = ident.rpartition("_")
            if subtype not in index or not slice_id:
                raise DataError(f"{csv_path}:{lineno}: unknown subtype in {ident!r} (expected one of {', '.join(ICH_LABELS)})")
            if value not in ("0", "1"):
                raise DataError(f"{csv_path}:{lineno}: label must be 0 or 1, got {value!r}")
            vec = labels.setdefault(slice_id, np.zeros(len(ICH_LABELS), dtype=np.float32))
            vec[index[subtype]] = float(value)
            seen.setdefault(slice_id, set()).add(subtype)
    for slice_id, subtypes in seen.items():
        if len(subtypes) != len(ICH_LABELS):
            missing = sorted(set(ICH_LABELS) - subtypes)
            raise DataError(f"{csv_path}: slice {slice_id} lacks rows for {', '.join(missing)}")
    return labels


def write_rsna_labels(csv_path: str | Path, labels: dict[str, np.ndarray]) -> None:
    """Write ``{slice_id: vector}`` in the RSNA ICH layout (six rows per slice)."""
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ID", "Label"])
        for slice_id, vec in labels.items():
            for name, v in zip(ICH_LABELS, vec, strict=True):
                w.writerow([f"{slice_id}_{name}", int(round(float(v)))])

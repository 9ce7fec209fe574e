"""The ONE preprocessing spec: training, evaluation, calibration and the device runner use it.

A spec says how a file on disk becomes a model input: how it is read (raster image via Pillow,
or a CT DICOM via Hounsfield-unit windows), resized, scaled and normalised, and in which layout
the tensor is laid out. It serialises to JSON and travels inside checkpoints and bundles.

This module depends only on the standard library, numpy and Pillow (pydicom for DICOM input) so
that the device runner can reproduce it exactly, without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgekit.data.dicom import DEFAULT_CT_WINDOWS, CTWindow, is_dicom, read_hu, stack_windows
from edgekit.errors import ConfigError, DataError

SPEC_VERSION = 2  # 2 added ``resize``; version 1 specs (bilinear) are still read and written
READABLE_VERSIONS = (1, SPEC_VERSION)
RASTER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
DICOM_EXTENSIONS = (".dcm", ".dicom")
_LAYOUTS = ("NCHW", "NHWC")
# the keys a user declares (``--preprocess FILE.yaml``) and the manifest says the origin of
PREPROCESS_KEYS = ("input_size", "color", "layout", "scale", "mean", "std", "resize")
_COLORS = ("rgb", "gray")
# the resize filters a spec may name: Pillow's resampling filters ("area" is Pillow's BOX)
RESIZE_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST,
                  "area": Image.Resampling.BOX}


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image file becomes a float32 model input.

    Raster images: decode → ``color`` ("rgb": 3 channels, greyscale replicated; "gray": 1
    channel) → resize to ``input_size`` with Pillow's ``resize`` filter (bilinear, bicubic,
    lanczos, nearest or area) → ``* scale`` (1/255 gives [0, 1]) →
    ``(x - mean) / std`` per channel. A 16-bit greyscale file is read at its full depth and
    brought to the 8-bit scale first (``deep_gray``: 65535 → 255), never clipped. CT DICOM (``ct_windows`` set): Hounsfield units → one
    channel per window in [0, 1] → resize → ``(x - mean) / std``.

    ``version`` 1 specs (written before ``resize`` existed) always resize bilinearly and are
    written back without the key, so an old bundle's manifest stays byte-identical.
    """

    input_size: tuple[int, int] = (224, 224)
    color: str = "rgb"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    ct_windows: tuple[CTWindow, ...] | None = None
    version: int = field(default=SPEC_VERSION)
    resize: str = "bilinear"

    def __post_init__(self) -> None:
        size = self.input_size
        if isinstance(size, int):
            object.__setattr__(self, "input_size", (size, size))
        else:
            object.__setattr__(self, "input_size", tuple(int(s) for s in size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.ct_windows is not None:
            object.__setattr__(self, "ct_windows", tuple(self.ct_windows))
        problems = []
        if len(self.input_size) != 2 or min(self.input_size) < 8:
            problems.append(f"input_size must be two sizes >= 8, got {self.input_size}")
        if self.color not in _COLORS:
            problems.append(f"color must be one of {_COLORS}, got {self.color!r}")
        if self.layout not in _LAYOUTS:
            problems.append(f"layout must be one of {_LAYOUTS}, got {self.layout!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            problems.append(
                f"mean/std need {self.channels} values (one per channel), "
                f"got {len(self.mean)}/{len(self.std)}"
            )
        if any(s == 0 for s in self.std):
            problems.append("std must not contain 0")
        if self.resize not in RESIZE_FILTERS:
            problems.append(f"resize must be one of {tuple(RESIZE_FILTERS)}, got {self.resize!r}")
        if self.version not in READABLE_VERSIONS:
            problems.append(f"unsupported preprocessing spec version {self.version} (this edgekit "
                            f"reads {' and '.join(map(str, READABLE_VERSIONS))})")
        elif self.version == 1 and self.resize != "bilinear":
            problems.append(f"resize {self.resize!r} needs spec version {SPEC_VERSION}; "
                            "version 1 specs always resize bilinearly")
        if problems:
            raise ConfigError("Invalid preprocessing spec: " + "; ".join(problems))

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_ct(cls, input_size: int | tuple[int, int] = 256,
               windows: tuple[CTWindow, ...] = DEFAULT_CT_WINDOWS) -> PreprocessSpec:
        """A head-CT spec: one channel per Hounsfield window, no extra normalisation."""
        n = len(windows)
        return cls(input_size=input_size, color="rgb" if n == 3 else "gray", scale=1.0,
                   mean=(0.0,) * n, std=(1.0,) * n, ct_windows=tuple(windows))

    @property
    def channels(self) -> int:
        if self.ct_windows is not None:
            return len(self.ct_windows)
        return 3 if self.color == "rgb" else 1

    @property
    def height(self) -> int:
        return self.input_size[0]

    @property
    def width(self) -> int:
        return self.input_size[1]

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """The model input shape in this spec's layout."""
        c, (h, w) = self.channels, self.input_size
        return (batch, c, h, w) if self.layout == "NCHW" else (batch, h, w, c)

    def with_size(self, size: int | tuple[int, int]) -> PreprocessSpec:
        return replace(self, input_size=size if not isinstance(size, int) else (size, size))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        out = {
            "version": self.version,
            "input_size": list(self.input_size),
            "color": self.color,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "ct_windows": None if self.ct_windows is None else [
                {"name": w.name, "level": w.level, "width": w.width} for w in self.ct_windows
            ],
        }
        if self.version >= 2:
            out["resize"] = self.resize
        return out

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        if not isinstance(data, dict):
            raise ConfigError(f"Preprocessing spec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown key(s) in preprocessing spec: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        kw = dict(data)
        if kw.get("ct_windows") is not None:
            try:
                kw["ct_windows"] = tuple(CTWindow(str(w["name"]), float(w["level"]), float(w["width"]))
                                         for w in kw["ct_windows"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"Invalid ct_windows in preprocessing spec: {exc}") from exc
        try:
            return cls(**kw)
        except TypeError as exc:
            raise ConfigError(f"Invalid preprocessing spec: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Preprocessing spec is not valid JSON: {exc}") from exc

    # ------------------------------------------------------------------ application
    @property
    def min_image_size(self) -> tuple[int, int]:
        """(height, width) below which a raster image is too small to upscale without a
        warning: a quarter of the input size, at least 16 px (at most the input size)."""
        return tuple(min(s, max(16, s // 4)) for s in self.input_size)  # type: ignore[return-value]

    def load(self, path: str | Path, small: list[Path] | None = None) -> np.ndarray:
        """Read one file and return the model input (no batch axis) as float32.

        Raises DataError naming the file if it cannot be decoded or does not fit this spec.
        A raster image below ``min_image_size`` is still upscaled; its path is appended to
        ``small`` so that the caller can warn once for the run (``small_images_warning``).
        """
        path = Path(path)
        if path.is_dir():
            raise DataError(f"{path}: is a directory, not an image file")
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        if self.ct_windows is not None:
            if not is_dicom(path):
                raise DataError(f"{path}: this model reads CT DICOM slices (Hounsfield windows), not raster images")
            return self.from_hu(read_hu(path))
        if is_dicom(path):
            raise DataError(f"{path}: a DICOM file, but this model's preprocessing has no CT windows")
        image = open_image(path)
        min_h, min_w = self.min_image_size
        if small is not None and (image.height < min_h or image.width < min_w):
            small.append(path)
        try:
            return self.from_pil(image)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from exc

    def from_pil(self, image: Any) -> np.ndarray:
        """Preprocess a decoded PIL image (any mode, any size).

        8-bit images are converted by Pillow. Greyscale images deeper than 8 bits (16-bit PNG
        or TIFF, 16-bit PGM) are read at their full depth and brought to the 8-bit scale by
        their bit depth (0..65535 → 0..255, as floats: nothing is clipped or rounded), so
        ``scale`` means the same for every file. A floating-point image is a DataError.
        """
        deep = deep_gray(image)
        if deep is not None:
            chan = _resize_float(deep, self.width, self.height, self.resize)[:, :, None]
            arr = chan if self.color == "gray" else np.repeat(chan, 3, axis=2)
            return self._finish(arr * np.float32(self.scale))
        img = image.convert("RGB" if self.color == "rgb" else "L")
        if img.size != (self.width, self.height):
            img = img.resize((self.width, self.height), RESIZE_FILTERS[self.resize])
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        arr = arr * np.float32(self.scale)
        return self._finish(arr)

    def from_hu(self, hu: np.ndarray) -> np.ndarray:
        """Preprocess a CT slice given in Hounsfield units, shape (H, W)."""
        if self.ct_windows is None:
            raise DataError("this preprocessing spec has no CT windows; it cannot read Hounsfield units")
        chans = stack_windows(hu, self.ct_windows)  # (C, H, W) in [0, 1]
        arr = np.stack([_resize_float(c, self.width, self.height, self.resize) for c in chans],
                       axis=-1)
        return self._finish(arr)

    def _finish(self, hwc: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        out = (hwc - mean) / std
        if self.layout == "NCHW":
            out = out.transpose(2, 0, 1)
        return np.ascontiguousarray(out, dtype=np.float32)


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
SIXTEEN_BIT_MAX = 65535.0


def deep_gray(image: Any) -> np.ndarray | None:
    """A greyscale image deeper than 8 bits as float32 (H, W) on the 8-bit scale [0, 255].

    16-bit files (Pillow modes ``I;16*``, and ``I``, which Pillow uses for 16-bit PGM scaled to
    0..65535) are divided by their full scale 65535 and multiplied by 255, so a 12-bit scan
    saved as 16 bits keeps every grey level instead of saturating above 255. Returns None for
    the 8-bit modes (Pillow converts those exactly); a DataError for floating-point images and
    for 32-bit integers outside 0..65535, whose range the file does not declare.
    """
    if image.mode == "F":
        raise DataError("a floating-point image (Pillow mode F): its value range is unknown; "
                        "save it as an 8- or 16-bit image")
    if image.mode not in (*_SIXTEEN_BIT_MODES, "I"):
        return None
    arr = np.asarray(image)
    if arr.ndim != 2:
        arr = np.asarray(image.convert("I"))
    if image.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > SIXTEEN_BIT_MAX):
        raise DataError(f"32-bit integer pixels from {int(arr.min())} to {int(arr.max())}, "
                        "outside the 16-bit range 0..65535 edgekit reads")
    return arr.astype(np.float32) * np.float32(255.0 / SIXTEEN_BIT_MAX)


def gray_pixels(image: Any) -> np.ndarray:
    """Any decoded image as float32 greyscale (H, W) on the 8-bit scale, at its full depth."""
    deep = deep_gray(image)
    return deep if deep is not None else np.asarray(image.convert("L"), dtype=np.float32)


def open_image(path: Path) -> Any:
    """Decode a raster image file fully; a DataError naming it when it cannot be read
    (corrupt, not an image, or a decompression bomb: more pixels than Pillow decodes safely)."""
    try:
        with Image.open(path) as im:
            im.load()
            img = im.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as exc:  # the bomb: too many pixels to decode safely
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    return img


def small_images_warning(small: list[Path], total: int, spec: PreprocessSpec) -> str | None:
    """One line for a run that upscaled images far below the input size (None if none did)."""
    if not small:
        return None
    (min_h, min_w), (h, w) = spec.min_image_size, spec.input_size
    return (f"{len(small)} of {total} images are smaller than {min_w}×{min_h} px (e.g. "
            f"{small[0]}); they were upscaled to {w}×{h}, which invents detail: check that "
            "these are the right files (thumbnails, icons?)")


def _resize_float(channel: np.ndarray, width: int, height: int,
                  resize: str = "bilinear") -> np.ndarray:
    """One float channel resized in Pillow's mode "F" with the spec's filter (no rounding)."""
    if channel.shape == (height, width):
        return channel.astype(np.float32)
    img = Image.fromarray(channel.astype(np.float32))
    return np.asarray(img.resize((width, height), RESIZE_FILTERS[resize]), dtype=np.float32)


def is_supported_file(path: str | Path) -> bool:
    """True for files edgekit tries to read as images (by extension)."""
    return Path(path).suffix.lower() in RASTER_EXTENSIONS + DICOM_EXTENSIONS

"""Local calibration files: latency-model groups measured on this machine.

``edgekit targets calibrate x86-local`` (:mod:`edgekit.bench.calibrate`) writes them to
``$EDGEKIT_CONFIG_DIR/calibration/x86-local.json`` (default ``~/.config/edgekit``), one entry
per CPU model, core count and edgekit version; :func:`local_coeffs` reads this machine's entry
back and refuses any other machine's or version's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit.bench.hostinfo import cpu_info, normalize_arch

CALIBRATION_FORMAT = "edgekit.latency-calibration/1"
NOT_CALIBRATED = "not calibrated: run `edgekit targets calibrate x86-local`"


class CalibrationMismatch(ValueError):
    """A calibration file exists but was made on another CPU or by another edgekit version."""


def config_dir() -> Path:
    """edgekit's per-user configuration folder: ``$EDGEKIT_CONFIG_DIR``, else
    ``$XDG_CONFIG_HOME/edgekit``, else ``~/.config/edgekit``."""
    if os.environ.get("EDGEKIT_CONFIG_DIR"):
        return Path(os.environ["EDGEKIT_CONFIG_DIR"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "edgekit"


def calibration_path(name: str = "x86-local") -> Path:
    """Where ``edgekit targets calibrate NAME`` writes its coefficients by default."""
    return config_dir() / "calibration" / f"{name}.json"


def machine_identity() -> dict[str, Any]:
    """What a calibration is keyed by: CPU model, usable cores, edgekit version."""
    info = cpu_info()
    return {"cpu_model": str(info["model"]), "logical_cores": int(info["logical_cores"]),
            "arch": str(info["arch"]), "edgekit": __version__}


def _identity_key(ident: dict[str, Any]) -> str:
    return f"{ident['cpu_model']} | {ident['logical_cores']} cores | edgekit {ident['edgekit']}"


def write_calibration(entry: dict[str, Any], path: str | Path | None = None,
                      name: str = "x86-local") -> Path:
    """Add ``entry`` (keyed by its CPU model, cores and edgekit version) to the calibration
    file (default :func:`calibration_path`), keeping other machines' entries."""
    path = Path(path) if path else calibration_path(name)
    data: dict[str, Any] = {"format": CALIBRATION_FORMAT, "entries": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if old.get("format") == CALIBRATION_FORMAT:
                data["entries"] = dict(old.get("entries") or {})
        except (OSError, json.JSONDecodeError):
            pass
    data["entries"][_identity_key(entry["identity"])] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_calibration(path: str | Path | None = None, *, name: str = "x86-local",
                     identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """This machine's entry of a calibration file. FileNotFoundError when there is none;
    :class:`CalibrationMismatch` when the file holds only other CPUs' or versions' entries."""
    path = Path(path) if path else calibration_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{NOT_CALIBRATED} (no {path})")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationMismatch(f"{path}: unreadable calibration file ({exc}); run "
                                  "`edgekit targets calibrate x86-local` again") from None
    if data.get("format") != CALIBRATION_FORMAT:
        raise CalibrationMismatch(f"{path}: format {data.get('format')!r}, this edgekit reads "
                                  f"{CALIBRATION_FORMAT}; run `edgekit targets calibrate "
                                  "x86-local` again")
    ident = identity or machine_identity()
    entries = data.get("entries") or {}
    entry = entries.get(_identity_key(ident))
    if entry is None:
        others = "; ".join(sorted(entries)) or "none"
        raise CalibrationMismatch(
            f"{path} was calibrated on another machine or edgekit version ({others}), not on "
            f"this one ({_identity_key(ident)}): run `edgekit targets calibrate x86-local` here")
    return {**entry, "path": str(path)}


def local_coeffs(target: Any, path: str | Path | None = None) -> dict[str, Any] | None:
    """The latency-model groups measured on this machine for ``target`` (a target whose
    ``predict.groups_from`` is ``local-calibration`` and whose arch is this machine's), as the
    calibration entry: ``{"groups": {"onnxruntime/fp32/1": {...Coeffs}}, "hardware": {...},
    "thread_scaling": {...} | None, "identity": {...}, "created", "path", ...}``.
    None when not calibrated, calibrated on another CPU/edgekit version, or not applicable."""
    entry, _ = _local_entry(target, path)
    return entry


def _local_entry(target: Any, path: str | Path | None = None
                 ) -> tuple[dict[str, Any] | None, str | None]:
    pred = getattr(target, "predict", None)
    if pred is None or pred.groups_from != "local-calibration":
        return None, f"the {target.name} profile is not predicted from a local calibration"
    ident = machine_identity()
    if normalize_arch(ident["arch"]) != target.arch:
        return None, (f"this machine is {ident['arch']}, the {target.name} profile "
                      f"{target.arch}: a local calibration cannot stand for it")
    try:
        return read_calibration(path, identity=ident), None
    except FileNotFoundError:
        return None, NOT_CALIBRATED
    except CalibrationMismatch as exc:
        return None, str(exc)

"""Checkpoints: a plain ``state_dict`` plus JSON metadata, loadable with ``weights_only=True``.

The file is a dict ``{"format", "state_dict", "metadata_json"}`` holding only tensors and
strings, so ``torch.load(path, weights_only=True)`` reads it without executing any pickled code.
Metadata records the architecture, classes, task, preprocessing spec, training settings,
metrics and the validation split, so a checkpoint is all ``compress`` and ``inspect`` need.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from edgekit.errors import WRITE_ERRNOS, DataError, UnsafeSourceError, write_failed

FORMAT = "edgekit.checkpoint/1"


def save_checkpoint(path: str | Path, state_dict: dict, metadata: dict[str, Any]) -> Path:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    import torch

    path = Path(path)
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        "metadata_json": json.dumps(metadata, sort_keys=True),
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise write_failed(f"the checkpoint {path}", exc) from exc
        raise
    return path


def _is_pickle(path: Path) -> bool:
    """Whether ``path`` holds what ``torch.save`` writes: a zip archive with a ``data.pkl``, or a
    raw pickle (protocol 2+). ``pickletools.genops`` only parses opcodes, it never runs them."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("/data.pkl")), None)
                if name is None:
                    return False
                stream: Any = io.BytesIO(zf.read(name))
        else:
            with open(path, "rb") as fh:
                stream = io.BytesIO(fh.read())
        head = stream.getvalue()[:2]
        if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
            return False
        for _ in pickletools.genops(stream):  # raises on an unknown opcode or a missing STOP
            pass
        return True
    except Exception:  # noqa: BLE001  (any parse failure: not a pickle)
        return False


def load_checkpoint(path: str | Path) -> tuple[dict, dict[str, Any]]:
    """Return ``(state_dict, metadata)``. Never unpickles code: ``torch.load(weights_only=True)``.

    A bare ``state_dict`` (as saved by ``torch.save(model.state_dict())``) is accepted with empty
    metadata. A pickle that needs code execution (e.g. ``torch.save(model)``) is refused with
    UnsafeSourceError explaining how to re-save it safely.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"Checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _is_pickle(path):  # random bytes, a truncated download, a different format
            raise DataError(f"{path}: not a PyTorch checkpoint (neither the zip archive nor the "
                            "pickle torch.save writes; a damaged file or another format?)") from exc
        raise UnsafeSourceError(
            f"{path}: refusing to load — this file is a pickle that needs code execution "
            f"(torch.load(..., weights_only=True) rejected it: {str(exc).splitlines()[0]}). "
            "Loading it could run arbitrary code. If you trust it, re-save only the weights: "
            "torch.save(model.state_dict(), 'weights.pt'), or export with torch.export / ONNX."
        ) from exc
    except Exception as exc:  # torch.load raises many types on a file that is not a checkpoint
        raise DataError(f"{path}: not a readable PyTorch checkpoint "
                        f"({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj["state_dict"], json.loads(obj["metadata_json"])
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"], {}
    if isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        return obj, {}
    raise DataError(f"{path}: expected a state_dict (name → tensor) or an edgekit checkpoint")

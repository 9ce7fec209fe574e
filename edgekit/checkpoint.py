"""Checkpoints: a plain ``state_dict`` plus JSON metadata, loadable with ``weights_only=True``.

The file is a dict ``{"format", "state_dict", "metadata_json"}`` holding only tensors and
strings, so ``torch.load(path, weights_only=True)`` reads it without executing any pickled code.
Metadata records the architecture, classes, task, preprocessing spec, training settings,
metrics and the validation split, so a checkpoint is all ``compress`` and ``inspect`` need.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
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

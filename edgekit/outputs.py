"""Where edgekit writes: checks shared by every command that writes an output.

An output inside the data folder it reads becomes part of the data: a bundle folder under
``--data`` is an unexpected class on the next run, a bench run's ``pareto.png`` under
``data/glioma/`` is a glioma image that ``train`` then learns from. So every command that
reads a data folder and writes somewhere refuses an output inside it, before any work.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from edgekit.errors import ConfigError


def refuse_inside_data(out: str | Path, data: str | Path | None, *, what: str | None = None
                       ) -> None:
    """ConfigError (exit 2) naming both paths when ``out`` is ``data`` or lies inside it
    (symlinks resolved). ``what`` names the output (default ``--out OUT``)."""
    if data is None:
        return
    out, data = Path(out), Path(data)
    real_out, real_data = out.resolve(), data.resolve()
    if real_out == real_data or real_out.is_relative_to(real_data):
        what = what or f"--out {out}"
        raise ConfigError(f"{what} is inside --data {data}: the output would become part of "
                          "the images edgekit reads (an unexpected class, or images of a class); "
                          "choose an output folder outside the data")


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` all at once: a temporary file beside it, synced, then renamed
    over it; nothing half-written is ever left at ``path`` (the temporary file is removed on any
    failure)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path

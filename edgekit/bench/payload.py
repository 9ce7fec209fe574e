"""The device runner as ONE file: ``edgekit-runner.pyz``, a zipapp of edgekit's pure-Python code.

A board (over SSH) or an emulated aarch64 Python gets this single file plus the bundle, and runs
``python3 edgekit-runner.pyz BUNDLE --bench ...`` exactly as ``python -m edgekit.runner`` runs
here. Only numpy, Pillow (and pydicom for CT) and one runtime must be installed there: the runner
never imports torch, pydantic, click or rich (``tests/test_payload.py`` checks this).

The archive is deterministic (sorted entries, fixed timestamps), so its sha256 identifies the
edgekit code that ran on the device; ``runner_zip`` returns it for the manifest of the run.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

NAME = "edgekit-runner.pyz"
_MAIN = (b"import sys\n"
         b"from edgekit.runner import main\n"
         b"sys.exit(main())\n")
_EPOCH = (2020, 1, 1, 0, 0, 0)


def _package_files() -> list[tuple[str, Path]]:
    root = Path(__file__).resolve().parents[1]  # the edgekit package folder
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    return [(f"edgekit/{p.relative_to(root).as_posix()}", p) for p in files]


def runner_zip(dest: str | Path) -> tuple[Path, str]:
    """Write ``dest/edgekit-runner.pyz``; return its path and sha256 (hex)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / NAME
    tmp = path.with_suffix(".pyz.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        entries = [("__main__.py", _MAIN)] + [(name, p.read_bytes())
                                              for name, p in _package_files()]
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    tmp.replace(path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()

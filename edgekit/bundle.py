"""Artifact bundles: one folder per compress run, written atomically, every file hashed.

A bundle is built in a hidden temporary folder next to its destination (``.NAME.partial-*``)
and renamed into place only when complete, so a crash or Ctrl-C never leaves a half-written
bundle behind. ``manifest.json`` records the source, recipe, preprocessing spec, classes, every
artifact (sha256, size, backend, precision, input layout and dtype), the verification results,
package versions and timestamps. ``verify_bundle`` re-checks the hashes and that each artifact
loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError, DataError, VerificationFailed

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ARTIFACTS = "artifacts"
_PACKAGES = ("edgekit", "numpy", "torch", "onnx", "onnxruntime", "openvino", "nncf",
             "litert-torch", "ai-edge-litert", "tensorflow", "torch-pruning")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder (a SavedModel): every file's relative path and sha256,
    sorted, hashed together."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape an artifact (absent ones are omitted)."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


class BundleWriter:
    """``with BundleWriter(out) as w:`` write into ``w.artifacts_dir``, then ``w.commit(...)``.

    Leaving the block without ``commit`` (an exception, Ctrl-C) deletes the temporary folder.
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.overwrite = overwrite
        self.tmp = self.out.parent / f".{self.out.name}.partial-{uuid.uuid4().hex[:8]}"
        self.committed = False
        self._check_destination()

    def _check_destination(self) -> None:
        if self.out.exists() and not self.overwrite:
            raise ConfigError(f"{self.out} already exists; choose another --out or pass --overwrite")
        if self.out.exists() and not (self.out / MANIFEST).is_file():
            raise ConfigError(f"{self.out} exists and is not an edgekit bundle; refusing to replace it")

    @property
    def artifacts_dir(self) -> Path:
        return self.tmp / ARTIFACTS

    def __enter__(self) -> BundleWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(parents=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def file_entry(self, path: Path) -> dict[str, Any]:
        """``{"path", "sha256", "bytes"}`` of a file inside the bundle being written."""
        return {"path": path.relative_to(self.tmp).as_posix(), "sha256": sha256_file(path),
                "bytes": path.stat().st_size}

    def commit(self, manifest: dict[str, Any], readme: str) -> Path:
        """Write manifest.json and README.md, then move the bundle into place atomically."""
        (self.tmp / "README.md").write_text(readme)
        manifest = {"schema_version": SCHEMA_VERSION, **manifest}
        manifest["files"] = [self.file_entry(self.tmp / "README.md"), *manifest.get("files", [])]
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        self._check_destination()
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise DataError(f"{bundle}: not an edgekit bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(f"{path}: manifest schema version {version!r}; this edgekit reads "
                        f"version {SCHEMA_VERSION}")
    return manifest



def artifact_backend(bundle: str | Path, artifact: str) -> str | None:
    """The backend of the bundle's artifact ``artifact``; None when the bundle has no readable
    manifest or no such artifact (the runner then reports that itself)."""
    try:
        manifest = json.loads((Path(bundle) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return next((a.get("backend") for a in manifest.get("artifacts", [])
                 if a.get("name") == artifact), None)

def verify_bundle(bundle: str | Path, *, load: bool = True) -> list[dict[str, Any]]:
    """Re-hash every file in the manifest and (``load``) open every artifact and run it once.

    Returns one row per artifact (plus one for the bundle's own files); raises
    VerificationFailed naming every problem when anything is off.
    """
    import numpy as np

    from edgekit.backends import get_backend

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    rows, problems = [], []

    def check_files(entries: list[dict[str, Any]]) -> list[str]:
        bad = []
        for f in entries:
            p = bundle / f["path"]
            if not p.is_file():
                bad.append(f"{f['path']}: missing")
            elif p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
                bad.append(f"{f['path']}: sha256 mismatch (modified or corrupt)")
        return bad

    bad = check_files(manifest.get("files", []))
    rows.append({"name": "bundle files", "hashes": "ok" if not bad else "; ".join(bad),
                 "loads": "-"})
    problems += bad
    for art in manifest.get("artifacts", []):
        bad = check_files(art["files"])
        row = {"name": art["name"], "hashes": "ok" if not bad else "; ".join(bad), "loads": "-"}
        problems += bad
        if load and not bad:
            backend = get_backend(art["backend"])
            hint = backend.available()
            if hint:
                row["loads"] = f"skipped ({art['backend']} not installed: {hint})"
            else:
                try:
                    session = backend.open(bundle / art["files"][0]["path"], threads=1)
                    out = session.run(np.zeros(art["input"]["shape"], dtype=np.float32))
                    if not np.all(np.isfinite(out)):
                        raise ValueError("non-finite output")
                    row["loads"] = "ok"
                except Exception as exc:  # any runtime failure is a verification failure
                    row["loads"] = f"failed: {type(exc).__name__}: {exc}"
                    problems.append(f"{art['name']}: does not load ({exc})")
        rows.append(row)
    if problems:
        raise VerificationFailed(f"{bundle}: " + "; ".join(problems))
    return rows

"""Artifact bundles: one folder per compress run, written atomically, every file hashed.

A bundle is built in a hidden temporary folder next to its destination (``.NAME.partial-*``)
and renamed into place only when complete, so a crash or Ctrl-C never leaves a half-written
bundle behind. ``manifest.json`` (a ``edgekit.manifest.Manifest``) records the source, recipe,
preprocessing spec, classes, every artifact (sha256, size, backend, precision, input layout and
dtype), the verification results, package versions and timestamps; ``commit`` refuses to write
one that a reader would refuse. ``verify_bundle`` re-checks the hashes, that every listed path
stays inside the bundle (symlinks included), which files the manifest does not list, and that
each artifact loads and has one output per class.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends import all_backends, get_backend
from edgekit.errors import (
    WRITE_ERRNOS,
    ConfigError,
    DataError,
    VerificationFailed,
    write_failed,
)
from edgekit.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    ArtifactEntry,
    FileEntry,
    Manifest,
    path_problem,
)

ARTIFACTS = "artifacts"
BENCH = "bench"  # the default home of bench runs (edgekit bench BUNDLE)


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
    names = dict.fromkeys(("edgekit", "numpy", "torch",
                           *(p for b in all_backends() for p in b.converter_packages),
                           "torch-pruning"))
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


class BundleWriter:
    """``with BundleWriter(out) as w:`` write into ``w.artifacts_dir``, then ``w.commit(...)``.

    Leaving the block without ``commit`` (an exception, Ctrl-C) deletes the temporary folder;
    an OSError of a full disk or a read-only place becomes an EdgekitError naming the bundle,
    the file and the cause. The temporary folder's name carries this host and process
    (``.NAME.partial-HOST-PID-xxxxxxxx``), so one left by a killed run (SIGKILL, power loss) is
    deleted by the next run into the same place, and never one that a live run is writing.

    ``overwrite`` replaces an existing folder only when it is verifiably an edgekit bundle (its
    manifest reads strictly) that holds nothing its manifest does not list, except ``bench/``
    (the bench runs), which moves into the new bundle.
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.overwrite = overwrite
        self.tmp = self._sibling("partial")
        self.committed = False
        self._check_destination()

    def _sibling(self, kind: str) -> Path:
        return self.out.parent / (f".{self.out.name}.{kind}-{_host_tag()}-{os.getpid()}-"
                                  f"{uuid.uuid4().hex[:8]}")

    def _check_destination(self) -> None:
        if not self.out.exists() and not self.out.is_symlink():
            return
        if not self.overwrite:
            raise ConfigError(f"{self.out} already exists; choose another --out or pass --overwrite")
        if self.out.is_symlink():
            raise ConfigError(f"{self.out} is a symbolic link; refusing to replace it "
                              "(give the folder it points to, or another --out)")
        try:
            manifest = load_manifest(self.out)
        except DataError as exc:
            raise ConfigError(f"{self.out} exists and is not an edgekit bundle ({exc}); refusing "
                              "to replace it") from None
        unlisted = [p for p in unlisted_files(self.out, manifest) if not p.startswith(f"{BENCH}/")]
        if unlisted:
            shown = ", ".join(unlisted[:10]) + (f" and {len(unlisted) - 10} more"
                                                if len(unlisted) > 10 else "")
            raise ConfigError(f"{self.out} holds files its {MANIFEST} does not list ({shown}); "
                              "refusing to replace it (--overwrite would delete them): move them "
                              "out first or choose another --out")

    @property
    def artifacts_dir(self) -> Path:
        return self.tmp / ARTIFACTS

    def __enter__(self) -> BundleWriter:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            _clean_stale(self.out)
            self.artifacts_dir.mkdir(parents=True)
        except OSError as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise write_failed(f"the bundle {self.out}", exc) from exc
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise write_failed(f"the bundle {self.out}", exc) from exc

    def entry(self, path: Path) -> FileEntry:
        """The manifest entry (path, sha256, bytes) of a file inside the bundle being written."""
        return FileEntry(path=path.relative_to(self.tmp).as_posix(), sha256=sha256_file(path),
                         bytes=path.stat().st_size)

    def file_entry(self, path: Path) -> dict[str, Any]:
        """``{"path", "sha256", "bytes"}`` of a file inside the bundle being written."""
        return self.entry(path).to_json()

    def commit(self, manifest: Manifest | dict[str, Any], readme: str) -> Path:
        """Write manifest.json and README.md, then move the bundle into place atomically.

        ``manifest`` is a Manifest, or its JSON without ``schema_version`` (as compress builds
        it); either way it is checked as strictly as a reader checks it (DataError naming every
        problem), so no bundle is written that edgekit would refuse to read.

        An existing bundle (``overwrite``, checked again now) is renamed aside, the new one
        renamed into place, the old one's ``bench/`` moved into the new one and only then the
        old one deleted: at every moment each file is in ``out`` or in the renamed-aside
        folder, which is kept (with a warning) if anything fails on the way.
        """
        (self.tmp / "README.md").write_text(readme)
        data = (manifest.to_json() if isinstance(manifest, Manifest)
                else {"schema_version": SCHEMA_VERSION, **manifest})
        data["files"] = [self.file_entry(self.tmp / "README.md"), *data.get("files", [])]
        checked = Manifest.from_json(data, where=self.out / MANIFEST)
        (self.tmp / MANIFEST).write_text(json.dumps(checked.to_json(), indent=2,
                                                    sort_keys=False) + "\n")
        self._check_destination()
        old = None
        if self.out.exists():
            old = self._sibling("old")
            os.replace(self.out, old)
        try:
            os.replace(self.tmp, self.out)
        except BaseException:
            if old is not None:
                os.replace(old, self.out)
            raise
        self.committed = True
        if old is not None:
            self._carry_over(old)
        return self.out

    def _carry_over(self, old: Path) -> None:
        """Move the replaced bundle's bench runs into the new one, then delete the rest of it
        (files its manifest listed, checked before it was renamed aside)."""
        try:
            if (old / BENCH).is_dir():
                os.replace(old / BENCH, self.out / BENCH)
            shutil.rmtree(old)
        except OSError as exc:
            warnings.warn(f"the replaced bundle is kept in {old} ({exc}): its {BENCH}/ runs "
                          f"could not be moved into {self.out}", stacklevel=3)


def _host_tag() -> str:
    """Eight hex digits naming this host, so a temporary folder on a shared disk is only ever
    judged by the host whose processes could own it."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _clean_stale(out: Path) -> None:
    """Delete the ``.NAME.partial-*`` folders next to ``out`` that a process of this host left
    when it died (killed before it could clean up); warn about the ones edgekit cannot attribute
    (another host, an older edgekit) and about replaced bundles an interrupted ``--overwrite``
    left aside (``.NAME.old-*``: they may hold bench runs, so they are never deleted)."""
    name = re.escape(out.name)
    mine = re.compile(rf"\.{name}\.partial-{_host_tag()}-(\d+)-[0-9a-f]{{8}}")
    unknown = []
    for path in sorted(out.parent.glob(f".{glob.escape(out.name)}.partial-*")):
        match = mine.fullmatch(path.name)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
        elif not match:
            unknown.append(path)
    unknown += sorted(out.parent.glob(f".{glob.escape(out.name)}.old-*"))
    if unknown:
        warnings.warn(f"left by earlier runs that did not finish (delete them when no edgekit "
                      f"run is writing there): {', '.join(str(p) for p in unknown)}",
                      stacklevel=3)


def load_manifest(bundle: str | Path) -> Manifest:
    """The bundle's manifest, typed and checked strictly: a DataError names the file and every
    problem (unknown or missing keys, wrong types, paths that leave the bundle, ...)."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise DataError(f"{bundle}: not an edgekit bundle (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    return Manifest.from_json(data, where=path)


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """``load_manifest`` as JSON (exactly the file's content), for callers that index it."""
    return load_manifest(bundle).to_json()


def artifact_backend(bundle: str | Path, artifact: str) -> str | None:
    """The backend of the bundle's artifact ``artifact``; None when the bundle has no readable
    manifest or no such artifact (the runner then reports that itself)."""
    try:
        manifest = json.loads((Path(bundle) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return next((a.get("backend") for a in manifest.get("artifacts", [])
                 if a.get("name") == artifact), None)


def bundle_file(bundle: str | Path, rel: str) -> Path:
    """``bundle / rel`` for a path the manifest lists; a DataError naming it when it is not a
    plain relative path or when it resolves (through a symlink) outside the bundle."""
    bundle = Path(bundle)
    problem = path_problem(rel)
    if problem:
        raise DataError(f"{bundle / MANIFEST}: {problem}")
    path = bundle / rel
    real = path.resolve()
    if not real.is_relative_to(bundle.resolve()):
        raise DataError(f"{path}: resolves to {real}, outside the bundle")
    return path


def _file_problem(bundle: Path, entry: FileEntry) -> str | None:
    """Why a listed file does not check out (outside the bundle, missing, modified); None."""
    try:
        path = bundle_file(bundle, entry.path)
    except DataError as exc:
        return str(exc)
    if not path.is_file():
        return f"{entry.path}: missing"
    if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
        return f"{entry.path}: sha256 mismatch (modified or corrupt)"
    return None


def _check_loads(bundle: Path, manifest: Manifest, art: ArtifactEntry) -> tuple[str, str | None]:
    """Open the artifact and run it once on zeros: the row's ``loads`` cell and a problem."""
    backend = get_backend(art.backend)
    hint = backend.available()
    if hint:
        return f"skipped ({art.backend} not installed: {hint})", None
    try:
        session = backend.open(bundle / art.files[0].path, threads=1)
        out = session.run(np.zeros(art.input.shape, dtype=np.float32))
        if not np.all(np.isfinite(out)):
            raise ValueError("non-finite output")
    except Exception as exc:  # any runtime failure is a verification failure
        return f"failed: {type(exc).__name__}: {exc}", f"{art.name}: does not load ({exc})"
    problem = manifest.width_problem(int(np.asarray(out)[0].size))
    if problem:
        return f"failed: {problem}", f"{art.name}: {problem}"
    return "ok", None


def unlisted_files(bundle: str | Path, manifest: Manifest) -> list[str]:
    """Files (and symlinks) in the bundle folder that the manifest does not list, sorted,
    relative POSIX paths. A listed path reached through an in-bundle symlink counts as listed;
    a symlinked folder is one entry (it is not walked into)."""
    bundle = Path(bundle)
    listed = {(bundle / MANIFEST).resolve()}
    listed |= {(bundle / f.path).resolve() for f in manifest.all_files()}
    found = []
    for top, dirs, files in os.walk(bundle):
        dirs.sort()
        here = Path(top)
        found += [here / d for d in dirs if (here / d).is_symlink()]
        found += [here / f for f in files]
    return sorted(p.relative_to(bundle).as_posix() for p in found if p.resolve() not in listed)


def _summary(paths: list[str]) -> str:
    """``bench/ (12 files), notes.txt``: loose files by name, folders by their file count."""
    groups: dict[str, int] = {}
    for p in paths:
        top, sep, _ = p.partition("/")
        groups[top + sep] = groups.get(top + sep, 0) + 1
    return ", ".join(k if not k.endswith("/") else f"{k} ({n} file{'s' if n > 1 else ''})"
                     for k, n in groups.items())


def verify_bundle(bundle: str | Path, *, load: bool = True) -> list[dict[str, Any]]:
    """Re-hash every file in the manifest and (``load``) open every artifact and run it once.

    Returns one row per artifact (plus one for the bundle's own files, and one naming the files
    the manifest does not list, if any); raises VerificationFailed naming every problem when
    anything is off: a file missing, modified or (through a symlink) outside the bundle, an
    artifact that does not load or whose output width does not fit the class names, a file
    under ``artifacts/`` that the manifest does not list. Other unlisted files (a ``bench/``
    folder of results, notes) are only reported. A manifest that breaks the schema is a
    DataError (``load_manifest``).
    """
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    rows, problems = [], []

    def check_files(entries: tuple[FileEntry, ...]) -> list[str]:
        return [p for p in (_file_problem(bundle, f) for f in entries) if p]

    bad = check_files(manifest.files)
    rows.append({"name": "bundle files", "hashes": "ok" if not bad else "; ".join(bad),
                 "loads": "-"})
    problems += bad
    for art in manifest.artifacts:
        bad = check_files(art.files)
        row = {"name": art.name, "hashes": "ok" if not bad else "; ".join(bad), "loads": "-"}
        problems += bad
        if load and not bad:
            row["loads"], problem = _check_loads(bundle, manifest, art)
            problems += [problem] if problem else []
        rows.append(row)
    unlisted = unlisted_files(bundle, manifest)
    problems += [f"{p}: not in {MANIFEST}" for p in unlisted if p.startswith(f"{ARTIFACTS}/")]
    others = [p for p in unlisted if not p.startswith(f"{ARTIFACTS}/")]
    if others:
        rows.append({"name": "unlisted files",
                     "hashes": f"not in {MANIFEST} (not checked): {_summary(others)}",
                     "loads": "-"})
    if problems:
        raise VerificationFailed(f"{bundle}: " + "; ".join(problems))
    return rows

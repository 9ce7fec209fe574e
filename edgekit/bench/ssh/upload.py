"""The run folder on the device: files go in as one tar stream and are checked there.

One fresh folder ``WORKDIR/run-<random>`` per executor. ``upload`` sends a bundle (its
manifest's files) and, once, the single-file runner (``edgekit-runner.pyz``); every file's
sha256 is then computed *on the device* and compared with the local hashes (a mismatch is a
DeviceError: nothing is measured on a corrupted or altered copy). Each bundle, and each list of
evaluation images, is sent once per executor. ``remove()`` deletes the folder.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import shlex
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from edgekit.bench.payload import runner_zip
from edgekit.bench.ssh.connection import DeviceError, SshConnection, quote, sh, tail
from edgekit.bench.ssh.preflight import DeviceProbe
from edgekit.bundle import bundle_file, read_manifest, sha256_file
from edgekit.errors import DataError

_SHA256 = r'''
import hashlib, json
out = {}
for path in json.loads(PATHS):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[path] = h.hexdigest()
    except OSError:
        out[path] = None
print("EDGEKIT_SHA256 " + json.dumps(out))
'''


def bundle_files(bundle: Path) -> list[str]:
    """manifest.json and every file the manifest lists, as safe relative POSIX paths: each
    must resolve inside the bundle (a ``..`` path or a symlink to a file outside is a
    DataError), so nothing outside the bundle is ever uploaded."""
    manifest = read_manifest(bundle)
    rels = ["manifest.json", *(f["path"] for f in manifest.get("files", [])),
            *(f["path"] for a in manifest.get("artifacts", []) for f in a["files"])]
    out = []
    for rel in dict.fromkeys(rels):
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise DataError(f"{bundle}/manifest.json lists an unsafe file path {rel!r}")
        bundle_file(bundle, p.as_posix())  # resolves inside the bundle, symlinks included
        out.append(p.as_posix())
    return out


class RunFolder:
    """The executor's folder on the device (under the preflight's ``workdir``); remote paths
    below are relative to it. ``timeout`` bounds each transfer and check (seconds)."""

    def __init__(self, connection: SshConnection, probe: DeviceProbe,
                 timeout: float | None) -> None:
        self.connection = connection
        self.probe = probe
        self.timeout = timeout
        self.path: str | None = None  # absolute remote path, once chosen
        self.runner: str | None = None  # the runner, relative to the run folder, once sent
        self._bundles: dict[Path, str] = {}
        self._inputs: dict[tuple[str, ...], str] = {}  # image lists already on the device

    def locate(self) -> str:
        """The folder's absolute path on the device, chosen (not created) on first use."""
        if self.path is None:
            base = self.probe.facts()["workdir"].rstrip("/") or "/"
            self.path = f"{base}/run-{secrets.token_hex(6)}"
        return self.path

    def send(self, members: list[tuple[str, Path | bytes]]) -> None:
        """Write ``members`` (relative remote path, local file or bytes) into the run folder
        through one tar stream."""
        run = self.locate()
        label = self.connection.label
        command = sh(f"mkdir -p {shlex.quote(run)}/pids && cd {shlex.quote(run)} && tar -xf -")
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(self.connection.popen_args(command), stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=err)
            try:
                with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.GNU_FORMAT) as tf:
                    for name, src in members:
                        if isinstance(src, bytes):
                            info = tarfile.TarInfo(name)
                            info.size, info.mode = len(src), 0o644
                            tf.addfile(info, io.BytesIO(src))
                        else:
                            with open(src, "rb") as fh:  # a symlink sends its target's bytes
                                info = tf.gettarinfo(arcname=name, fileobj=fh)
                                info.uid = info.gid = 0
                                info.uname = info.gname = ""
                                tf.addfile(info, fh)
            except BrokenPipeError:
                pass  # the remote side ended early; its error is read below
            finally:
                try:
                    proc.stdin.close()  # type: ignore[union-attr]
                except BrokenPipeError:
                    pass
                try:
                    rc = proc.wait(timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    rc = -1
            err.seek(0)
            stderr = err.read().decode(errors="replace")
        if rc == 255:
            raise self.connection.device_error(stderr, "copy files to")
        if rc != 0:
            raise DeviceError(f"copying files to {run} on {label} failed (exit code {rc}): "
                              f"{tail(stderr)}")

    def verify(self, expected: dict[str, str]) -> None:
        """Hash the uploaded files ON THE DEVICE and compare with ``expected`` (sha256)."""
        run = self.locate()
        label = self.connection.label
        script = f"PATHS = {json.dumps(sorted(expected))!r}\n{_SHA256}"
        command = sh(f"cd {shlex.quote(run)} && exec {quote(self.probe.python)} -")
        done = self.connection.run(command, input=script.encode(), timeout=self.timeout,
                                   action="verify the copied files on")
        out = done.stdout.decode(errors="replace")
        line = next((ln for ln in out.splitlines() if ln.startswith("EDGEKIT_SHA256 ")), None)
        if done.returncode != 0 or line is None:
            raise DeviceError(f"cannot hash the copied files on {label}: "
                              f"{tail(done.stderr.decode(errors='replace') or out)}")
        remote = json.loads(line.split(" ", 1)[1])
        bad = [f"{p} ({'missing' if remote.get(p) is None else 'sha256 ' + remote[p][:12]} "
               f"!= {sha[:12]})" for p, sha in expected.items() if remote.get(p) != sha]
        if bad:
            raise DeviceError(f"the files copied to {run} on {label} differ from the local "
                              f"ones: {'; '.join(bad)}. The transfer was corrupted or something "
                              "on the device changed them; nothing was measured")

    def upload(self, bundle: str | Path) -> str:
        """Copy ``bundle`` (its manifest's files) and the runner once; the bundle's remote path
        relative to the run folder. Hashes are checked on the device."""
        key = Path(bundle).resolve()
        if key in self._bundles:
            return self._bundles[key]
        rels = bundle_files(key)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", key.name) or "bundle"
        remote = f"bundles/{len(self._bundles)}-{name}"
        members: list[tuple[str, Path | bytes]] = []
        expected: dict[str, str] = {}
        for rel in rels:
            path = key / rel
            if not path.is_file():
                raise DataError(f"{path}: listed in manifest.json but missing")
            members.append((f"{remote}/{rel}", path))
            expected[f"{remote}/{rel}"] = sha256_file(path)
        if self.runner is None:
            self.connection.connect()
            pyz, sha = runner_zip(str(self.connection.tmp))
            members.append((pyz.name, pyz))
            expected[pyz.name] = sha
        self.send(members)
        self.verify(expected)
        if self.runner is None:
            self.runner = "edgekit-runner.pyz"
        self._bundles[key] = remote
        return remote

    def upload_images(self, images: Sequence[Path]) -> str:
        """The run-folder subfolder holding ``images`` + ``images.txt`` on the device: sent once
        per executor for the same list (every artifact classifies the same evaluation images);
        removed with the run folder."""
        key = tuple(str(Path(p).resolve()) for p in images)
        if key in self._inputs:
            return self._inputs[key]
        folder = f"inputs-{secrets.token_hex(4)}"
        members: list[tuple[str, Path | bytes]] = []
        names = []
        for i, p in enumerate(images):
            p = Path(p)
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", p.name)
            names.append(f"{folder}/{i:06d}-{safe}")
            members.append((names[-1], p))
        members.append((f"{folder}/images.txt", "".join(f"{n}\n" for n in names).encode()))
        self.send(members)
        self._inputs[key] = folder
        return folder

    def remove(self) -> None:
        """Delete the run folder on the device (best effort; nothing when never made)."""
        if self.path is None:
            return
        try:
            self.connection.run(sh(f"rm -rf {shlex.quote(self.path)}"),
                                timeout=self.connection.connect_timeout + 60,
                                action="clean up on")
        except (DeviceError, OSError):
            pass

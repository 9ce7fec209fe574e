"""Benchmark a bundle on a device over the user's own OpenSSH (``docs/TARGETS.md``, protocol).

``SshExecutor`` is the executor of ``edgekit.bench.run`` for ``access: {kind: ssh}`` targets. It
runs the ``ssh`` program (so ``~/.ssh/config``, agents and ``ProxyJump`` work as they do for the
user), always with ``BatchMode=yes`` (never a prompt) and ``StrictHostKeyChecking=yes`` (an
unknown or changed host key is an error, never accepted). One connection is opened and shared
(``ControlMaster``, socket in a private temporary folder) and closed by ``close()``.

1. ``preflight()``: one command reports the device's CPU (``hostinfo``'s own code, run there),
   Python, numpy/Pillow/runtime versions, governor, clocks, temperature, ``vcgencmd`` and
   ``taskset``; a missing Python, numpy or Pillow, or no runtime at all, is a ``DeviceError``.
2. Upload: the manifest's files and the single-file runner (``edgekit-runner.pyz``) go into one
   fresh run folder ``WORKDIR/run-<random>`` as one tar stream; every file's sha256 is then
   computed *on the device* and compared with the local hashes (a mismatch is a DeviceError).
   Each bundle is sent once per executor.
3. ``time_artifact``: ``python3 edgekit-runner.pyz BUNDLE --bench`` there, with the protocol's
   options, the thread count and ``taskset -c`` pinning; the row is the runner's JSON line (the
   same as ``LocalExecutor``'s, including the thermal sampling done by the runner), with
   ``environment.host`` added. A failing artifact is a ``RunFailed`` (one row), naming the
   backend when its runtime is not installed on the device.
4. ``logits``: the images go over as one tar stream; the runner writes ``--save-logits`` there
   and the ``.npy`` comes back.
5. ``close()``: stops any runner still running (each run writes its PID to ``pids/``), removes
   the run folder and ends the shared connection.

Pinning: a protocol with ``pin`` CPU ids pins to exactly those (checked against the device's
cores). Otherwise, an executor made with ``pin=True`` (a target with ``pin: true``) pins a run
with ``N`` threads to the device's LAST ``N`` cores: CPU 0 takes most interrupts (and the SSH
session itself), so the highest-numbered cores are the quietest. No secret (key contents,
passwords) is ever read, stored or reported: only the key's path is passed to ``ssh -i``.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgekit.bench.executor import Executor, RunFailed, last_error, options_args, runner_json
from edgekit.bench.protocol import Protocol
from edgekit.bundle import artifact_backend
from edgekit.errors import ConfigError, DataError, EdgekitError
from edgekit.targets import SshAccess, ssh_option_problem

MIN_PYTHON = (3, 10)
# (distribution, import name) of what the runner may need on the device.
DEVICE_PACKAGES = (("numpy", "numpy"), ("Pillow", "PIL"), ("onnxruntime", "onnxruntime"),
                   ("openvino", "openvino"), ("ai-edge-litert", "ai_edge_litert"),
                   ("tflite-runtime", "tflite_runtime"), ("pydicom", "pydicom"),
                   ("edgekit", "edgekit"))
# backend -> (distributions, any of which runs it; what to pip install on the device)
BACKEND_PACKAGES = {"onnxruntime": (("onnxruntime",), "onnxruntime"),
                    "openvino": (("openvino",), "openvino"),
                    "litert": (("ai-edge-litert", "tflite-runtime"), "ai-edge-litert")}
_RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino",
                    "litert": "ai_edge_litert"}
_INSTALL_HINT = ("pip install 'edgekit[litert]' (or: pip install numpy pillow plus one runtime: "
                 "ai-edge-litert, onnxruntime or openvino)")
_UNREACHABLE = ("connection refused", "connection timed out", "no route to host",
                "could not resolve hostname", "network is unreachable", "operation timed out",
                "name or service not known", "temporary failure in name resolution",
                "connection closed by", "connection reset", "banner exchange")


class DeviceError(EdgekitError):
    """The device cannot be used: unreachable, key refused, host key unknown or changed, no
    Python/numpy/runtime there, or the copied files differ. The message says what to do.
    ``unreachable`` is true only when nothing answered (no route, refused, timed out, unknown
    name): the one case in which a bench may fall back to predictions."""

    unreachable = False


# ----------------------------------------------------------------------------- host text
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")  # DNS name, IPv4, ssh config alias
_IPV6 = re.compile(r"^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(%[A-Za-z0-9_.-]+)?$")


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"--host {whole!r}: the port must be a number from 1 to 65535")
    return int(text)


def parse_host(text: str) -> tuple[str | None, str, int | None]:
    """``user@host[:port]`` (also ``host``, ``[::1]:2222``, ``user@[fe80::1%eth0]``) →
    ``(user or None, host, port or None)``. Bad text is a ConfigError (exit code 2)."""
    whole = text
    t = text.strip()
    bad = f"--host {whole!r} is not user@host[:port] (IPv6: user@[addr]:port)"
    if not t or any(c.isspace() for c in t):
        raise ConfigError(bad)
    user = None
    if "@" in t:
        user, _, t = t.rpartition("@")
        if not _USER.match(user):
            raise ConfigError(f"{bad}: {user!r} is not a user name")
    port = None
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or not _IPV6.match(host):
            raise ConfigError(bad)
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(bad)
            port = _port(rest[1:], whole)
    elif t.count(":") == 1:
        host, _, p = t.partition(":")
        port = _port(p, whole)
    elif t.count(":") > 1:  # a bare IPv6 address: no port
        host = t
        if not _IPV6.match(host):
            raise ConfigError(bad)
    else:
        host = t
    if not host or (":" not in host and not _HOSTNAME.match(host)):
        raise ConfigError(bad)
    return user, host, port


def format_host(user: str | None, host: str, port: int | None) -> str:
    """``user@host:port`` (IPv6 in brackets; parts left out when unknown)."""
    h = f"[{host}]" if ":" in host else host
    return f"{user + '@' if user else ''}{h}{f':{port}' if port else ''}"


def _tail(text: str, n: int = 4) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines()
             if ln.strip() and set(ln.strip()) != {"@"}]
    return " | ".join(lines[-n:]) or "no error output"


def _q(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def _sh(script: str) -> str:
    """A POSIX sh script as one remote command, whatever the user's login shell is."""
    return "sh -c " + shlex.quote(script)


# ------------------------------------------------------------------------- remote snippets
_PREFLIGHT = r'''
import json, os, platform, shutil, sys
out = {"python": platform.python_version(), "python_path": sys.executable,
       "version_info": list(sys.version_info[:3]), "os": platform.platform(),
       "machine": platform.machine(), "cores": os.cpu_count(),
       "home": os.path.expanduser("~"),
       "workdir": os.path.abspath(os.path.expanduser(WORKDIR)),
       "taskset": shutil.which("taskset") is not None,
       "vcgencmd": shutil.which("vcgencmd") is not None}
try:
    ns = {"__name__": "edgekit_hostinfo"}
    exec(compile(HOSTINFO, "hostinfo.py", "exec"), ns)
    out["cpu"] = ns["cpu_info"]()
    out["temperature_c"] = ns["temperature_c"]()
    out["throttled"] = ns["throttled"]()
except Exception as exc:
    out["cpu_error"] = repr(exc)
import importlib.util
try:
    from importlib import metadata
except ImportError:
    metadata = None
packages = {}
for dist, module in PACKAGES:
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    version = None
    if found:
        version = "unknown"
        if metadata is not None:
            try:
                version = metadata.version(dist)
            except Exception:
                pass
    packages[dist] = version
out["packages"] = packages
print("EDGEKIT_PREFLIGHT " + json.dumps(out))
'''

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


def _bundle_files(bundle: Path) -> list[str]:
    """manifest.json and every file the manifest lists, as safe relative POSIX paths."""
    from edgekit.bundle import read_manifest

    manifest = read_manifest(bundle)
    rels = ["manifest.json", *(f["path"] for f in manifest.get("files", [])),
            *(f["path"] for a in manifest.get("artifacts", []) for f in a["files"])]
    out = []
    for rel in dict.fromkeys(rels):
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise DataError(f"{bundle}/manifest.json lists an unsafe file path {rel!r}")
        out.append(p.as_posix())
    return out


def _stop_master(args: list[str], tmp: str) -> None:
    """End a ControlMaster connection and remove its private folder (also a finalizer)."""
    if os.path.exists(os.path.join(tmp, "cm")):
        try:
            subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=15,
                           check=False)
        except (OSError, subprocess.SubprocessError):
            pass
    shutil.rmtree(tmp, ignore_errors=True)


class SshExecutor(Executor):
    """Runs the device runner on a board over SSH (see the module docstring).

    ``access`` is the target's ``SshAccess``; ``host`` (``user@host[:port]``) overrides its
    address. ``ssh_options`` are extra ``-o`` options (validated like ``access.options``).
    ``pin=True`` pins each run with N threads to the device's last N cores (when the protocol
    names no CPUs itself). ``timeout`` bounds each remote command (seconds, None: no limit)."""

    kind = "ssh"

    def __init__(self, access: SshAccess | None = None, *, host: str | None = None,
                 connect_timeout: float = 10, timeout: float | None = 3600,
                 ssh_options: Sequence[str] = (), pin: bool = False, multiplex: bool = True,
                 ssh: str = "ssh") -> None:
        if access is None and host is None:
            raise ConfigError("an SSH device needs an address: give --host user@host[:port] "
                              "or a target with access: {kind: ssh, host: ..., user: ...}")
        user = access.user if access else None
        addr = access.host if access else ""
        port = access.port if access else None
        if host is not None:
            h_user, addr, h_port = parse_host(host)
            user, port = h_user or user, h_port or port
        self.user, self.host, self.port = user, addr, port
        self.key = os.path.expanduser(access.key) if access and access.key else None
        self.known_hosts = (os.path.expanduser(access.known_hosts)
                            if access and access.known_hosts else None)
        self.workdir = access.workdir if access else "~/edgekit-bench"
        self.python = shlex.split(access.python if access else "python3") or ["python3"]
        self.options = [*(access.options if access else []), *ssh_options]
        for option in self.options:
            problem = ssh_option_problem(option)
            if problem:
                raise ConfigError(problem)
        for what, path in (("key", self.key), ("known_hosts file", self.known_hosts)):
            if path and not os.path.isfile(path):
                raise ConfigError(f"SSH {what} {path} not found")
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.pin = pin
        self.multiplex = multiplex
        self.ssh = ssh
        self.label = format_host(self.user, self.host, self.port)
        self._tmp: str | None = None
        self._master = False
        self._finalizer: Any = None
        self._facts: dict[str, Any] | None = None
        self._run_dir: str | None = None  # absolute remote path, once created
        self._runner: str | None = None  # remote path of the runner, relative to the run dir
        self._bundles: dict[Path, str] = {}
        self._inputs: dict[tuple[str, ...], str] = {}  # image lists already on the device
        self._closed = False

    @classmethod
    def for_target(cls, target: Any, host: str | None = None, **kwargs: Any) -> SshExecutor:
        """The executor of a target: its ``access`` when that is ``ssh`` (``host``, e.g. from
        ``--host``, overrides the address), else ``host`` alone; ``pin: true`` pins."""
        access = target.access if target.access.kind == "ssh" else None
        if access is None and host is None:
            raise ConfigError(f"target {target.name!r} is reached by {target.access.kind!r}, "
                              "not ssh: give --host user@host[:port] to run it on a device")
        return cls(access, host=host, pin=bool(target.pin), **kwargs)

    # ------------------------------------------------------------------------ ssh plumbing
    def _args(self, *, master: bool = False) -> list[str]:
        args = [self.ssh, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={max(1, round(self.connect_timeout))}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if self.known_hosts:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.key:
            args += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if self.port:
            args += ["-p", str(self.port)]
        for option in self.options:
            args += ["-o", option]
        if self.multiplex and self._tmp is not None:
            args += ["-o", f"ControlPath={os.path.join(self._tmp, 'cm')}",
                     "-o", "ControlMaster=" + ("yes" if master else "no")]
        if self.user:
            args += ["-l", self.user]
        return args

    def _device_error(self, stderr: str, action: str) -> DeviceError:
        text = stderr.lower()
        known = self.known_hosts or "~/.ssh/known_hosts"
        host = f"[{self.host}]:{self.port}" if self.port and self.port != 22 else self.host
        if "remote host identification has changed" in text or "has changed and you have" in text:
            hint = (f"the device's host key differs from the one recorded in {known}: the device "
                    "was reinstalled, or something is intercepting the connection. Check the "
                    "key's fingerprint on the device itself (ssh-keygen -lf "
                    "/etc/ssh/ssh_host_ed25519_key.pub), then replace the old entry "
                    f"(ssh-keygen -R '{host}'"
                    + (f" -f {self.known_hosts}" if self.known_hosts else "") + ")")
        elif "host key verification failed" in text or "host key is known" in text:
            hint = (f"host key verification failed: the device's host key is not in {known}. "
                    f"Connect once by hand (ssh{f' -p {self.port}' if self.port else ''} "
                    f"{self.label.rsplit(':', 1)[0] if self.port else self.label}), compare the "
                    "fingerprint with the device's own (ssh-keygen -lf "
                    "/etc/ssh/ssh_host_ed25519_key.pub on the device) and accept it; edgekit "
                    "never turns host-key checking off")
        elif "permission denied" in text or "too many authentication failures" in text:
            hint = ("the device refused the key: "
                    + (f"{self.key}" if self.key else "no key from the SSH agent or config")
                    + f" is not in ~/.ssh/authorized_keys of {self.user or 'the user'} on the "
                    "device (add its .pub there, e.g. with ssh-copy-id), or the user name is "
                    "wrong. Passwords cannot be used: edgekit runs ssh with BatchMode=yes")
        elif any(s in text for s in _UNREACHABLE):
            hint = ("the device is not reachable: check that it is on and on the network, the "
                    "address and port, and that sshd runs there (try: ssh "
                    f"{'-p ' + str(self.port) + ' ' if self.port else ''}"
                    f"{self.label.rsplit(':', 1)[0] if self.port else self.label} true)")
        else:
            hint = "ssh failed"
        error = DeviceError(f"cannot {action} {self.label}: {hint}. ssh said: {_tail(stderr)}")
        error.unreachable = hint.startswith("the device is not reachable")
        return error

    def _connect(self) -> None:
        """Open the shared connection (ControlMaster) once; errors are DeviceErrors."""
        if self._closed:
            raise DeviceError(f"the SSH executor for {self.label} is closed")
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="edgekit-ssh-")  # private: mode 0700
        if self._master or not self.multiplex:
            return
        log = os.path.join(self._tmp, "master.log")
        args = [*self._args(master=True), "-o", "ControlPersist=120", "-N", "-f",
                "--", self.host]
        try:
            with open(log, "wb") as fh:
                done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=fh, timeout=self.connect_timeout + 30, check=False)
        except subprocess.TimeoutExpired:
            self._drop_tmp()
            raise DeviceError(f"cannot connect to {self.label}: no answer within "
                              f"{self.connect_timeout + 30:.0f} s") from None
        except OSError as exc:
            self._drop_tmp()
            raise DeviceError(f"cannot run {self.ssh!r} (install OpenSSH's client): {exc}") \
                from None
        if done.returncode != 0:
            with open(log, encoding="utf-8", errors="replace") as fh:
                err = fh.read()
            self._drop_tmp()
            raise self._device_error(err, "connect to")
        self._master = True
        exit_args = [*self._args(), "-O", "exit", "--", self.host]
        self._finalizer = weakref.finalize(self, _stop_master, exit_args, self._tmp)

    def _drop_tmp(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None

    def _popen_args(self, command: str) -> list[str]:
        self._connect()
        return [*self._args(), "--", self.host, command]

    def _ssh(self, command: str, *, input: bytes | None = None, timeout: float | None = None,
             action: str = "run a command on") -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` on the device; ssh's own failures (exit 255) are DeviceErrors."""
        args = self._popen_args(command)
        kwargs: dict[str, Any] = {"input": input} if input is not None \
            else {"stdin": subprocess.DEVNULL}
        try:
            done = subprocess.run(args, capture_output=True, timeout=timeout, check=False,
                                  **kwargs)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"cannot {action} {self.label}: no answer within {timeout:.0f} s"
                              ) from None
        if done.returncode == 255:
            raise self._device_error(done.stderr.decode(errors="replace"), action)
        return done

    # --------------------------------------------------------------------------- preflight
    def preflight(self) -> dict[str, Any]:
        """Facts about the device from ONE command (cached): see the module docstring."""
        if self._facts is not None:
            return self._facts
        from edgekit.bench import hostinfo

        script = (f"HOSTINFO = {Path(hostinfo.__file__).read_text()!r}\n"
                  f"PACKAGES = {DEVICE_PACKAGES!r}\nWORKDIR = {self.workdir!r}\n{_PREFLIGHT}")
        py = _q(self.python)
        command = _sh(f"command -v {shlex.quote(self.python[0])} >/dev/null 2>&1 || "
                      "{ echo EDGEKIT_NO_PYTHON; uname -m; exit 0; }; exec " + py + " -")
        done = self._ssh(command, input=script.encode(), timeout=self.connect_timeout + 60,
                         action="run the preflight check on")
        out = done.stdout.decode(errors="replace")
        err = done.stderr.decode(errors="replace")
        if "EDGEKIT_NO_PYTHON" in out:
            arch = out.split("EDGEKIT_NO_PYTHON", 1)[1].strip()
            raise DeviceError(
                f"{self.python[0]} not found on {self.label} ({arch or 'unknown arch'}; PATH of "
                f"a non-interactive SSH session): install Python >= {MIN_PYTHON[0]}."
                f"{MIN_PYTHON[1]} there and {_INSTALL_HINT}, or set the target's access.python "
                "to the interpreter's full path")
        line = next((ln for ln in out.splitlines() if ln.startswith("EDGEKIT_PREFLIGHT ")), None)
        if done.returncode != 0 or line is None:
            raise DeviceError(f"the preflight check failed on {self.label} with "
                              f"{' '.join(self.python)} (exit code {done.returncode}): "
                              f"{_tail(err or out)}")
        facts = json.loads(line.split(" ", 1)[1])
        self._check_facts(facts)
        cpu = facts.get("cpu") or {"model": "unknown", "arch": facts["machine"],
                                   "logical_cores": facts["cores"], "physical_cores": None,
                                   "features": [], "governor": None,
                                   "freq_mhz": {"current": None, "max": None}}
        self._facts = {
            "host": self.label, "arch": cpu["arch"], "cores": cpu["logical_cores"],
            "cpu": cpu, "features": cpu["features"], "python": facts["python"],
            "python_path": facts["python_path"], "os": facts["os"],
            "packages": facts["packages"], "governor": cpu["governor"],
            "freq_mhz": cpu["freq_mhz"], "temperature_c": facts.get("temperature_c"),
            "throttled": facts.get("throttled"), "taskset": facts["taskset"],
            "vcgencmd": facts["vcgencmd"], "home": facts["home"], "workdir": facts["workdir"]}
        return self._facts

    def _check_facts(self, facts: dict[str, Any]) -> None:
        py = " ".join(self.python)
        if tuple(facts["version_info"]) < MIN_PYTHON:
            raise DeviceError(f"{py} on {self.label} is Python {facts['python']}; the runner "
                              f"needs >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (set access.python to a "
                              "newer interpreter there)")
        pk = facts["packages"]
        missing = [n for n in ("numpy", "Pillow") if not pk.get(n)]
        if missing:
            raise DeviceError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                              f"not installed for {py} on {self.label}: run there "
                              f"`{py} -m {_INSTALL_HINT}`")
        if not any(pk.get(d) for dists, _ in BACKEND_PACKAGES.values() for d in dists):
            raise DeviceError(f"no inference runtime is installed for {py} on {self.label}: "
                              f"run there `{py} -m {_INSTALL_HINT}`")

    def environment(self) -> dict[str, Any]:
        """The device, in the shape of ``protocol.environment()`` plus ``host``."""
        f = self.preflight()
        return {"cpu": f["cpu"], "os": f["os"], "python": f["python"],
                "packages": {k: v for k, v in f["packages"].items() if v},
                "temperature_c": f["temperature_c"], "throttled": f["throttled"],
                "host": self.label}

    # ------------------------------------------------------------------------------ upload
    def _remote_dir(self) -> str:
        if self._run_dir is None:
            base = self.preflight()["workdir"].rstrip("/") or "/"
            self._run_dir = f"{base}/run-{secrets.token_hex(6)}"
        return self._run_dir

    def _send(self, members: list[tuple[str, Path | bytes]]) -> None:
        """Write ``members`` (relative remote path, local file or bytes) into the run folder
        through one tar stream."""
        run = self._remote_dir()
        command = _sh(f"mkdir -p {shlex.quote(run)}/pids && cd {shlex.quote(run)} && tar -xf -")
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(self._popen_args(command), stdin=subprocess.PIPE,
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
            raise self._device_error(stderr, "copy files to")
        if rc != 0:
            raise DeviceError(f"copying files to {run} on {self.label} failed (exit code {rc}): "
                              f"{_tail(stderr)}")

    def _verify(self, expected: dict[str, str]) -> None:
        """Hash the uploaded files ON THE DEVICE and compare with ``expected`` (sha256)."""
        run = self._remote_dir()
        script = f"PATHS = {json.dumps(sorted(expected))!r}\n{_SHA256}"
        done = self._ssh(_sh(f"cd {shlex.quote(run)} && exec {_q(self.python)} -"),
                         input=script.encode(), timeout=self.timeout,
                         action="verify the copied files on")
        out = done.stdout.decode(errors="replace")
        line = next((ln for ln in out.splitlines() if ln.startswith("EDGEKIT_SHA256 ")), None)
        if done.returncode != 0 or line is None:
            raise DeviceError(f"cannot hash the copied files on {self.label}: "
                              f"{_tail(done.stderr.decode(errors='replace') or out)}")
        remote = json.loads(line.split(" ", 1)[1])
        bad = [f"{p} ({'missing' if remote.get(p) is None else 'sha256 ' + remote[p][:12]} "
               f"!= {sha[:12]})" for p, sha in expected.items() if remote.get(p) != sha]
        if bad:
            raise DeviceError(f"the files copied to {run} on {self.label} differ from the local "
                              f"ones: {'; '.join(bad)}. The transfer was corrupted or something "
                              "on the device changed them; nothing was measured")

    def upload(self, bundle: str | Path) -> str:
        """Copy ``bundle`` (its manifest's files) and the runner once; the bundle's remote path
        relative to the run folder. Hashes are checked on the device."""
        from edgekit.bench.payload import runner_zip
        from edgekit.bundle import sha256_file

        key = Path(bundle).resolve()
        if key in self._bundles:
            return self._bundles[key]
        rels = _bundle_files(key)
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
        if self._runner is None:
            self._connect()
            pyz, sha = runner_zip(str(self._tmp))
            members.append((pyz.name, pyz))
            expected[pyz.name] = sha
        self._send(members)
        self._verify(expected)
        if self._runner is None:
            self._runner = "edgekit-runner.pyz"
        self._bundles[key] = remote
        return remote

    # ------------------------------------------------------------------------------ running
    def _cpus(self, protocol: Protocol, threads: int | None) -> list[int] | None:
        cores = int(self.preflight()["cores"] or 1)
        if protocol.pin:
            bad = sorted(c for c in protocol.pin if c < 0 or c >= cores)
            if bad:
                raise ConfigError(f"cannot pin to CPUs {bad} on {self.label}: it has {cores} "
                                  f"cores (CPU 0 to {cores - 1})")
            return sorted(protocol.pin)
        if self.pin:
            n = min(threads or cores, cores)
            return list(range(cores - n, cores))
        return None

    def _require_runtime(self, backend: str | None) -> None:
        if backend not in BACKEND_PACKAGES:
            return
        dists, pip = BACKEND_PACKAGES[backend]
        if not any(self.preflight()["packages"].get(d) for d in dists):
            py = " ".join(self.python)
            raise RunFailed(f"{backend} is not installed on the device {self.label} (for {py}): "
                            f"run there `{py} -m pip install {pip}` to time {backend} artifacts")

    def _remote_error(self, stderr: str, backend: str | None) -> str:
        message = last_error(stderr)
        if not backend:
            return f"on {self.label}: {message}"
        last = (stderr.strip().splitlines() or [""])[-1]
        module = _RUNTIME_MODULES.get(backend, backend)
        import_failed = (("ImportError" in last or "ModuleNotFoundError" in last)
                         and (module in stderr or backend in stderr))
        if import_failed or f"{backend} is not installed" in message \
                or f"'{backend}' is not installed" in message:
            _, pip = BACKEND_PACKAGES.get(backend, ((), backend))
            return (f"{backend} is not installed (or does not import) on the device "
                    f"{self.label}: {message}; run there `{' '.join(self.python)} -m pip install "
                    f"{pip}`")
        return f"on {self.label}: {message}"

    def _run(self, args: Sequence[str], *, threads: int | None = None,
             cpus: Sequence[int] | None = None, backend: str | None = None) -> str:
        """Run the runner in the run folder; its stdout. Stopped on the device on timeout or
        interrupt (its PID is in ``pids/``)."""
        run = self._remote_dir()
        token = f"pids/{secrets.token_hex(6)}"
        env = ["PYTHONUNBUFFERED=1"] + ([f"OMP_NUM_THREADS={threads}"] if threads else [])
        pin = (["taskset", "-c", ",".join(map(str, cpus))]
               if cpus and self.preflight()["taskset"] else [])
        # The PID is written before the cancel mark is checked and _kill marks before it reads
        # the PID: a runner stopped while it starts either is killed or never starts.
        inner = (f"echo $$ > {token}.pid; [ -f {token}.cancel ] && exit 130; "
                 f"exec env {_q(env)} {_q(pin)} {_q(self.python)} {_q(args)}")
        outer = (f"cd {shlex.quote(run)} || exit 97; sh -c {shlex.quote(inner)}; rc=$?; "
                 f"rm -f {token}.pid; exit $rc")
        try:
            done = self._ssh(_sh(outer), timeout=self.timeout, action="run the runner on")
        except DeviceError as exc:
            self._kill(token)  # timed out, or the connection broke: stop it there
            if "no answer within" in str(exc):
                raise RunFailed(f"timed out after {self.timeout:.0f} s on {self.label}: "
                                f"{' '.join(args[1:4])}") from None
            raise
        except BaseException:  # KeyboardInterrupt: leave nothing running on the device
            self._kill(token)
            raise
        stderr = done.stderr.decode(errors="replace")
        rc = done.returncode
        if rc == 97:
            raise DeviceError(f"the run folder {run} vanished on {self.label}")
        if rc > 128:  # killed by a signal on the device; SIGKILL is usually the OOM killer
            raise RunFailed(f"the runner was killed by signal {rc - 128} on {self.label}"
                            + (" (out of memory?)" if rc == 137 else "")
                            + (f": {last_error(stderr)}" if stderr.strip() else ""))
        if rc != 0:
            raise RunFailed(self._remote_error(stderr, backend))
        return done.stdout.decode(errors="replace")

    def _kill(self, token: str | None = None) -> None:
        """Stop the runner started as ``token`` (``pids/<hex>``), or every runner (best effort)."""
        if self._run_dir is None:
            return
        mark = f"touch {token}.cancel; " if token else ""
        script = (f"cd {shlex.quote(self._run_dir)} 2>/dev/null || exit 0; {mark}"
                  f"for f in {token or 'pids/*'}.pid; "
                  "do [ -f \"$f\" ] || continue; p=$(cat \"$f\"); kill -TERM \"$p\" 2>/dev/null;"
                  " i=0; while kill -0 \"$p\" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; "
                  "i=$((i+1)); done; kill -KILL \"$p\" 2>/dev/null; rm -f \"$f\"; done; exit 0")
        try:
            self._ssh(_sh(script), timeout=self.connect_timeout + 30,
                      action="stop the runner on")
        except (DeviceError, OSError):
            pass

    def time_artifact(self, bundle: Path, artifact: str, threads: int | None,
                      protocol: Protocol, options: dict[str, Any] | None = None,
                      ) -> dict[str, Any]:
        """One measurement on the device: the runner's ``--bench`` row (see LocalExecutor)."""
        backend = artifact_backend(Path(bundle), artifact)
        self._require_runtime(backend)
        remote = self.upload(bundle)
        cpus = self._cpus(protocol, threads)
        if cpus is not None and tuple(cpus) != protocol.pin:
            protocol = Protocol.from_dict({**protocol.to_dict(), "pin": cpus})
        args = [self._runner, remote, "--bench", "--artifact", artifact, *protocol.cli_args(),
                *options_args(options)]
        if threads:
            args += ["--threads", str(threads)]
        row = runner_json(self._run(args, threads=threads, cpus=cpus, backend=backend))
        if isinstance(row.get("environment"), dict):
            row["environment"]["host"] = self.label
        return row

    def time_source(self, source: str, shape: Sequence[int], threads: int | None,
                    protocol: Protocol) -> dict[str, Any]:
        raise RunFailed("the PyTorch source is not timed on an SSH device: devices run the "
                        "runner without torch; compare with the fp32 artifacts instead")

    def time_file(self, path: Path, backend: str, shape: Sequence[int], threads: int | None,
                  protocol: Protocol, options: dict[str, Any] | None = None) -> dict[str, Any]:
        raise RunFailed("a bare model file is not timed on an SSH device: the device runner "
                        "times the artifacts of a bundle (edgekit bench BUNDLE --host ...)")

    def logits(self, bundle: Path, artifact: str, images: Sequence[Path],
               options: dict[str, Any] | None = None) -> np.ndarray:
        """The artifact's raw outputs for ``images`` (rows in order), computed on the device."""
        backend = artifact_backend(Path(bundle), artifact)
        self._require_runtime(backend)
        remote = self.upload(bundle)
        folder = self._upload_images(images)
        out = f"{folder}/logits-{secrets.token_hex(4)}.npy"
        try:
            self._run([self._runner, remote, "--artifact", artifact, "--image-list",
                       f"{folder}/images.txt", "--save-logits", out,
                       *options_args(options)], backend=backend)
            done = self._ssh(_sh(f"cd {shlex.quote(self._remote_dir())} && cat {out}"),
                             timeout=self.timeout, action="fetch the logits from")
            if done.returncode != 0:
                raise RunFailed(f"cannot fetch the logits from {self.label}: "
                                f"{_tail(done.stderr.decode(errors='replace'))}")
            return np.load(io.BytesIO(done.stdout), allow_pickle=False)
        finally:
            try:
                self._ssh(_sh(f"rm -f {shlex.quote(self._remote_dir())}/{out}"),
                          timeout=self.connect_timeout + 30, action="clean up on")
            except DeviceError:
                pass

    def _upload_images(self, images: Sequence[Path]) -> str:
        """The run-folder subfolder holding ``images`` + ``images.txt`` on the device: sent once
        per executor for the same list (every artifact classifies the same evaluation images);
        removed with the run folder by ``close()``."""
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
        self._send(members)
        self._inputs[key] = folder
        return folder

    # ------------------------------------------------------------------------------ closing
    def close(self) -> None:
        """Stop any runner left, remove the run folder on the device, end the connection."""
        if self._closed:
            return
        try:
            if self._run_dir is not None:
                self._kill()
                try:
                    self._ssh(_sh(f"rm -rf {shlex.quote(self._run_dir)}"),
                              timeout=self.connect_timeout + 60, action="clean up on")
                except (DeviceError, OSError):
                    pass
        finally:
            self._closed = True
            if self._finalizer is not None:
                self._finalizer()
            else:
                self._drop_tmp()

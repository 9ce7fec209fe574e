"""``SshExecutor``: the device runner on a board, over the connection, facts and run folder.

``time_artifact`` runs ``python3 edgekit-runner.pyz BUNDLE --bench`` in the run folder with the
protocol's options, the thread count and ``taskset -c`` pinning; the row is the runner's JSON
line (the same as ``LocalExecutor``'s, including the thermal sampling done by the runner), with
``environment.host`` added. A failing artifact is a ``RunFailed`` (one row), naming the backend
when its runtime is not installed on the device. ``logits`` sends the images once and fetches
the ``.npy`` the runner wrote there. Each run writes its PID to ``pids/``, so a timeout or an
interrupt stops it on the device, and ``close()`` stops any runner left.
"""

from __future__ import annotations

import io
import os
import secrets
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bench.executor import Executor, RunFailed, last_error, options_args, runner_json
from edgekit.bench.protocol import Protocol
from edgekit.bench.ssh.connection import DeviceError, SshConnection, quote, sh, tail
from edgekit.bench.ssh.host import parse_host
from edgekit.bench.ssh.preflight import DeviceProbe, pip_name, runtime_module
from edgekit.bench.ssh.upload import RunFolder
from edgekit.bundle import artifact_backend
from edgekit.errors import ConfigError
from edgekit.targets import SshAccess, Target, ssh_option_problem


class SshExecutor(Executor):
    """Runs the device runner on a board over SSH (see ``edgekit.bench.ssh``).

    ``access`` is the target's ``SshAccess``; ``host`` (``user@host[:port]``) overrides its
    address. ``ssh_options`` are extra ``-o`` options (validated like ``access.options``).
    ``pin=True`` pins each run with N threads to the device's last N cores (when the protocol
    names no CPUs itself). ``timeout`` bounds each remote command (seconds, None: no limit).

    The parts, one concern each: ``connection`` (the ``ssh`` program and the shared
    connection), ``probe`` (the device's facts, ``preflight()``), ``files`` (the run folder:
    upload and remote verification); this class runs the runner there."""

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
        key = os.path.expanduser(access.key) if access and access.key else None
        known_hosts = (os.path.expanduser(access.known_hosts)
                       if access and access.known_hosts else None)
        options = [*(access.options if access else []), *ssh_options]
        for option in options:
            problem = ssh_option_problem(option)
            if problem:
                raise ConfigError(problem)
        for what, path in (("key", key), ("known_hosts file", known_hosts)):
            if path and not os.path.isfile(path):
                raise ConfigError(f"SSH {what} {path} not found")
        self.workdir = access.workdir if access else "~/edgekit-bench"
        self.python = shlex.split(access.python if access else "python3") or ["python3"]
        self.timeout = timeout
        self.pin = pin
        self.connection = SshConnection(user, addr, port, key=key, known_hosts=known_hosts,
                                        options=options, connect_timeout=connect_timeout,
                                        multiplex=multiplex, ssh=ssh)
        self.label = self.connection.label
        self.probe = DeviceProbe(self.connection, self.python, self.workdir)
        self.files = RunFolder(self.connection, self.probe, timeout)

    @classmethod
    def for_target(cls, target: Target, host: str | None = None, **kwargs: Any) -> SshExecutor:
        """The executor of a target: its ``access`` when that is ``ssh`` (``host``, e.g. from
        ``--host``, overrides the address), else ``host`` alone; ``pin: true`` pins."""
        access = target.access if target.access.kind == "ssh" else None
        if access is None and host is None:
            raise ConfigError(f"target {target.name!r} is reached by {target.access.kind!r}, "
                              "not ssh: give --host user@host[:port] to run it on a device")
        return cls(access, host=host, pin=bool(target.pin), **kwargs)

    @property
    def user(self) -> str | None:
        return self.connection.user

    @property
    def host(self) -> str:
        return self.connection.host

    @property
    def port(self) -> int | None:
        return self.connection.port

    def preflight(self) -> dict[str, Any]:
        """Facts about the device from ONE command (cached; ``edgekit.bench.ssh.preflight``)."""
        return self.probe.facts()

    def environment(self) -> dict[str, Any]:
        """The device, in the shape of ``protocol.environment()`` plus ``host``."""
        return self.probe.environment()

    def upload(self, bundle: str | Path) -> str:
        """Copy ``bundle`` and the runner once (hashes checked on the device); the bundle's
        remote path relative to the run folder."""
        return self.files.upload(bundle)

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
        if backend is not None and not self.probe.has_runtime(backend):
            py = " ".join(self.python)
            raise RunFailed(f"{backend} is not installed on the device {self.label} (for {py}): "
                            f"run there `{py} -m pip install {pip_name(backend)}` to time "
                            f"{backend} artifacts")

    def _remote_error(self, stderr: str, backend: str | None) -> str:
        message = last_error(stderr)
        if not backend:
            return f"on {self.label}: {message}"
        last = (stderr.strip().splitlines() or [""])[-1]
        module = runtime_module(backend)
        import_failed = (("ImportError" in last or "ModuleNotFoundError" in last)
                         and (module in stderr or backend in stderr))
        if import_failed or f"{backend} is not installed" in message \
                or f"'{backend}' is not installed" in message:
            return (f"{backend} is not installed (or does not import) on the device "
                    f"{self.label}: {message}; run there `{' '.join(self.python)} -m pip install "
                    f"{pip_name(backend)}`")
        return f"on {self.label}: {message}"

    def _run(self, args: Sequence[str], *, threads: int | None = None,
             cpus: Sequence[int] | None = None, backend: str | None = None) -> str:
        """Run the runner in the run folder; its stdout. Stopped on the device on timeout or
        interrupt (its PID is in ``pids/``)."""
        run = self.files.locate()
        token = f"pids/{secrets.token_hex(6)}"
        env = ["PYTHONUNBUFFERED=1"] + ([f"OMP_NUM_THREADS={threads}"] if threads else [])
        pin = (["taskset", "-c", ",".join(map(str, cpus))]
               if cpus and self.preflight()["taskset"] else [])
        # The PID is written before the cancel mark is checked and _kill marks before it reads
        # the PID: a runner stopped while it starts either is killed or never starts.
        inner = (f"echo $$ > {token}.pid; [ -f {token}.cancel ] && exit 130; "
                 f"exec env {quote(env)} {quote(pin)} {quote(self.python)} {quote(args)}")
        outer = (f"cd {shlex.quote(run)} || exit 97; sh -c {shlex.quote(inner)}; rc=$?; "
                 f"rm -f {token}.pid; exit $rc")
        try:
            done = self.connection.run(sh(outer), timeout=self.timeout,
                                       action="run the runner on")
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
        if self.files.path is None:
            return
        mark = f"touch {token}.cancel; " if token else ""
        script = (f"cd {shlex.quote(self.files.path)} 2>/dev/null || exit 0; {mark}"
                  f"for f in {token or 'pids/*'}.pid; "
                  "do [ -f \"$f\" ] || continue; p=$(cat \"$f\"); kill -TERM \"$p\" 2>/dev/null;"
                  " i=0; while kill -0 \"$p\" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; "
                  "i=$((i+1)); done; kill -KILL \"$p\" 2>/dev/null; rm -f \"$f\"; done; exit 0")
        try:
            self.connection.run(sh(script), timeout=self.connection.connect_timeout + 30,
                                action="stop the runner on")
        except (DeviceError, OSError):
            pass

    def _prepare(self, bundle: Path, artifact: str) -> tuple[str | None, str]:
        """The artifact's backend (its runtime checked on the device) and the bundle's remote
        path (uploaded once)."""
        backend = artifact_backend(Path(bundle), artifact)
        self._require_runtime(backend)
        return backend, self.upload(bundle)

    def time_artifact(self, bundle: Path, artifact: str, threads: int | None,
                      protocol: Protocol, options: dict[str, Any] | None = None,
                      ) -> dict[str, Any]:
        """One measurement on the device: the runner's ``--bench`` row (see LocalExecutor)."""
        backend, remote = self._prepare(bundle, artifact)
        cpus = self._cpus(protocol, threads)
        if cpus is not None and tuple(cpus) != protocol.pin:
            protocol = Protocol.from_dict({**protocol.to_dict(), "pin": cpus})
        args = [self.files.runner, remote, "--bench", "--artifact", artifact,
                *protocol.cli_args(), *options_args(options)]
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
        backend, remote = self._prepare(bundle, artifact)
        folder = self.files.upload_images(images)
        out = f"{folder}/logits-{secrets.token_hex(4)}.npy"
        try:
            self._run([self.files.runner, remote, "--artifact", artifact, "--image-list",
                       f"{folder}/images.txt", "--save-logits", out,
                       *options_args(options)], backend=backend)
            done = self.connection.run(sh(f"cd {shlex.quote(self.files.locate())} && cat {out}"),
                                       timeout=self.timeout, action="fetch the logits from")
            if done.returncode != 0:
                raise RunFailed(f"cannot fetch the logits from {self.label}: "
                                f"{tail(done.stderr.decode(errors='replace'))}")
            return np.load(io.BytesIO(done.stdout), allow_pickle=False)
        finally:
            try:
                self.connection.run(sh(f"rm -f {shlex.quote(self.files.locate())}/{out}"),
                                    timeout=self.connection.connect_timeout + 30,
                                    action="clean up on")
            except DeviceError:
                pass

    # ------------------------------------------------------------------------------ closing
    def close(self) -> None:
        """Stop any runner left, remove the run folder on the device, end the connection."""
        if self.connection.closed:
            return
        try:
            if self.files.path is not None:
                self._kill()
                self.files.remove()
        finally:
            self.connection.close()

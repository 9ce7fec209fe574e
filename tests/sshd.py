"""A real OpenSSH server on 127.0.0.1 for the SSH executor's tests (a helper, not a test file).

``start_sshd(folder)`` generates a host key and two user keys (one authorized, one not), writes an
sshd config that lets the current user in with the authorized key only (no passwords, no PAM),
starts ``/usr/sbin/sshd -D -e`` on a free port and waits until it accepts connections. Host-key
checking stays on: ``known_hosts`` holds the server's real key, ``wrong_known_hosts`` another
key for the same ``[127.0.0.1]:PORT``. ``Sshd.stop()`` ends the server.

Root (the CI and dev containers) logs in with ``PermitRootLogin prohibit-password``; sshd run by
root needs its privilege-separation folder ``/run/sshd``, created here when missing.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                "/usr/libexec/sftp-server")


def unavailable() -> str | None:
    """Why a test sshd cannot run here (a skip reason), or None."""
    if not os.path.exists(SSHD):
        return f"{SSHD} not found: install openssh-server (scripts/setup.sh does)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not found: install openssh-client (scripts/setup.sh does)"
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        try:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        except OSError as exc:
            return f"sshd needs /run/sshd, which cannot be created: {exc}"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str) -> Path:
    """A new passphrase-less ed25519 key pair at ``path`` / ``path.pub``."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True, capture_output=True)
    path.chmod(0o600)
    return path


def _public(path: Path) -> str:
    """``ssh-ed25519 AAAA...`` (type and key, no comment) of a key pair's public half."""
    kind, key = Path(f"{path}.pub").read_text().split()[:2]
    return f"{kind} {key}"


@dataclass
class Sshd:
    folder: Path
    port: int
    user: str
    key: Path  # authorized user key
    other_key: Path  # a valid key the server does not know
    known_hosts: Path  # the server's real host key
    wrong_known_hosts: Path  # another host key for the same [127.0.0.1]:PORT
    host: str = "127.0.0.1"
    log: Path = field(default=Path())
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def start_sshd(folder: Path, timeout: float = 15.0) -> Sshd:
    """Start a private sshd in ``folder`` (keys, config, log); raise RuntimeError if it fails."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    host_key = keygen(folder / "host_ed25519", "edgekit-test-host")
    other_host_key = keygen(folder / "other_host_ed25519", "edgekit-test-other-host")
    key = keygen(folder / "user_ed25519", "edgekit-test-user")
    other_key = keygen(folder / "stranger_ed25519", "edgekit-test-stranger")
    authorized = folder / "authorized_keys"
    authorized.write_text(_public(key) + "\n")
    authorized.chmod(0o600)
    port = free_port()
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {_public(host_key)}\n")
    wrong = folder / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{port} {_public(other_host_key)}\n")
    user = getpass.getuser()
    sftp = next((p for p in SFTP_SERVERS if os.path.exists(p)), None)
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        f"AllowUsers {user}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",  # the keys live in pytest's tmp folders
        "MaxSessions 50",
        "MaxStartups 50",
        "X11Forwarding no",
        "PrintMotd no",
        "LogLevel VERBOSE",
        *([f"Subsystem sftp {sftp}"] if sftp else []),
    ]) + "\n")
    log = folder / "sshd.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    server = Sshd(folder, port, user, key, other_key, known, wrong, log=log, proc=proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with code {proc.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"sshd did not accept connections on port {port} within {timeout} s: "
                       f"{log.read_text()}")


def masters(marker: str) -> list[int]:
    """PIDs of ssh ControlMaster processes whose command line contains ``marker``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ssh ") and "ControlMaster=yes" in cmd and marker in cmd:
                found.append(int(d.name))
    return found


def serve(tmp_path_factory):
    """The session fixture's body (``conftest.sshd``): a running sshd, stopped afterwards; fails
    the teardown if an SSH executor left its shared connection (ControlMaster) running."""
    import os

    import pytest

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    server = start_sshd(tmp_path_factory.mktemp("sshd") / "server")
    yield server
    server.stop()
    leaked = masters(f"-p {server.port} ")
    for pid in leaked:
        os.kill(pid, 15)
    assert not leaked, "an SSH executor left its shared connection (ControlMaster) running"


def ssh_access(server, workdir, **changes):
    """An ``SshAccess`` reaching ``server`` as its user with its key and known_hosts; the
    "device" Python is this one (numpy, Pillow and every runtime)."""
    import sys

    from edgekit.targets import SshAccess

    fields = {"kind": "ssh", "host": server.host, "user": server.user, "port": server.port,
              "key": str(server.key), "known_hosts": str(server.known_hosts),
              "workdir": str(workdir), "python": sys.executable, **changes}
    return SshAccess(**fields)

"""The ``ssh`` program to one device: its arguments, the shared connection, its errors.

Always ``BatchMode=yes`` (never a prompt) and ``StrictHostKeyChecking=yes`` (an unknown or
changed host key is an error, never accepted). One connection is opened on first use and shared
(``ControlMaster``, socket in a private temporary folder, mode 0700); ``close()`` ends it, and a
finalizer ends it should the owner be dropped without closing. ssh's own failures (exit 255)
become a :class:`DeviceError` that says what to do.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Sequence
from typing import Any

from edgekit.bench.ssh.host import format_host
from edgekit.errors import EdgekitError

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


# ------------------------------------------------------------------------ remote commands
def tail(text: str, n: int = 4) -> str:
    """The last ``n`` useful lines of ssh's or a command's output, as one line."""
    lines = [ln.strip() for ln in text.strip().splitlines()
             if ln.strip() and set(ln.strip()) != {"@"}]
    return " | ".join(lines[-n:]) or "no error output"


def quote(words: Sequence[str]) -> str:
    """Words as one shell-quoted string."""
    return " ".join(shlex.quote(str(w)) for w in words)


def sh(script: str) -> str:
    """A POSIX sh script as one remote command, whatever the user's login shell is."""
    return "sh -c " + shlex.quote(script)


def _stop_master(args: list[str], tmp: str) -> None:
    """End a ControlMaster connection and remove its private folder (also a finalizer)."""
    if os.path.exists(os.path.join(tmp, "cm")):
        try:
            subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=15,
                           check=False)
        except (OSError, subprocess.SubprocessError):
            pass
    shutil.rmtree(tmp, ignore_errors=True)


class SshConnection:
    """``ssh`` to ``user@host:port`` with the executor's key, known_hosts file and ``-o``
    options (already validated). ``tmp`` is the private local folder of the shared connection
    (None until the first command); the executor also writes the runner zipapp there."""

    def __init__(self, user: str | None, host: str, port: int | None, *, key: str | None,
                 known_hosts: str | None, options: Sequence[str], connect_timeout: float,
                 multiplex: bool, ssh: str) -> None:
        self.user, self.host, self.port = user, host, port
        self.key, self.known_hosts, self.options = key, known_hosts, list(options)
        self.connect_timeout = connect_timeout
        self.multiplex = multiplex
        self.ssh = ssh
        self.label = format_host(user, host, port)
        self.tmp: str | None = None
        self.closed = False
        self._master = False
        self._finalizer: Any = None

    def args(self, *, master: bool = False) -> list[str]:
        """The ``ssh`` command line up to (not including) ``-- HOST COMMAND``."""
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
        if self.multiplex and self.tmp is not None:
            args += ["-o", f"ControlPath={os.path.join(self.tmp, 'cm')}",
                     "-o", "ControlMaster=" + ("yes" if master else "no")]
        if self.user:
            args += ["-l", self.user]
        return args

    def device_error(self, stderr: str, action: str) -> DeviceError:
        """ssh's failure to ``action`` the device, explained from what ssh printed."""
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
        error = DeviceError(f"cannot {action} {self.label}: {hint}. ssh said: {tail(stderr)}")
        error.unreachable = hint.startswith("the device is not reachable")
        return error

    def connect(self) -> None:
        """Open the shared connection (ControlMaster) once; errors are DeviceErrors."""
        if self.closed:
            raise DeviceError(f"the SSH executor for {self.label} is closed")
        if self.tmp is None:
            self.tmp = tempfile.mkdtemp(prefix="edgekit-ssh-")  # private: mode 0700
        if self._master or not self.multiplex:
            return
        log = os.path.join(self.tmp, "master.log")
        args = [*self.args(master=True), "-o", "ControlPersist=120", "-N", "-f",
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
            raise self.device_error(err, "connect to")
        self._master = True
        exit_args = [*self.args(), "-O", "exit", "--", self.host]
        self._finalizer = weakref.finalize(self, _stop_master, exit_args, self.tmp)

    def _drop_tmp(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None

    def popen_args(self, command: str) -> list[str]:
        """The whole command line that runs ``command`` on the device (connecting first)."""
        self.connect()
        return [*self.args(), "--", self.host, command]

    def run(self, command: str, *, input: bytes | None = None, timeout: float | None = None,
            action: str = "run a command on") -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` on the device; ssh's own failures (exit 255) are DeviceErrors."""
        args = self.popen_args(command)
        kwargs: dict[str, Any] = {"input": input} if input is not None \
            else {"stdin": subprocess.DEVNULL}
        try:
            done = subprocess.run(args, capture_output=True, timeout=timeout, check=False,
                                  **kwargs)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"cannot {action} {self.label}: no answer within {timeout:.0f} s"
                              ) from None
        if done.returncode == 255:
            raise self.device_error(done.stderr.decode(errors="replace"), action)
        return done

    def close(self) -> None:
        """End the shared connection and remove the private folder; later commands fail."""
        self.closed = True
        if self._finalizer is not None:
            self._finalizer()
        else:
            self._drop_tmp()

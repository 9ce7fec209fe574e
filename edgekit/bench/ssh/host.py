"""``user@host[:port]`` text: parsed from ``--host``, formatted for messages (IPv6 in [])."""

from __future__ import annotations

import re

from edgekit.errors import ConfigError

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

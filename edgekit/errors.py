"""One small error hierarchy, translated to exit codes in one place (``edgekit.cli``).

Usage and configuration errors exit 2; every other failure exits 1. Messages are written for
the person at the terminal: they name the file, the key, the operator or the backend.
"""

from __future__ import annotations

import errno


class EdgekitError(Exception):
    """Base class of every error edgekit raises on purpose. Exit code 1."""

    exit_code = 1


class ConfigError(EdgekitError):
    """A bad argument, option, recipe or target: the user's call is wrong. Exit code 2."""

    exit_code = 2


class UnreachableTarget(ConfigError):
    """A pruning target (MACs or time fraction) below what the protected layers allow.
    ``reachable`` is the smallest fraction reached at the largest ratio allowed."""

    def __init__(self, message: str, reachable: float) -> None:
        super().__init__(message)
        self.reachable = reachable


class DataError(EdgekitError):
    """Input data cannot be used: missing folder, corrupt image, empty class, ..."""


class UnsafeSourceError(EdgekitError):
    """A model file would need arbitrary code execution to load (e.g. a pickled module)."""


class BackendUnavailable(EdgekitError):
    """A runtime or converter package is not installed; the message says how to add it."""


class ExportError(EdgekitError):
    """A conversion failed; the message names the operator and the backend where known."""


class VerificationFailed(EdgekitError):
    """An exported artifact disagrees with its source beyond the allowed tolerance or gate."""


class OutputError(EdgekitError):
    """An output (bundle, checkpoint, run folder) could not be written: the disk is full, a
    quota is reached, the device failed. Exit code 1."""


# where the user asked for the output cannot take it (choose another place): exit 2
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# a place that could, but has no room (free space and run again): exit 1
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
WRITE_ERRNOS = _NOT_WRITABLE | _NO_ROOM


def write_failed(what: str, exc: OSError) -> EdgekitError:
    """The error for an OSError met while writing ``what`` (a phrase naming the output and its
    path): the cause (strerror) and the file it happened on. A read-only or forbidden place is a
    ConfigError (choose another), anything else (a full disk) an OutputError."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in _NOT_WRITABLE:
        return ConfigError(f"cannot write {what}: {cause}{where}; choose another place")
    return OutputError(f"cannot write {what}: {cause}{where}")

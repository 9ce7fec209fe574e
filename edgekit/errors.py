"""One small error hierarchy, translated to exit codes in one place (``edgekit.cli``).

Usage and configuration errors exit 2; every other failure exits 1. Messages are written for
the person at the terminal: they name the file, the key, the operator or the backend.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class of every error edgekit raises on purpose. Exit code 1."""

    exit_code = 1


class ConfigError(EdgekitError):
    """A bad argument, option, recipe or target: the user's call is wrong. Exit code 2."""

    exit_code = 2


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

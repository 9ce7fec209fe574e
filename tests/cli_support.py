"""Drive the ``edgekit`` CLI in-process: one helper for every test file (fixture ``cli``)."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner, Result

from edgekit.cli import main


def run_cli(*args: Any, code: int = 0) -> Result:
    """Invoke ``edgekit ARGS`` (paths and numbers are stringified); assert the exit code."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, (result.output, result.stderr)
    return result

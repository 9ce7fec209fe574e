"""``python -m edgekit`` and the ``edgekit`` command: the command line, with Ctrl-C and SIGTERM
reported as an interrupt (exit 130/143, ``edgekit.interrupts``) from the first moment, while
the command line's modules are still being imported (about a second)."""

from __future__ import annotations

import signal
import sys
from importlib import import_module

from edgekit import interrupts


def run() -> None:
    try:
        with interrupts.handled():
            try:  # imported once the handler is in place (not at the top: that is the point)
                cli = import_module("edgekit.cli").main
                if interrupts.received() is not None:  # deferred until the import finished
                    raise KeyboardInterrupt
            except BaseException:
                if interrupts.received() is None:
                    raise
                message, code = interrupts.describe(interrupts.received())
                print(f"Error: {message}", file=sys.stderr)
                sys.exit(code)
            cli()
    finally:
        # the command has finished (its exit code is decided): a Ctrl-C while the interpreter
        # shuts down (torch's teardown takes a moment) must not turn it into a killed process
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    run()

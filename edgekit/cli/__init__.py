"""The ``edgekit`` command line: a Click group whose commands are thin wrappers over the API.

Errors are translated to exit codes in ONE place (``EdgekitGroup.invoke``): usage and
configuration errors exit 2, every other EdgekitError exits 1, always as ``Error: <message>``.
Ctrl-C and SIGTERM (``edgekit.interrupts``) exit 130 and 143 as ``Error: interrupted (...)``,
whatever error the interrupted code raised on its way out.
"""

from __future__ import annotations

import warnings

import click

from edgekit import __version__, interrupts
from edgekit.cli import (
    backends,
    bench,
    compress,
    demo,
    evaluate,
    inspect,
    models,
    phantoms,
    prune,
    report,
    targets,
    train,
    verify,
)
from edgekit.errors import EdgekitError
from edgekit.ui import console, set_quiet


class _CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class EdgekitGroup(click.Group):
    """A Click group that turns EdgekitError into ``Error: ...`` with the right exit code."""

    def main(self, *args, **kwargs):  # noqa: D102
        with interrupts.handled():
            return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _CliError(*interrupts.describe(interrupts.received())) from exc
        except EdgekitError as exc:
            if interrupts.received():  # e.g. an export that failed because it was interrupted
                raise _CliError(*interrupts.describe(interrupts.received())) from exc
            raise _CliError(str(exc), exc.exit_code) from exc
        except Exception as exc:
            if interrupts.received():  # e.g. ImportError: a module the interrupt left half-made
                raise _CliError(*interrupts.describe(interrupts.received())) from exc
            raise


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    console.print(f"[yellow]Warning:[/] {message}", highlight=False, markup=True)


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                 "max_content_width": 100})
@click.version_option(__version__, prog_name="edgekit")
@click.option("-q", "--quiet", is_flag=True, help="Only print results and errors.")
def main(quiet: bool) -> None:
    """edgekit: make medical-imaging CNN classifiers ship-ready for CPU-only devices.

    \b
    Start with the self-contained demo (synthetic phantoms, no downloads):
      edgekit demo
    Train a zoo model on a class-per-folder dataset and look inside it:
      edgekit train dsconv_cbam_gap --data Training/ --epochs 10 --input-size 128 --out model.pt
      edgekit inspect model.pt
    """
    set_quiet(quiet)
    warnings.showwarning = _show_warning


def _register() -> None:
    for mod in (models, backends, targets, inspect, phantoms, train, evaluate, prune, compress,
                verify, bench, report, demo):
        main.add_command(mod.command)


_register()

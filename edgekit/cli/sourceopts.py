"""Options every command that loads a model source shares (Keras sources need them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def source_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--trust-source`` and ``--input-range`` (Keras sources)."""
    fn = click.option(
        "--input-range", type=click.Choice(["0-255", "0-1"]), default=None,
        help="Keras sources: the pixel range the model takes [default: read from the model — "
             "0-255 when it rescales in-graph (Rescaling/Normalization after the input)].")(fn)
    return click.option(
        "--trust-source", is_flag=True,
        help="Keras sources: also load Lambda layers (arbitrary Python code, refused by safe "
             "mode). Only for files you trust.")(fn)

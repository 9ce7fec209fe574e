"""Option decorators shared by several commands (one place: commands never import each other)."""

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


def latency_target_options(fn: Any) -> Any:
    """``--target-latency-ms``, ``--target`` and ``--threads``: shared by prune and compress."""
    for option in reversed((
        click.option("--target-latency-ms", type=click.FloatRange(0, min_open=True),
                     default=None,
                     help="Prune step by step until the fp32 model's p50 latency on --target is "
                          "at most this many ms (measured on this machine: local targets only)."),
        click.option("--target", default="x86-local", show_default=True,
                     help="Target for --target-latency-ms (see `edgekit targets`)."),
        click.option("--threads", type=click.IntRange(1, 1024), default=None,
                     help="Threads for --target-latency-ms [default: the target's largest]."),
    )):
        fn = option(fn)
    return fn


def _class_list(ctx: click.Context, param: click.Parameter, value: str | None
                ) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(","))
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise click.BadParameter(f"give each class once, comma-separated in the order of the "
                                 f"model's outputs, e.g. glioma,meningioma,notumor,pituitary; "
                                 f"got {value!r}")
    return names


def classes_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--classes a,b,c``: the order of the model's outputs, when it is not the folders'."""
    return click.option(
        "--classes", "classes", callback=_class_list, default=None, metavar="A,B,...",
        help="The class each model output means, in output order, comma-separated (the data "
             "folders' names). Use it when the model's class order is not the folders' "
             "alphabetical order; edgekit warns when the outputs look permuted.")(fn)

"""Option decorators shared by several commands (one place: commands never import each other)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgekit.data.preprocess import RESIZE_FILTERS
from edgekit.sources.declared import declared

_FLAGS = ("input_size", "color", "layout", "scale", "mean", "std", "resize")


def _floats(ctx: click.Context, param: click.Parameter, value: str | None
            ) -> tuple[float, ...] | None:
    """``0.5`` or ``0.485,0.456,0.406`` → a tuple of floats."""
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected one number or comma-separated numbers, got "
                                 f"{value!r}") from None


def preprocess_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--preprocess FILE.yaml`` and the overrides ``--input-size --color --layout --scale
    --mean --std --resize``, handed to the command as ONE ``preprocess`` argument (a
    ``DeclaredPreprocess``, read strictly: an unknown key in the file is a usage error)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        path = kwargs.pop("preprocess")
        flags = {k: kwargs.pop(k) for k in _FLAGS}
        kwargs["preprocess"] = declared(path, **flags)
        return fn(*args, **kwargs)

    for option in reversed((
        click.option("--preprocess", type=click.Path(dir_okay=False, path_type=Path),
                     default=None, metavar="FILE.yaml",
                     help="How the model's images are read: a YAML file with the keys of a "
                          "bundle manifest's preprocess section (input_size, color, layout, "
                          "scale, mean, std, resize). What the model file fixes (input shape, "
                          "layout, channels) is read from it; a contradiction is an error."),
        click.option("--input-size", type=click.IntRange(8, 4096), default=None,
                     help="Input size for sources that do not fix it (TorchScript)."),
        click.option("--color", type=click.Choice(["rgb", "gray"]), default=None,
                     help="Channels the model takes [default: the model's, else rgb]."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default=None,
                     help="Input layout [default: the model's, else NCHW]."),
        click.option("--scale", type=click.FloatRange(0, min_open=True), default=None,
                     help="Pixel scale before mean/std [default: 1/255, giving 0–1]."),
        click.option("--mean", callback=_floats, default=None, metavar="M[,M,M]",
                     help="Per-channel mean subtracted after scaling [default: 0]."),
        click.option("--std", callback=_floats, default=None, metavar="S[,S,S]",
                     help="Per-channel std divided by after the mean [default: 1]."),
        click.option("--resize", type=click.Choice(list(RESIZE_FILTERS)), default=None,
                     help="Resize filter (Pillow; area = box) [default: bilinear]."),
    )):
        wrapper = option(wrapper)
    return wrapper


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
                     help="Target for --target-latency-ms, and the one --recipe auto times its "
                          "candidates on (see `edgekit targets`)."),
        click.option("--threads", type=click.IntRange(1, 1024), default=None,
                     help="Threads for --target-latency-ms and --recipe auto [default: the "
                          "target's largest; auto: each of the target's thread counts]."),
    )):
        fn = option(fn)
    return fn


def pruning_cost_options(fn: Any) -> Any:
    """``--cost`` and ``--target-time``: how pruning ranks channels; shared by prune and
    compress."""
    for option in reversed((
        click.option("--cost", type=click.Choice(["macs", "latency"]), default=None,
                     help="Rank channels by importance alone (macs) or by importance / ms saved "
                          "per channel on --target (latency: profiles the unpruned model with "
                          "OpenVINO fp32 on a local target; a remote one falls back to macs) "
                          "[default: the recipe's]."),
        click.option("--target-time", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     default=None,
                     help="Keep this fraction of the profiled time, e.g. 0.7 (implies --cost "
                          "latency)."),
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

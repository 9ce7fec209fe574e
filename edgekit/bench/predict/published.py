"""Published latencies of reference networks on boards, as fit points and fitted groups.

The figures (XNNPACK, ncnn, Qengineering) are timed on the reference networks of
:mod:`.refnets`; their kernels are extracted with torch (on the meta device: shapes only), so
:func:`published_points` and the fits built on it need torch, imported when first called.
"""

from __future__ import annotations

import copy
import functools

from edgekit.bench.predict.hardware import BOARDS
from edgekit.bench.predict.kernel import Kernel
from edgekit.bench.predict.model import (
    Coeffs,
    Point,
    ThreadScaling,
    fit,
    fit_thread_scaling,
    group_points,
)

_XNN = "google/XNNPACK README (2022)"
_NCNN = "Tencent/ncnn benchmark/README.md"
_QENG = "Qengineering TFLite RPi 64-bit README"
V1, V2, V3L, V3S = "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"
B0, R18, R50 = "efficientnet_b0", "resnet18", "resnet50"
# (board, runtime, precision, threads, clock GHz, {model: ms}, source). ncnn's "mobilenetv3" is
# taken to be V3-Large; ncnn on the RPi 5 computes in fp16 by default, hence precision fp16;
# XNNPACK's clock is not stated: the stock 1.5 GHz is assumed.
PUBLISHED: list[tuple[str, str, str, int, float, dict[str, float], str]] = [
    ("rpi4", "xnnpack", "fp32", 4, 1.5, {V1: 77, V2: 46, V3L: 40, V3S: 15}, _XNN),
    ("rpi4", "xnnpack", "int8", 4, 1.5, {V1: 24, V2: 17}, _XNN),
    ("rpi4", "ncnn", "fp32", 4, 1.8,
     {V1: 61.2, V2: 61.9, V3L: 47.5, B0: 74.2, R18: 123.1, R50: 262.8}, _NCNN),
    ("rpi4", "ncnn", "fp32", 1, 1.8, {V1: 124.3, V2: 93.5, V3L: 72.8, R18: 191.1, R50: 534.1},
     _NCNN),
    ("rpi4", "ncnn", "int8", 4, 1.8, {V1: 34.4, R18: 83.9, R50: 196.7}, _NCNN),
    ("rpi4", "tflite", "int8", 4, 1.95, {V1: 26, V2: 22}, _QENG),
    ("rpi5", "ncnn", "fp16", 4, 2.4, {V2: 10.5, V3L: 7.4, B0: 12.3, R18: 20.0, R50: 46.2}, _NCNN),
    ("rpi5", "ncnn", "fp16", 1, 2.4, {V1: 20.3, V2: 16.4, V3L: 11.8, R18: 29.7, R50: 89.4}, _NCNN),
    ("jetson-nano", "ncnn", "fp32", 4, 1.43, {V2: 33.8, R18: 83.4, R50: 204.1}, _NCNN),
    ("jetson-nano", "ncnn", "fp32", 1, 1.43, {V2: 94.0, R18: 221.6, R50: 624.8}, _NCNN),
]


def published_points(board: str | None = None, input_size: int = 224) -> list[Point]:
    """The published latencies as fit points (kernels of the reference networks)."""
    import torch

    from edgekit.bench.predict.refnets import create_refnet
    from edgekit.bench.predict.torch_graph import kernels

    cache: dict[str, list[Kernel]] = {}
    points = []
    for b, runtime, precision, threads, clock, rows, source in PUBLISHED:
        if board is not None and b != board:
            continue
        for model, ms in rows.items():
            if model not in cache:
                with torch.device("meta"):  # shapes only: no weight initialisation cost
                    net = create_refnet(model)
                cache[model] = kernels(net, (3, input_size, input_size))
            points.append(Point(model, cache[model], float(ms), BOARDS[b], precision, threads,
                                clock, b, runtime, source))
    return points


# Boards with few published points are fitted with priors centred on a related board's fit
# (same runtime, same thread count): the RPi 4 ncnn fit. Leave-one-out median on the RPi 5 /
# Jetson Nano points: 21 % / 35 % with the default priors, 15 % / 8 % with these.
BOARD_PRIORS = {"rpi5": ("rpi4", "ncnn/fp32/{threads}"),
                "jetson-nano": ("rpi4", "ncnn/fp32/{threads}")}


def published_prior(board: str, threads: int) -> Coeffs | None:
    """The prior of ``board``'s groups at ``threads`` (:data:`BOARD_PRIORS`), or None."""
    if board not in BOARD_PRIORS:
        return None
    other, key = BOARD_PRIORS[board]
    return fit_published(other).get(key.format(threads=threads))


def fit_published(board: str) -> dict[str, Coeffs]:
    """Coefficients for every published group of ``board``, keyed ``runtime/precision/threads``
    (the keys of a target profile's ``latency_model``); priors from :data:`BOARD_PRIORS`."""
    return {k: copy.deepcopy(c) for k, c in _fit_published(board).items()}


@functools.lru_cache(maxsize=8)
def _fit_published(board: str) -> dict[str, Coeffs]:
    out = {}
    for g, ps in group_points(published_points(board)).items():
        out[g.split("/", 1)[1]] = fit(ps, published_prior(board, ps[0].threads))
    return out


def published_thread_scaling(board: str) -> ThreadScaling:
    """Thread scaling of ``board`` from its published figures of the same runtime and precision
    at two thread counts (ncnn 1 vs 4 threads)."""
    pairs, names = [], set()
    for b, runtime, precision, threads, _, rows, source in PUBLISHED:
        if b != board:
            continue
        for b2, runtime2, precision2, threads2, _, rows2, _ in PUBLISHED:
            if (b2, runtime2, precision2) == (b, runtime, precision) and threads2 > threads:
                common = sorted(set(rows) & set(rows2))
                pairs += [(threads, rows[m], threads2, rows2[m]) for m in common]
                if common:
                    names.add(f"{runtime} {precision} {threads} vs {threads2} threads "
                              f"({len(common)} models, {source})")
    if not pairs:
        raise KeyError(f"no published figures of {board} at two thread counts")
    return fit_thread_scaling(pairs, "Amdahl fit to " + "; ".join(sorted(names)))

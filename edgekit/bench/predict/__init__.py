"""Latency model: predict a CNN's batch-1 CPU latency on a target that cannot be reached.

A forward pass is split into **fused kernels** (as nn-Meter does); each kernel costs a roofline
time and the sum is calibrated on published latencies of reference networks
(:mod:`edgekit.bench.predict.refnets`)::

    t_ms = c0 + Σ_k max(work_k / (η_kind · peak), bytes_k / (η_mem · bandwidth)) + c_op · n_kernels

``peak`` is the target's all-core MAC/s for the precision, scaled by ``threads / cores`` and by
the clock of the measurement; ``bandwidth`` is the target's DRAM bandwidth (RPi 4: the STREAM
figure). The η are fitted per (board, runtime, precision, threads) group: a maximum-a-posteriori
least-squares fit of log latencies, with log-normal priors that pull every η_kind toward one
common η (times a prior kind ratio: depthwise and element-wise kernels are slower per MAC) and
the common η, η_mem, c0 and c_op toward defaults or toward a related group's fit (``prior=``).
With few points the priors decide the shape and the data only the overall scale; with many
points the data decide. Every prediction carries an expected relative error: the RMS of the
fit's leave-one-out relative residuals (``DEFAULT_REL_ERR`` when a group has under 3 points).

**Fusion rules** of :func:`kernels` (one forward pass on the meta device, recorded at the
``torch.nn.functional`` / tensor-method level):

1. ``conv*d`` and ``linear`` start a kernel: ``depthwise`` (groups = in channels), ``fc``
   (linear, or a convolution with a 1×1 output map, as SE layers are), ``conv1x1``, ``convkxk``.
2. A unary element-wise op (BN, ReLU/ReLU6/hard-swish/SiLU/GELU/sigmoid…, a tensor-scalar
   op) whose input is the output of the *immediately preceding* kernel fuses into it; otherwise
   it is an ``elementwise`` kernel of its own. Residual adds are ``elementwise`` (not fused into
   the conv) and a following activation fuses into the add.
3. A broadcast multiplication (``x * gate``) is a ``gate`` kernel, and so are the reductions
   (mean/amax/sum) of that same ``x``; other reductions and pooling ops are ``pool``.
4. ``cat`` is an ``elementwise`` copy; views, flatten and dropout are free.

``macs`` counts conv/linear multiply-accumulates only (as :mod:`edgekit.inspect`); ``work`` is
``macs`` for conv kinds and the larger of input and output elements for the others. Bytes
moved = (input + output activations + weights) × bytes per element (fp32 4, fp16 2, int8 1;
int32 biases are counted at the same width as the weights; caches are ignored).
:func:`onnx_kernels` applies the same rules to an ONNX graph (QDQ INT8 included) and yields the
same MACs and kinds as :func:`kernels` of the source module for every zoo model.

**Targets** (:func:`predict_bundle`, the bench's entry point). A profile's ``predict.routes``
says which group family (``runtime/precision``) predicts each edgekit backend at each artifact
precision, at which compute precision the kernels are costed (``compute``), how much error a
proxy adds (``proxy_rel_err``: ONNX Runtime and OpenVINO on ARM boards have no published
figures and use the ncnn groups) and a ``basis`` text carried into every row. Decisions:

* fp16 artifacts on a CPU without fp16 arithmetic (RPi 4, Jetson Nano, x86) are costed as
  fp32 compute AND fp32 bytes: LiteRT and OpenVINO expand the fp16 weights to fp32 at load, the
  activations are fp32 anyway; only the file is smaller.
* OpenVINO INT8 on ARM runs in floating point (fp16 by default; edgekit opens INT8 IRs in f32):
  costed as fp32, never as int8. On ARMv8.0 cores without fp16 arithmetic (RPi 4, Jetson Nano)
  OpenVINO 2026.4 cannot compile INT8 IRs at all: the route is ``unsupported`` and the row is
  an error saying so, not a number.
* A thread count without a fitted group lies on the Amdahl curve through the two fitted counts
  around it, else is scaled from the nearest fitted count by the target's ``thread_scaling``
  (Amdahl's law fitted on ncnn's 1- vs 4-thread figures), with that fit's error added.
* The expected error of a row combines, in quadrature, the group's leave-one-out error, the
  proxy error, the thread-scaling error and (x86 profiles predicted from another x86 machine's
  calibration) the transfer error; ``low``/``high`` are ``p50 ÷ (1 + e)`` and ``p50 × (1 + e)``.

**Local calibration** (``edgekit targets calibrate x86-local``, :mod:`edgekit.bench.calibrate`):
groups measured on this machine, stored in ``$EDGEKIT_CONFIG_DIR/calibration/x86-local.json``
(default ``~/.config/edgekit``) under a key of CPU model, core count and edgekit version; read
back by :func:`local_coeffs`, refused on any other machine or version.

**Modules.** ``kernel`` (the :class:`Kernel` record), ``model`` (costing, fitting, thread
scaling), ``hardware`` (:class:`Hardware`, the boards, this machine), ``published`` (the
published figures as fit points), ``onnx_graph`` (:func:`onnx_kernels`), ``calibration`` (local
calibration files), ``route`` (a target's latency model, :func:`predict_route`), ``bundle``
(:func:`predict_bundle`). The package imports no torch: the torch-bound parts,
``torch_graph`` (:func:`kernels`, :func:`predict_module`) and ``refnets`` (the reference
networks), are imported only where a torch module is traced; :func:`kernels` and
:func:`predict_module` resolve lazily from here.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from edgekit.bench.predict.bundle import bundle_kernels, predict_bundle
from edgekit.bench.predict.calibration import (
    CALIBRATION_FORMAT,
    NOT_CALIBRATED,
    CalibrationMismatch,
    calibration_path,
    config_dir,
    local_coeffs,
    machine_identity,
    read_calibration,
    write_calibration,
)
from edgekit.bench.predict.hardware import (
    BOARDS,
    Hardware,
    detect_hardware,
    last_level_cache_mb,
    measure_bandwidth_gbs,
)
from edgekit.bench.predict.kernel import BYTES, CONV_KINDS, KINDS, Kernel
from edgekit.bench.predict.model import (
    DEFAULT_PRIOR,
    DEFAULT_REL_ERR,
    KIND_RATIO,
    MIN_REL_ERR,
    SIGMA_DATA,
    SIGMA_KIND,
    SIGMA_PRIOR,
    Coeffs,
    Point,
    Prediction,
    ThreadScaling,
    coeffs_from_target,
    fit,
    fit_thread_scaling,
    group_points,
    kernel_times,
    loo_errors,
    predict,
    thread_prior,
)
from edgekit.bench.predict.onnx_graph import onnx_kernels
from edgekit.bench.predict.published import (
    BOARD_PRIORS,
    PUBLISHED,
    fit_published,
    published_points,
    published_prior,
    published_thread_scaling,
)
from edgekit.bench.predict.route import TargetLatencyModel, predict_route, target_latency_model

_TORCH_BOUND = {"kernels": "edgekit.bench.predict.torch_graph",
                "predict_module": "edgekit.bench.predict.torch_graph"}

__all__ = ["BOARDS", "BOARD_PRIORS", "BYTES", "CALIBRATION_FORMAT", "CONV_KINDS", "DEFAULT_PRIOR",
           "DEFAULT_REL_ERR", "KINDS", "KIND_RATIO", "MIN_REL_ERR", "NOT_CALIBRATED", "PUBLISHED",
           "SIGMA_DATA", "SIGMA_KIND", "SIGMA_PRIOR", "CalibrationMismatch", "Coeffs", "Hardware",
           "Kernel", "Point", "Prediction", "TargetLatencyModel", "ThreadScaling",
           "bundle_kernels", "calibration_path", "coeffs_from_target", "config_dir",
           "detect_hardware", "fit", "fit_published", "fit_thread_scaling", "group_points",
           "kernel_times", "kernels", "last_level_cache_mb", "local_coeffs", "loo_errors",
           "machine_identity", "measure_bandwidth_gbs", "onnx_kernels", "predict", "predict_bundle",
           "predict_module", "predict_route", "published_points", "published_prior",
           "published_thread_scaling", "read_calibration", "target_latency_model", "thread_prior",
           "write_calibration"]


def __getattr__(name: str) -> Any:
    """The torch-bound names, imported on first use (tracing an ``nn.Module`` needs torch)."""
    if name in _TORCH_BOUND:
        return getattr(import_module(_TORCH_BOUND[name]), name)
    raise AttributeError(f"module 'edgekit.bench.predict' has no attribute {name!r}")

"""Kernels of an ``nn.Module``: one forward pass on the meta device, recorded with a
``TorchFunctionMode`` at the ``torch.nn.functional`` / tensor-method level and fused by the rules
in the package docstring. Torch-bound: imported only where a torch module is traced (the package
resolves :func:`kernels` and :func:`predict_module` lazily).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from edgekit.bench.predict.kernel import Kernel
from edgekit.bench.predict.model import Coeffs, Prediction, predict

_UNARY = {"batch_norm", "relu", "relu6", "hardtanh", "hardswish", "hardsigmoid", "sigmoid",
          "silu", "gelu", "tanh", "leaky_relu", "elu", "clamp", "clip", "softmax", "neg"}
_BINARY = {"add", "mul", "sub", "div", "iadd", "imul", "radd", "rmul", "add_", "mul_", "truediv"}
_REDUCE = {"mean", "amax", "sum", "max", "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d",
           "adaptive_max_pool2d", "amin"}
_FREE = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "dropout", "contiguous",
         "identity", "detach", "clone"}


def _tensors(args: Any) -> list[torch.Tensor]:
    if isinstance(args, torch.Tensor):
        return [args]
    if isinstance(args, (list, tuple)):
        return [t for a in args for t in _tensors(a)]
    return []


class _Recorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.kernels: list[Kernel] = []
        self.producer: dict[int, int] = {}  # id(tensor) -> kernel index
        self.keep: list[torch.Tensor] = []  # keep tensors alive so ids stay unique
        self.reductions: dict[int, list[int]] = {}  # id(input) -> reduction kernel indices

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "").strip("_")
        res = out[0] if isinstance(out, tuple) and out else out
        if isinstance(res, torch.Tensor) and name:
            self._record(name, args, kwargs, res)
        return out

    def _new(self, kernel: Kernel, out: torch.Tensor) -> None:
        kernel.channels = int(out.shape[1]) if out.dim() >= 2 else None
        self.kernels.append(kernel)
        self._own(len(self.kernels) - 1, out)

    def _own(self, index: int, out: torch.Tensor) -> None:
        self.producer[id(out)] = index
        self.keep.append(out)

    def _record(self, name: str, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        ins = _tensors(args) + _tensors(list(kwargs.values()))
        if not ins:
            return
        x = ins[0]
        if name.startswith("conv") and name[-2:] in ("1d", "2d", "3d"):
            w = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            area = math.prod(w.shape[2:])
            macs = out.numel() // out.shape[0] * w.shape[1] * area
            if groups > 1 and w.shape[1] == 1:
                kind = "depthwise"
            elif math.prod(out.shape[2:]) == 1:
                kind = "fc"
            else:
                kind = "conv1x1" if area == 1 else "convkxk"
            weights = w.numel() + (bias.numel() if isinstance(bias, torch.Tensor) else 0)
            self._new(Kernel(kind, [name], macs, x.numel(), out.numel(), weights), out)
        elif name == "linear":
            w = args[1] if len(args) > 1 else kwargs["weight"]
            macs = out.numel() // out.shape[0] * w.shape[1]
            weights = sum(t.numel() for t in ins[1:])
            self._new(Kernel("fc", [name], macs, x.numel(), out.numel(), weights), out)
        elif name in _FREE:
            if id(x) in self.producer:
                self._own(self.producer[id(x)], out)
        elif name in _BINARY and len(ins) == 2 and ins[0].shape != ins[1].shape \
                and name in ("mul", "imul", "rmul", "mul_"):
            big = max(ins, key=lambda t: t.numel())
            self._new(Kernel("gate", [name], 0, ins[0].numel() + ins[1].numel(), out.numel()),
                      out)
            for r in self.reductions.get(id(big), []):
                self.kernels[r].kind = "gate"
        elif name in _BINARY and len(ins) == 2:
            self._new(Kernel("elementwise", [name], 0, ins[0].numel() + ins[1].numel(),
                             out.numel()), out)
        elif name in _UNARY or name in _BINARY:
            last = len(self.kernels) - 1
            k = self.producer.get(id(x))
            if k is not None and k == last and self.kernels[k].kind not in ("pool", "gate") \
                    and out.numel() == x.numel():
                self.kernels[k].ops.append(name)
                self._own(k, out)
            else:
                self._new(Kernel("elementwise", [name], 0, x.numel(), out.numel()), out)
        elif name in _REDUCE:
            self._new(Kernel("pool", [name], 0, x.numel(), out.numel()), out)
            if x.dim() >= 2:  # a reduction's work scales with what it reads (a channel mean)
                self.kernels[-1].channels = int(x.shape[1])
            self.reductions.setdefault(id(x), []).append(len(self.kernels) - 1)
        elif name in ("cat", "concat", "concatenate", "stack"):
            self._new(Kernel("elementwise", [name], 0, sum(t.numel() for t in ins),
                             out.numel()), out)
        elif id(x) in self.producer and out.numel() > 1:
            self._new(Kernel("elementwise", [name], 0, x.numel(), out.numel()), out)


def kernels(module: nn.Module, input_shape: tuple[int, ...] | list[int]) -> list[Kernel]:
    """The fused kernels of one batch-1 forward pass of ``module`` (see the module docstring).

    The pass runs on a copy of the module on the meta device (shapes only, no arithmetic);
    ``input_shape`` is ``(C, H, W)`` or ``(1, C, H, W)``.
    """
    shape = tuple(input_shape)
    shape = (1, *shape) if len(shape) == 3 else shape
    meta = copy.deepcopy(module).eval().to("meta")
    rec = _Recorder()
    with torch.no_grad(), rec:
        meta(torch.zeros(shape, device="meta"))
    return rec.kernels


def predict_module(module: nn.Module, input_shape: tuple[int, ...], coeffs: Coeffs,
                   target_cpu: Any) -> Prediction:
    """:func:`predict` for an ``nn.Module`` (its kernels are extracted first)."""
    return predict(kernels(module, input_shape), coeffs, target_cpu)

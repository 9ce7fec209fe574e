"""Predicted latencies of a bundle's artifacts on a target (the bench's entry point)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.bench.predict.kernel import Kernel
from edgekit.bench.predict.onnx_graph import onnx_kernels
from edgekit.bench.predict.route import predict_route, target_latency_model
from edgekit.data.preprocess import PreprocessSpec
from edgekit.sources import load_model
from edgekit.zoo import create_model, list_models

if TYPE_CHECKING:
    import torch.nn as nn

_KERNEL_PRECISION_ORDER = {"fp32": 0, "fp16": 1, "int8": 2}


def _traced(module: nn.Module, shape: tuple[int, ...]) -> list[Kernel]:
    """:func:`.torch_graph.kernels`, imported here: torch only where a module is traced."""
    from edgekit.bench.predict.torch_graph import kernels

    return kernels(module, shape)


def bundle_kernels(bundle: str | Path, manifest: dict[str, Any],
                   module: nn.Module | None = None) -> tuple[list[Kernel], str]:
    """The fused kernels of a bundle's architecture and where they come from, best first:
    the pruned checkpoint ``source/pruned.pt`` (its plan replayed), the ``module`` passed in,
    the bundle's ONNX artifact (fp32 first; QDQ INT8 reads the same), the zoo architecture the
    manifest names (meta device, shapes only; assumes unpruned widths)."""
    bundle = Path(bundle)
    spec = PreprocessSpec.from_dict(manifest["preprocess"])
    shape = (1, spec.channels, *spec.input_size)
    pruned = bundle / "source" / "pruned.pt"
    if pruned.is_file():
        return _traced(load_model(pruned).module, shape), \
            "kernels of the pruned model source/pruned.pt"
    if module is not None:
        return _traced(module, shape), "kernels of the source model"
    onnx_arts = sorted((a for a in manifest.get("artifacts", [])
                        if (bundle / a["files"][0]["path"]).suffix == ".onnx"
                        and (bundle / a["files"][0]["path"]).is_file()),
                       key=lambda a: _KERNEL_PRECISION_ORDER.get(a.get("precision"), 9))
    for art in onnx_arts:
        try:
            return onnx_kernels(bundle / art["files"][0]["path"]), \
                f"kernels read from the ONNX artifact {art['name']}"
        except Exception:  # a graph the reader does not follow: next source
            continue
    arch = (manifest.get("source") or {}).get("architecture")
    if arch in list_models():
        import torch

        classes = len(manifest.get("class_names") or []) or None
        with torch.device("meta"):
            net = create_model(arch, num_classes=classes, input_size=spec.input_size[0])
        return _traced(net, shape), f"kernels of the zoo architecture {arch} (unpruned widths)"
    raise ValueError("cannot tell the bundle's architecture: no source/pruned.pt, no source "
                     f"model given, no readable ONNX artifact, and {arch!r} is not a zoo model")


def predict_bundle(bundle: str | Path, manifest: dict[str, Any], target: Any,
                   threads: list[int], module: nn.Module | None = None, *,
                   calibration: str | Path | None = None) -> list[dict[str, Any]]:
    """Predicted latencies of every artifact of a bundle on ``target`` at each thread count.

    One row per (artifact, threads): ``{"artifact": "<bundle>/<artifact>", "backend",
    "precision", "threads", "p50_ms", "low_ms", "high_ms", "rel_err", "group", "basis",
    "macs", "label": "predicted"}``, or ``{"artifact", "backend", "precision", "threads",
    "error"}`` saying why there is no prediction. ``low_ms``/``high_ms`` are
    ``p50 / (1 + rel_err)`` and ``p50 · (1 + rel_err)``.
    """
    bundle = Path(bundle)
    tm = target_latency_model(target, calibration)
    ks: list[Kernel] = []
    where, failure = "", tm.error
    if failure is None:
        try:
            ks, where = bundle_kernels(bundle, manifest, module)
        except Exception as exc:  # reported in the row, never raised
            failure = f"no kernels: {exc}"
    macs = sum(k.macs for k in ks)
    rows = []
    for art in manifest.get("artifacts", []):
        for t in threads:
            head = {"artifact": f"{bundle.name}/{art['name']}", "backend": art.get("backend"),
                    "precision": art.get("precision"), "threads": int(t)}
            if failure:
                rows.append({**head, "error": failure})
                continue
            got = predict_route(tm, ks, art["backend"], art["precision"], int(t))
            if "error" in got:
                rows.append({**head, "error": got["error"]})
                continue
            off = _off_fast_path(art)
            rows.append({**head, "p50_ms": round(got["p50_ms"], 4),
                         "low_ms": round(got["low_ms"], 4), "high_ms": round(got["high_ms"], 4),
                         "rel_err": round(got["rel_err"], 4), "group": got["group"],
                         "basis": f"{got['basis']}; {where}" + (off[1] if off else ""),
                         "macs": macs, "label": "predicted",
                         **({"off_fast_path": off[0]} if off else {})})
    return rows


def _off_fast_path(art: dict[str, Any]) -> tuple[int, str] | None:
    """(count, basis note) when the manifest says the artifact has ops off its runtime's fast
    path: the latency model costs every kernel at its fast rate, so the prediction is a lower
    bound for it (no calibrated penalty per op kind exists yet)."""
    record = art.get("fast_path") or {}
    ops = record.get("ops") or []
    if record.get("status") != "off" or not ops:
        return None
    kinds = sorted({str(o.get("op")) for o in ops})
    return len(ops), (f"; LOWER BOUND: {len(ops)} op(s) off the fast path when exported "
                      f"({', '.join(kinds)}), costed here as if on it")

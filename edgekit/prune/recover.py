"""Prune + recover: what ``edgekit prune`` and the pruning recipes of ``compress`` run.

A zoo model (or a ``.pt2`` / plain module, made editable by ``edgekit.prune.graph``) is pruned step by step with the engine (``edgekit.prune.engine``) and recovered after
each step by knowledge distillation from the unpruned model (``edgekit.train.recover``: KL on
logits + label loss, early-stopped, BatchNorm statistics re-estimated on clean images) on images
that are never the verification images; the pruned model is then scored against the unpruned one
with the recipe's gate. ``scan_source`` measures each group's sensitivity alone.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.calibrate import plan_data, stratified_sample
from edgekit.checkpoint import save_checkpoint
from edgekit.data.folder import scan
from edgekit.errors import ConfigError
from edgekit.evaluate import load_arrays, score
from edgekit.manifest import recorded_decision
from edgekit.metrics import metric_value
from edgekit.outputs import refuse_inside_data
from edgekit.prune.engine import (
    accumulate_gradients,
    count,
    layer_widths,
    make_plan,
    prunable_groups,
    prune,
    scan_groups,
    step_settings,
)
from edgekit.prune.graph import PROGRAM_METADATA, editable, export_program
from edgekit.prune.latency import for_latency
from edgekit.prune.profile import profile_for_target
from edgekit.recipes import pruning_recipe
from edgekit.sources import Source, load_model, predict_module, reference_outputs
from edgekit.train import RecoveryConfig, recalibrate_batchnorm, recover
from edgekit.ui import progress_bar, status
from edgekit.verify import compare


def _finite_json(obj: Any) -> Any:
    """Non-finite floats (an undefined validation metric is -inf) as None: strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_json(v) for v in obj]
    return obj


def recovery_split(samples: Sequence[Any], cfg: Any, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, validation) for recovery from the images compress may train on (never the
    verification images): stratified, seeded, capped at ``recovery.max_images``."""
    pool = list(samples)
    rec = cfg.recovery
    if rec.max_images is not None and rec.max_images < len(pool):
        pool = stratified_sample(pool, rec.max_images, seed + 7)
    n_val = max(1, int(round(len(pool) * rec.validation_fraction)))
    val = stratified_sample(pool, n_val, seed + 11)
    chosen = {s.path for s in val}
    return [s for s in pool if s.path not in chosen], val


def require_prunable(loaded: Any, what: str = "structured pruning") -> None:
    """ConfigError unless ``loaded`` is a PyTorch model with an editable graph: a zoo
    architecture, a ``torch.export`` program (``.pt2``) or another ``nn.Module`` with real
    convolution/linear layers. TorchScript, ONNX and Keras models are refused."""
    if loaded.kind == "torch":
        return
    if loaded.kind == "keras":
        raise ConfigError(f"{loaded.source}: {what} is not supported for Keras models (edgekit's "
                          "pruning engine works on PyTorch graphs). Compress it with an "
                          "unpruned recipe (fp32, fp16, int8) instead.")
    kind = {"onnx": "an ONNX model", "torchscript": "a TorchScript archive"}.get(
        loaded.kind, loaded.kind)
    raise ConfigError(f"{loaded.source}: {what} needs a PyTorch model (an edgekit checkpoint, "
                      "ARCH:weights.pt, a zoo name or a torch.export .pt2 program); this is "
                      f"{kind}, which has no editable graph. Export the PyTorch model with "
                      "torch.export.save (or prune the checkpoint), then compress it.")


def is_zoo(loaded: Any) -> bool:
    """A zoo architecture: pruned models are saved as checkpoints (architecture + plan +
    weights); any other PyTorch model as a ``torch.export`` program (``.pt2``)."""
    return getattr(loaded.module, "edgekit_name", None) is not None


def prunable_module(loaded: Any, example: Any) -> Any:
    """A copy of ``loaded``'s module that Torch-Pruning can prune (a ``.pt2``'s graph with real
    layers: ``edgekit.prune.graph.editable``); a ConfigError when it has no layer to prune."""
    import torch.nn as nn

    module = editable(loaded.module, example)
    if not any(isinstance(m, nn.Conv2d | nn.Linear) for m in module.modules()):
        raise ConfigError(f"{loaded.source}: no convolution or linear layer edgekit can prune "
                          "(their weights must be parameters of the model, not computed in "
                          "the graph)")
    return module


def latency_profile(module: Any, example: Any, cfg: Any, target: Any, threads: int | None
                    ) -> tuple[Any, Any]:
    """``(cfg, profile)`` for cost ``latency``: the unpruned model profiled on ``target`` (local
    targets: OpenVINO fp32; remote ones: predicted per kernel by the target's latency model).
    A remote target without a usable latency model has no profile: the MACs cost is used (a
    time target becomes the same fraction of the MACs), and the status line says so."""
    if getattr(cfg, "cost", "macs") != "latency":
        return cfg, None
    with progress_bar("Profiling the unpruned model (per-layer time on the target)", 1) as bar:
        prof, why = profile_for_target(module, example, target, threads=threads)
        bar.advance()
    if prof is None:
        name = getattr(target, "name", target)
        status(f"[yellow]Note:[/] pruning cost latency needs a per-layer time profile on the "
               f"target; {name} is remote and its latency model cannot give one ({why}): "
               "falling back to the MACs cost"
               + (f", keeping {cfg.target_time:.0%} of the MACs" if cfg.target_time else ""))
        changes = {"cost": "macs"}
        if cfg.target_time is not None:
            changes.update(target_macs=cfg.target_time, target_time=None)
        return cfg.model_copy(update=changes), None
    status(f"Time profile of the unpruned model: {prof.total_ms:.2f} ms on {prof.label} fp32"
           + (" (predicted, not measured)" if prof.source == "predicted" else "") + ", "
           f"{prof.threads} threads ("
           + ", ".join(f"{n} {ms:.2f}" for n, ms in list(prof.group_ms().items())[:3])
           + " ms …)")
    return cfg, prof


def prune_and_recover(loaded: Any, cfg: Any, dataset: Any, train_samples: Sequence[Any], *,
                      seed: int = 0, on_error: str = "skip", target: Any = "x86-local",
                      threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Prune ``loaded`` (a ``TorchSource`` of a zoo architecture) per the recipe's
    ``pruning`` section and recover it by distillation from the unpruned model.

    ``train_samples`` (of ``dataset``) are the images it may learn from: never the
    verification images. Returns ``(pruned TorchSource, record)``; ``record`` (JSON) holds the replayable plan, MACs,
    parameters and per-layer widths before/after, and the recovery history. The source model is
    not modified. With ``cfg.cost == "latency"`` the unpruned model is profiled on ``target``
    (``threads``) first and the record holds the profile and the predicted time fractions.
    """
    import torch

    require_prunable(loaded)
    if cfg.recovery.epochs and not loaded.pretrained:
        status("[yellow]Note:[/] recovering a model with fresh (untrained) weights")
    example = torch.zeros(loaded.spec.input_shape(1))
    # the teacher is never updated (recover() runs it under no_grad); a .pt2's graph is made
    # editable (and batch-free) for both, so the teacher's outputs are the program's own
    teacher = (loaded.module if is_zoo(loaded) else prunable_module(loaded, example)).eval()
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    macs0, params0 = count(student, example)
    widths0 = layer_widths(student)
    cfg, profile = latency_profile(teacher, example, cfg, target, threads)
    ms0 = profile.predict_ms(student) if profile is not None else None

    train_s, val_s = recovery_split(train_samples, cfg, seed)
    train_s, val_s = dataset.subset(train_s), dataset.subset(val_s)
    x_tr, y_tr = load_arrays(train_s, loaded.spec, dtype=np.float16, on_error=on_error,
                             description="Loading recovery images")
    x_va, y_va = load_arrays(val_s, loaded.spec, on_error=on_error,
                             description="Loading recovery validation images")
    steps, outcomes, recoveries = [], [], []
    for step in range(1, cfg.steps + 1):
        settings = step_settings(cfg, step, profile)
        if cfg.importance == "taylor":
            n = min(cfg.taylor_images, len(x_tr))
            pick = np.random.default_rng(seed + step).permutation(len(x_tr))[:n]
            accumulate_gradients(student, x_tr[np.sort(pick)], y_tr[np.sort(pick)],
                                 task=loaded.task)
        outcome = prune(student, example, settings, reference_macs=macs0, reference_ms=ms0)
        student.zero_grad(set_to_none=True)
        # the pruned layers' successors see new input statistics: re-estimate BN on clean images
        # (recover() does this itself before scoring its starting point)
        if not cfg.recovery.epochs:
            recalibrate_batchnorm(student, x_tr, images=cfg.recovery.bn_images)
        steps.append(outcome.history)
        outcomes.append(outcome)
        if step == 1:
            for b in outcome.blocked:
                status(f"[yellow]Note:[/] pruning around {b['target']} at node '{b['node']}', "
                       f"which {b['why']}: the channels of {', '.join(b['layers'])} are kept")
        status(f"Pruning step {step}/{cfg.steps}: channel ratio {outcome.ratio:.3f}, MACs "
               f"{outcome.macs_after / macs0:.1%} of the original, parameters "
               f"{outcome.params_after / params0:.1%}"
               + (f", predicted time {outcome.time_after_ms / ms0:.1%} of the profiled"
                  if profile is not None and ms0 else ""))
        if settings.target_macs is not None and \
                outcome.macs_after / macs0 < settings.target_macs - 0.05:
            status(f"[yellow]Note:[/] MACs fell to {outcome.macs_after / macs0:.1%}, well below "
                   f"the {settings.target_macs:.0%} asked for: with round_to "
                   f"{settings.round_to}, narrow layers lose channels in steps of "
                   f"{settings.round_to}. Global pruning or a smaller round_to lands closer.")
        if cfg.recovery.epochs:
            r = cfg.recovery
            res = recover(student, teacher, x_tr, y_tr, x_va, y_va, task=loaded.task,
                          class_names=tuple(loaded.class_names),
                          cfg=RecoveryConfig(epochs=r.epochs, lr=r.lr, batch_size=r.batch_size,
                                             patience=r.patience, kd_alpha=r.kd_alpha,
                                             temperature=r.temperature, seed=seed + step,
                                             recalibrate_bn=r.bn_images),
                          description=f"Recovering (step {step}/{cfg.steps})")
            recoveries.append(_finite_json(dataclasses.asdict(res)))
    student.eval()
    macs1, params1 = count(student, example)
    widths1 = layer_widths(student)
    plan = make_plan(steps, architecture=loaded.name, input_shape=list(example.shape),
                     protect=outcomes[0].protect if outcomes else [])
    record = {
        "plan": plan,
        "settings": cfg.model_dump() if hasattr(cfg, "model_dump") else dict(cfg),
        "macs_before": macs0, "macs_after": macs1, "macs_fraction": macs1 / macs0,
        "params_before": params0, "params_after": params1,
        "widths_before": widths0,
        "widths_after": {k: v for k, v in widths1.items() if widths0.get(k) != v},
        "steps": [{"ratio": o.ratio, "macs_fraction": o.macs_after / macs0,
                   "cost": o.cost,
                   "predicted_time_fraction": (o.time_after_ms / ms0 if ms0 and
                                               o.time_after_ms is not None else None),
                   "searched": o.searched} for o in outcomes],
        "cost": cfg.cost,
        # the per-layer time the latency cost ranked by (backend, threads, per-layer ms);
        # the measured time of the pruned model comes from a benchmark of the bundle
        "latency_profile": profile.to_dict() if profile is not None else None,
        "predicted_time_fraction": (profile.predict_ms(student) / ms0
                                    if profile is not None and ms0 else None),
        "recovery": recoveries,
        "recovery_images": {"train": len(x_tr), "validation": len(x_va)},
        "blocked": outcomes[0].blocked if outcomes else [],
        "saved_as": "checkpoint" if is_zoo(loaded) else "torch.export",
    }
    meta = dict(loaded.metadata)
    meta.setdefault("architecture", loaded.name)  # a zoo-name source has no metadata yet
    meta.setdefault("task", loaded.task)
    meta.setdefault("class_names", list(loaded.class_names))
    meta.setdefault("preprocess", loaded.spec.to_dict())
    meta["pruning"] = record
    meta["parameters"] = params1
    pruned = dataclasses.replace(loaded, module=student.eval(), metadata=meta)
    return pruned, record


def prune_and_verify(loaded: Any, rec: Any, plan: Any, x: np.ndarray, y: np.ndarray,
                     ref: np.ndarray, source_metrics: dict[str, Any], on_error: str = "skip",
                     *, target: Any = "x86-local", threads: int | None = None
                     ) -> tuple[Any, dict[str, Any], np.ndarray]:
    """Prune + recover on ``plan``'s non-verification images, then score the pruned PyTorch
    model against the unpruned one (``ref``, ``source_metrics``) on the verification images
    ``x, y`` with the recipe's gate. Returns (pruned model, record, pruned model's logits)."""
    pruned, record = prune_and_recover(loaded, rec.pruning, plan.dataset, plan.train_pool,
                                       seed=rec.seed, on_error=on_error, target=target,
                                       threads=threads)
    logits = reference_outputs(pruned, x)
    v = compare(ref, logits, y, task=loaded.task, class_names=loaded.class_names,
                precision="pruned", recipe=rec, source_metrics=source_metrics, seed=rec.seed)
    record["verification"] = v.to_json()  # the record is JSON: it goes into the checkpoint
    record["verification_origin"] = plan.origin
    headline = "mean_auroc" if loaded.task == "multilabel" else "accuracy"
    before, after = source_metrics[headline]["value"], v.metrics[headline]["value"]
    scale, unit = (1, "") if loaded.task == "multilabel" else (100, " %")
    status(f"Pruned PyTorch model: MACs {record['macs_fraction']:.1%} of the original, "
           f"{headline.replace('_', ' ')} {scale * before:.4g}{unit} → {scale * after:.4g}{unit} "
           "on the verification images — "
           + {"pass": "[green]within[/] the recipe's gate",
              "fail": "[red]outside[/] the recipe's gate",
              "inconclusive": "[yellow]inconclusive[/]: too few images to show it is within "
                              "the recipe's gate"}[v.decision])
    return pruned, record, logits


def with_folder_classes(source: Any, data: Any, on_error: str) -> Any:
    """The loaded source, named with the data folder's classes when the file carries none
    (a ``.pt2`` or another program edgekit did not write)."""
    loaded = source if isinstance(source, Source) else load_model(source)
    return loaded if loaded.class_names else loaded.with_classes(
        scan(data, on_error=on_error).classes)


@dataclass
class PruneFileResult:
    checkpoint: Any  # Path of the pruned checkpoint
    record: dict[str, Any]
    source_metrics: dict[str, Any]
    seconds: float
    latency_steps: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.record["verification"]["passed"])

    @property
    def decision(self) -> str:
        """pass, fail or inconclusive (too few images to decide)."""
        return recorded_decision(self.record["verification"])


def prune_file(source: Any, *, data: Any, out: Any, recipe: Any = "prune30",
               target_latency_ms: float | None = None, target: str = "x86-local",
               threads: int | None = None, verification_images: int | None = None,
               on_error: str = "skip", overwrite: bool = False,
               **overrides: Any) -> PruneFileResult:
    """Prune + recover ``source`` and write the pruned model to ``out``: an edgekit checkpoint
    (zoo architectures), or a ``torch.export`` program when ``out`` ends in ``.pt2`` (any PyTorch
    source; the only form for a ``.pt2`` or another non-zoo model).

    ``overrides`` are recipe fields (``pruning.target_macs=0.5``, ``seed=1`` …). With
    ``target_latency_ms`` the MACs target comes from :func:`latency_search` on ``target``.
    The pruned model is scored against the unpruned one on held-out verification images
    (the checkpoint's own validation split when it was trained on ``data``).
    """
    start = time.perf_counter()
    out = Path(out)
    refuse_inside_data(out, data)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    rec = pruning_recipe(recipe, **{
        k if k.startswith("pruning.") or k == "seed" else f"pruning.{k}": v
        for k, v in overrides.items()})
    if verification_images is not None:
        rec = rec.with_overrides(**{"verification.images": verification_images})
    loaded = with_folder_classes(source, data, on_error)
    require_prunable(loaded)
    if not is_zoo(loaded) and out.suffix != ".pt2":
        raise ConfigError(f"{loaded.source} is not a zoo architecture: its pruned model is "
                          f"written as a torch.export program; name --out with .pt2 (not "
                          f"{out.name})")
    rec, latency_rows = for_latency(loaded, rec, target_latency_ms, target, threads)
    plan = plan_data(loaded, data, seed=rec.seed, on_error=on_error, calibration_images=1,
                     verification_images=rec.verification.images)
    verify_set = plan.dataset.subset(plan.verification)
    x, y = load_arrays(verify_set, loaded.spec, on_error=on_error,
                       description="Loading verification images")
    ref = reference_outputs(loaded, x)
    source_metrics = score(y, ref, task=loaded.task, class_names=loaded.class_names,
                           seed=rec.seed)
    pruned, record, _ = prune_and_verify(loaded, rec, plan, x, y, ref, source_metrics, on_error,
                                         target=target, threads=threads)
    record["latency_search"] = latency_rows
    record["recipe"] = rec.model_dump()
    record["source"] = str(loaded.source)
    pruned.metadata["pruning"] = record
    save_pruned(pruned, out)
    return PruneFileResult(out, record, source_metrics, time.perf_counter() - start,
                           latency_rows)


def save_pruned(pruned: Any, out: Path) -> Path:
    """Write a pruned model: a ``.pt2`` path gets a ``torch.export`` program of the pruned
    module at the source's input shape, with edgekit's metadata (classes, preprocessing, the
    pruning record) as a JSON extra file; any other path an edgekit checkpoint (zoo only).
    Atomic: a temporary file in the same folder, then a rename."""
    import torch

    out = Path(out)
    if out.suffix != ".pt2":
        return save_checkpoint(out, pruned.module.state_dict(), pruned.metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.pt2")
    try:
        export_program(pruned.module, torch.zeros(pruned.spec.input_shape(1)), tmp,
                       {PROGRAM_METADATA: json.dumps(_finite_json(pruned.metadata),
                                                     sort_keys=True, default=str)})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def scan_source(source: Any, *, data: Any, ratio: float = 0.5, round_to: int = 8,
                protect: Sequence[str] | None = None, verification_images: int = 300,
                seed: int = 0, on_error: str = "skip") -> dict[str, Any]:
    """Per-group sensitivity: prune each group alone by ``ratio`` (no recovery) and measure
    accuracy (mean AUROC for multi-label) on held-out images. Rows sorted as in the graph."""
    import torch

    if not 0 < ratio < 1:
        raise ConfigError(f"scan ratio must be in (0, 1), got {ratio}")
    loaded = with_folder_classes(source, data, on_error)
    require_prunable(loaded)
    plan = plan_data(loaded, data, seed=seed, on_error=on_error, calibration_images=1,
                     verification_images=verification_images)
    x, y = load_arrays(plan.dataset.subset(plan.verification), loaded.spec, on_error=on_error,
                       description="Loading verification images")
    key = "mean_auroc" if loaded.task == "multilabel" else "accuracy"

    def evaluate(module: Any) -> float:
        m = score(y, predict_module(module, x), task=loaded.task, class_names=loaded.class_names,
                  ci=False)[key]
        return float(metric_value(m))

    example = torch.zeros(loaded.spec.input_shape(1))
    module = loaded.module if is_zoo(loaded) else prunable_module(loaded, example)
    groups = prunable_groups(module, example, protect)
    base = evaluate(module)
    with progress_bar(f"Scanning {len(groups)} groups (each pruned alone by {ratio:.0%})",
                      len(groups)) as bar:
        rows = scan_groups(module, example, groups, ratio, evaluate,
                           round_to=round_to, progress=bar.set)
    for r in rows:
        r["drop"] = None if r["metric"] is None else base - r["metric"]
    return {"metric": key, "baseline": base, "ratio": ratio, "images": len(y),
            "origin": plan.origin, "groups": rows}

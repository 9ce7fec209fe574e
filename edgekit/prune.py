"""Structured pruning that removes whole channels, on Torch-Pruning's dependency graph.

Grouping, importance and policy are separate (as in Torch-Pruning):

* **Groups** come from ``torch_pruning.DependencyGraph``: every layer whose weights shrink
  together (a convolution's outputs, the BatchNorm after it, the depthwise convolution and
  pointwise inputs that consume them, a squeeze-excitation / CBAM channel gate's ``fc2`` whose
  output multiplies the same tensor, both sides of a residual sum, the slices of a
  multi-receptive-field concatenation) is one group.
* **One pattern Torch-Pruning gets wrong, fixed through its extension point.** A spatial
  attention gate (``x * sigmoid(conv([mean_c(x); max_c(x)]))``) reduces *over* channels and
  multiplies a 1-channel map back in by broadcasting. The dependency tracer treats the
  reductions and the broadcast multiplication as element-wise, so it couples the gate's single
  output channel with every channel of ``x``: every gated tensor collapses into a group of
  width 1 that cannot be pruned (out of the box, at ratio 0.3, DSConv-CBAM keeps ≥ 98 % of its
  MACs; in PruDensNet the block outputs, shortcuts and SE gates are frozen). A customized
  pruner registers :class:`~edgekit.zoo.blocks.SpatialGate` as one channel-preserving layer
  whose weights do not depend on the channel count, which cuts the false coupling.
* **Importance**: L2 magnitude of the whole group, or first-order Taylor (``|w · ∂L/∂w|``, from
  a few labelled batches).
* **Policy**: a channel ratio (uniform per layer, or global), or a target fraction of the
  original MACs (found by bisection on the ratio), ``max_layer_ratio`` per layer, remaining
  widths rounded to multiples of ``round_to`` (8 = one AVX2/NEON register of fp32… and the
  widths INT8 kernels tile best), protected layers (by default the stem's first convolution and
  the classifier).

What was removed is kept as a **replayable JSON plan** (Torch-Pruning's pruning history, one
list per pruning step), never a pickle: a pruned checkpoint is the zoo architecture + the plan +
a ``state_dict``, loaded with ``torch.load(weights_only=True)``. MACs are counted exactly as
``edgekit inspect`` counts them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgekit.errors import BackendUnavailable, ConfigError

PLAN_FORMAT = "edgekit.prune-plan/1"
IMPORTANCES = ("l2", "taylor")

__all__ = [
    "IMPORTANCES",
    "PLAN_FORMAT",
    "PruneGroup",
    "PruneOutcome",
    "apply_plan",
    "default_protected",
    "layer_widths",
    "prunable_groups",
    "prune",
]


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as exc:  # pragma: no cover - part of edgekit[compress]
        raise BackendUnavailable("Structured pruning needs Torch-Pruning: "
                                 "pip install 'edgekit[compress]'") from exc
    return torch_pruning


# --------------------------------------------------------------------------- the graph
def _channelwise_gate_pruner() -> Any:
    """Torch-Pruning pruner for layers that keep the channel count and hold no per-channel
    weights (spatial attention gates): pruning their input prunes their output, nothing else.

    The layer's current width lives in ``layer.channels`` (recorded by a forward pass before
    the graph is built, updated here), so Torch-Pruning can infer the shapes around it.
    """
    tp = _tp()

    class ChannelwiseGatePruner(tp.pruner.function.BasePruningFunc):
        def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> Any:
            layer.channels = int(layer.channels) - len(set(idxs))
            return layer

        prune_in_channels = prune_out_channels  # the same function: input and output coupled

        def get_out_channels(self, layer: Any) -> int:
            return int(layer.channels)

        get_in_channels = get_out_channels

    return ChannelwiseGatePruner()


def _gate_types() -> tuple[type, ...]:
    from edgekit.zoo.blocks import SpatialGate

    return (SpatialGate,)


def _forward_with_hook(module: Any, example: Any, targets: Sequence[Any],
                       hook: Callable[..., None]) -> None:
    """One no-grad forward pass with ``hook`` on each of ``targets`` (removed afterwards)."""
    import torch

    handles = [t.register_forward_hook(hook) for t in targets]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in handles:
            h.remove()


def _record_gate_widths(module: Any, example: Any) -> None:
    """Set ``channels`` on every spatial gate from one forward pass."""

    gates = [m for m in module.modules() if isinstance(m, _gate_types())]
    if gates:
        _forward_with_hook(module, example, gates,
                           lambda m, inputs, out: setattr(m, "channels", int(inputs[0].shape[1])))


def _customized() -> dict[Any, Any]:
    pruner = _channelwise_gate_pruner()
    return {t: pruner for t in _gate_types()}


class _Traceable:
    """Parameters that require gradients while the graph is traced: Torch-Pruning follows
    autograd, so a frozen model (or inference mode) would show no layers at all and prune
    nothing, silently."""

    def __init__(self, module: Any) -> None:
        self.frozen = [p for p in module.parameters() if not p.requires_grad]

    def __enter__(self) -> None:
        import torch

        if torch.is_inference_mode_enabled():
            raise ConfigError("pruning cannot run under torch.inference_mode(): the dependency "
                              "graph is traced through autograd")
        self._grad = torch.enable_grad()
        self._grad.__enter__()
        for p in self.frozen:
            p.requires_grad_(True)

    def __exit__(self, *exc: Any) -> None:
        for p in self.frozen:
            p.requires_grad_(False)
        self._grad.__exit__(*exc)


def _graph(module: Any, example: Any) -> Any:
    tp = _tp()
    _record_gate_widths(module, example)
    with _Traceable(module):
        return tp.DependencyGraph().build_dependency(
            module, example_inputs=example, customized_pruners=_customized(), verbose=False)


def _leaf_order(module: Any, example: Any) -> list[tuple[str, Any]]:
    """(name, module) of every Conv2d/Linear in execution order."""
    import torch.nn as nn

    names = {m: n for n, m in module.named_modules()}
    order: list[tuple[str, Any]] = []
    _forward_with_hook(module, example,
                       [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))],
                       lambda m, i, o: order.append((names[m], m)))
    return order


def _always_protected(order: list[tuple[str, Any]]) -> list[str]:
    """Layers whose channels are the model's interface: a depthwise convolution on the input
    image (its channels are the image's) and the classifier (its outputs are the classes)."""
    if not order:
        return []
    first, last = order[0], order[-1][0]
    input_dw = [first[0]] if getattr(first[1], "groups", 1) > 1 else []
    return [*input_dw, last]


def default_protected(module: Any, example: Any) -> list[str]:
    """The stem (first dense convolution: it sees the raw image), plus the layers that are
    always protected (an input depthwise convolution, the classifier)."""
    order = _leaf_order(module, example)
    stem = next((n for n, m in order if getattr(m, "groups", 1) == 1), None)
    names = [*([stem] if stem else []), *_always_protected(order)]
    return list(dict.fromkeys(names))


def _protected(module: Any, example: Any, protect: Sequence[str] | None) -> list[str]:
    """``protect`` (default: the stem), always plus the interface layers: pruning a model's
    outputs would silently drop classes, its input channels would change the input."""
    names = (default_protected(module, example) if protect is None
             else [*protect, *_always_protected(_leaf_order(module, example))])
    names = list(dict.fromkeys(names))
    _modules_by_name(module, names)  # unknown names fail before any work
    return names


def _modules_by_name(module: Any, names: Sequence[str]) -> list[Any]:
    table = dict(module.named_modules())
    unknown = [n for n in names if n not in table]
    if unknown:
        close = sorted(n for n, m in table.items() if n and not any(True for _ in m.children()))
        raise ConfigError(f"protected layer(s) {', '.join(unknown)} not in the model; its "
                          f"layers are: {', '.join(close[:40])}{' …' if len(close) > 40 else ''}")
    return [table[n] for n in names]


@dataclass
class PruneGroup:
    """One set of coupled channels: prune ``k`` of them and every listed layer shrinks by ``k``."""

    index: int
    root: str  # the layer whose output channels define the group
    channels: int
    layers: list[str]  # every layer with weights that shrink with the group
    protected: bool
    macs: int = 0  # MACs of the layers touched by this group (approximate share of the model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prunable_groups(module: Any, example: Any, protect: Sequence[str] | None = None
                    ) -> list[PruneGroup]:
    """Every channel group of ``module`` (protected ones included and marked), in graph
    order. ``protect`` defaults to :func:`default_protected`."""
    import torch.nn as nn

    module = copy.deepcopy(module).eval()
    protect = _protected(module, example, protect)
    graph = _graph(module, example)
    protected = set(_modules_by_name(module, protect))
    names = {m: n for n, m in module.named_modules()}
    macs = _layer_macs(module, example)
    groups = []
    for g in graph.get_all_groups(ignored_layers=[], root_module_types=[nn.Conv2d, nn.Linear]):
        root_dep = g[0].dep
        layers, is_protected = [], False
        for item in g:
            target = item.dep.target.module
            if isinstance(target, nn.Module) and target in names and any(
                    True for _ in target.parameters(recurse=False)):
                layers.append(names[target])
            if target in protected and graph.is_out_channel_pruning_fn(item.dep.handler):
                is_protected = True
        layers = list(dict.fromkeys(layers))
        groups.append(PruneGroup(len(groups), names.get(root_dep.target.module, "?"),
                                 len(g[0].idxs), layers, is_protected,
                                 sum(macs.get(n, 0) for n in layers)))
    return groups


# --------------------------------------------------------------------------- measuring
def _layer_macs(module: Any, example: Any) -> dict[str, int]:
    """MACs per layer name, summed over calls (a CBAM channel gate runs its MLP twice)."""
    from edgekit.inspect import layer_table

    macs: dict[str, int] = {}
    for row in layer_table(module, tuple(example.shape)):
        macs[row.name] = macs.get(row.name, 0) + row.macs
    return macs


def count(module: Any, example: Any) -> tuple[int, int]:
    """(MACs, parameters) at batch 1, counted as ``edgekit inspect`` counts them."""
    return (sum(_layer_macs(module, example).values()),
            sum(p.numel() for p in module.parameters()))


def layer_widths(module: Any) -> dict[str, int]:
    """Output width of every convolution and linear layer, by name."""
    import torch.nn as nn

    widths = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            widths[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            widths[name] = int(m.out_features)
    return widths


# --------------------------------------------------------------------------- importance
def _importance(kind: str) -> Any:
    tp = _tp()
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ConfigError(f"unknown importance {kind!r}; use one of {', '.join(IMPORTANCES)}")


def accumulate_gradients(module: Any, x: np.ndarray, y: np.ndarray, *, task: str,
                         batch_size: int = 32) -> None:
    """Fill ``.grad`` with the task loss's gradient summed over the batches (for Taylor)."""
    import torch
    import torch.nn.functional as F

    module.eval()  # BN statistics stay fixed: the importance is of the deployed network
    module.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.asarray(x[i:i + batch_size], dtype=np.float32))
            yb = torch.from_numpy(np.asarray(y[i:i + batch_size]))
            logits = module(xb)
            loss = (F.binary_cross_entropy_with_logits(logits, yb.float(), reduction="sum")
                    if task == "multilabel" else F.cross_entropy(logits, yb.long(), reduction="sum"))
            loss.backward()


def _copy_with_grads(module: Any) -> Any:
    clone = copy.deepcopy(module)
    grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    for n, p in clone.named_parameters():
        if n in grads:
            p.grad = grads[n].clone()
    return clone


# --------------------------------------------------------------------------- pruning
@dataclass
class PruneSettings:
    """How channels are chosen. Exactly one of ``ratio`` / ``target_macs``."""

    ratio: float | None = None  # fraction of each group's channels to remove
    target_macs: float | None = None  # fraction of the ORIGINAL MACs to keep
    importance: str = "l2"
    global_pruning: bool = False
    max_layer_ratio: float = 0.75
    round_to: int = 8
    protect: list[str] | None = None  # None: stem; a list replaces it (classifier: always)

    def validate(self) -> None:
        if (self.ratio is None) == (self.target_macs is None):
            raise ConfigError("give exactly one of a channel ratio and a MACs target")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ConfigError(f"pruning ratio must be in (0, 1), got {self.ratio}")
        if self.target_macs is not None and not 0 < self.target_macs < 1:
            raise ConfigError(f"target MACs must be a fraction of the original in (0, 1), "
                              f"got {self.target_macs}")
        if not 0 < self.max_layer_ratio < 1:
            raise ConfigError(f"max_layer_ratio must be in (0, 1), got {self.max_layer_ratio}")
        if self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1, got {self.round_to}")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"unknown importance {self.importance!r}; "
                              f"use one of {', '.join(IMPORTANCES)}")


def _prune_once(module: Any, example: Any, ratio: float, s: PruneSettings,
                protect: Sequence[str]) -> list[list[Any]]:
    """Prune ``module`` in place at channel ratio ``ratio``; return Torch-Pruning's history."""
    tp = _tp()
    if s.importance == "taylor" and not any(p.grad is not None for p in module.parameters()):
        raise ConfigError("Taylor importance needs gradients: call "
                          "edgekit.prune.accumulate_gradients(module, x, y, task=...) first, "
                          "or use importance 'l2'")
    _record_gate_widths(module, example)
    with _Traceable(module):
        pruner = tp.pruner.MetaPruner(
            module, example, importance=_importance(s.importance),
            global_pruning=s.global_pruning, pruning_ratio=ratio,
            max_pruning_ratio=s.max_layer_ratio, round_to=s.round_to,
            ignored_layers=_modules_by_name(module, protect),
            customized_pruners=_customized())
        pruner.step()
    return [[name, bool(out), sorted(int(i) for i in idxs)]
            for name, out, idxs in pruner.DG.pruning_history()]


@dataclass
class PruneOutcome:
    """What one pruning step did (the module itself is modified in place)."""

    history: list[list[Any]]
    ratio: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    protect: list[str]
    searched: list[dict[str, float]] = field(default_factory=list)  # bisection trials

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0


def prune(module: Any, example: Any, settings: PruneSettings, *,
          reference_macs: int | None = None) -> PruneOutcome:
    """Remove channels from ``module`` in place.

    With ``target_macs`` the channel ratio is found by bisection (each trial prunes a copy) so
    that the pruned MACs are at most ``target_macs × reference_macs`` (``reference_macs``
    defaults to the module's current MACs; pass the original's for a later iterative step).
    For Taylor importance, call :func:`accumulate_gradients` first.
    """
    settings.validate()
    module.eval()
    protect = _protected(module, example, settings.protect)
    macs0, params0 = count(module, example)
    goal = None if settings.target_macs is None else settings.target_macs * (reference_macs or macs0)
    searched: list[dict[str, float]] = []
    if goal is None:
        ratio = float(settings.ratio)
    elif macs0 <= goal:
        ratio = 0.0
    else:
        ratio = _bisect_ratio(module, example, settings, protect, goal, macs0, searched)
    history = _prune_once(module, example, ratio, settings, protect) if ratio > 0 else []
    macs1, params1 = count(module, example)
    return PruneOutcome(history, ratio, macs0, macs1, params0, params1, protect, searched)


def _bisect_ratio(module: Any, example: Any, s: PruneSettings, protect: Sequence[str],
                  goal: float, macs0: int, searched: list[dict[str, float]]) -> float:
    def macs_at(r: float) -> int:
        trial = _copy_with_grads(module)
        _prune_once(trial, example, r, s, protect)
        m = count(trial, example)[0]
        searched.append({"ratio": r, "macs_fraction": m / macs0})
        return m

    hi = s.max_layer_ratio if not s.global_pruning else min(0.95, s.max_layer_ratio)
    if macs_at(hi) > goal:
        best = min(x["macs_fraction"] for x in searched)
        raise ConfigError(
            f"cannot reach {goal / macs0:.0%} of the MACs: at the largest ratio allowed "
            f"(max_layer_ratio {s.max_layer_ratio}) the model keeps {best:.0%} (protected: "
            f"{', '.join(protect) or 'none'}). Raise max_layer_ratio or relax the target.")
    lo = 0.0
    for _ in range(9):  # ratio to ±0.2 %: well below one channel of rounding in most layers
        mid = (lo + hi) / 2
        macs = macs_at(mid)
        if macs <= goal:
            hi = mid
            if macs >= 0.98 * goal:  # within 2 % of the target from below: close enough
                break
        else:
            lo = mid
        if hi - lo < 0.004:
            break
    return hi


def apply_plan(module: Any, example: Any, plan: dict[str, Any]) -> Any:
    """Replay a pruning plan (from a pruned checkpoint) on a freshly built module."""
    if plan.get("format") != PLAN_FORMAT:
        raise ConfigError(f"unknown pruning plan format {plan.get('format')!r} "
                          f"(this edgekit reads {PLAN_FORMAT})")
    module.eval()
    for step in plan["steps"]:
        graph = _graph(module, example)
        graph.load_pruning_history([[n, bool(o), list(i)] for n, o, i in step])
    return module


def make_plan(steps: list[list[list[Any]]], **info: Any) -> dict[str, Any]:
    """The JSON pruning plan recorded in checkpoints and manifests."""
    return {"format": PLAN_FORMAT, "steps": steps, **info}


# --------------------------------------------------------------------------- sensitivity
def scan_groups(module: Any, example: Any, groups: Sequence[PruneGroup], ratio: float,
                evaluate: Callable[[Any], float], *, round_to: int = 8,
                progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Prune each unprotected group alone by ``ratio`` (lowest-L2 channels, widths rounded)
    and report ``evaluate(pruned copy)``: the per-group sensitivity, without recovery."""
    rows = []
    imp = _importance("l2")
    macs0 = count(module, example)[0]
    for done, g in enumerate(groups, start=1):
        if g.protected or g.channels <= round_to:
            rows.append({**g.to_dict(), "removed": 0, "metric": None})
        else:
            keep = max(round_to, int(math.floor(g.channels * (1 - ratio) / round_to)) * round_to)
            trial = copy.deepcopy(module).eval()
            graph = _graph(trial, example)
            root = dict(trial.named_modules())[g.root]
            pruner = graph.get_pruner_of_module(root)
            group = graph.get_pruning_group(root, pruner.prune_out_channels,
                                            list(range(g.channels)))
            scores = imp(group)
            drop = sorted(int(i) for i in np.argsort(scores.detach().numpy())[:g.channels - keep])
            if drop:
                graph.get_pruning_group(root, pruner.prune_out_channels, drop).prune()
            rows.append({**g.to_dict(), "removed": len(drop),
                         "macs_fraction": count(trial, example)[0] / macs0,
                         "metric": evaluate(trial)})
        if progress:
            progress(done)
    return rows


# --------------------------------------------------------------------------- prune + recover
def _step_settings(cfg: Any, step: int) -> PruneSettings:
    """Settings of iterative step ``step`` (1-based) of ``cfg.steps``: the MACs target falls
    linearly to ``cfg.target_macs``; a channel ratio compounds to ``cfg.ratio``."""
    n = cfg.steps
    target = None if cfg.target_macs is None else 1 - (1 - cfg.target_macs) * step / n
    ratio = None if cfg.ratio is None else 1 - (1 - cfg.ratio) ** (1 / n)
    return PruneSettings(ratio=ratio, target_macs=target, importance=cfg.importance,
                         global_pruning=cfg.global_pruning, max_layer_ratio=cfg.max_layer_ratio,
                         round_to=cfg.round_to,
                         protect=None if cfg.protect is None else list(cfg.protect))


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
    from edgekit.calibrate import stratified_sample

    pool = list(samples)
    rec = cfg.recovery
    if rec.max_images is not None and rec.max_images < len(pool):
        pool = stratified_sample(pool, rec.max_images, seed + 7)
    n_val = max(1, int(round(len(pool) * rec.validation_fraction)))
    val = stratified_sample(pool, n_val, seed + 11)
    chosen = {s.path for s in val}
    return [s for s in pool if s.path not in chosen], val


def require_prunable(loaded: Any, what: str = "structured pruning") -> None:
    """ConfigError unless ``loaded`` is the PyTorch model of a zoo architecture (the only kind
    whose channels can be removed: ONNX, TorchScript and torch.export have no editable graph)."""
    if loaded.kind == "torch" and getattr(loaded.module, "edgekit_name", None) is not None:
        return
    if loaded.kind == "keras":
        raise ConfigError(f"{loaded.source}: {what} is not supported for Keras models (edgekit's "
                          "pruning engine works on PyTorch graphs). Compress it with an "
                          "unpruned recipe (fp32, fp16, int8) instead.")
    kind = {"onnx": "an ONNX model", "torchscript": "a TorchScript archive"}.get(
        loaded.kind, "a torch.export program" if loaded.kind == "torch" else loaded.kind)
    raise ConfigError(f"{loaded.source}: {what} needs the PyTorch model of a zoo architecture "
                      f"(an edgekit checkpoint, ARCH:weights.pt or a zoo name); this is "
                      f"{kind}, which has no editable graph. Prune the checkpoint, then "
                      "compress it.")


def prune_and_recover(loaded: Any, cfg: Any, dataset: Any, train_samples: Sequence[Any], *,
                      seed: int = 0, on_error: str = "skip") -> tuple[Any, dict[str, Any]]:
    """Prune ``loaded`` (an edgekit ``LoadedModel`` of a zoo architecture) per the recipe's
    ``pruning`` section and recover it by distillation from the unpruned model.

    ``train_samples`` (of ``dataset``) are the images it may learn from: never the
    verification images. Returns ``(pruned LoadedModel, record)``; ``record`` (JSON) holds the replayable plan, MACs,
    parameters and per-layer widths before/after, and the recovery history. The source model is
    not modified.
    """
    import dataclasses

    import torch

    from edgekit.evaluate import load_arrays
    from edgekit.train import RecoveryConfig, recalibrate_batchnorm, recover
    from edgekit.ui import status

    require_prunable(loaded)
    if cfg.recovery.epochs and not loaded.pretrained:
        status("[yellow]Note:[/] recovering a model with fresh (untrained) weights")
    teacher = loaded.module.eval()  # never updated: recover() runs it under no_grad
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    example = torch.zeros(loaded.spec.input_shape(1))
    macs0, params0 = count(student, example)
    widths0 = layer_widths(student)

    train_s, val_s = recovery_split(train_samples, cfg, seed)
    train_s, val_s = dataset.subset(train_s), dataset.subset(val_s)
    x_tr, y_tr = load_arrays(train_s, loaded.spec, dtype=np.float16, on_error=on_error,
                             description="Loading recovery images")
    x_va, y_va = load_arrays(val_s, loaded.spec, on_error=on_error,
                             description="Loading recovery validation images")
    steps, outcomes, recoveries = [], [], []
    for step in range(1, cfg.steps + 1):
        settings = _step_settings(cfg, step)
        if cfg.importance == "taylor":
            n = min(cfg.taylor_images, len(x_tr))
            pick = np.random.default_rng(seed + step).permutation(len(x_tr))[:n]
            accumulate_gradients(student, x_tr[np.sort(pick)], y_tr[np.sort(pick)],
                                 task=loaded.task)
        outcome = prune(student, example, settings, reference_macs=macs0)
        student.zero_grad(set_to_none=True)
        # the pruned layers' successors see new input statistics: re-estimate BN on clean images
        # (recover() does this itself before scoring its starting point)
        if not cfg.recovery.epochs:
            recalibrate_batchnorm(student, x_tr, images=cfg.recovery.bn_images)
        steps.append(outcome.history)
        outcomes.append(outcome)
        status(f"Pruning step {step}/{cfg.steps}: channel ratio {outcome.ratio:.3f}, MACs "
               f"{outcome.macs_after / macs0:.1%} of the original, parameters "
               f"{outcome.params_after / params0:.1%}")
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
                   "searched": o.searched} for o in outcomes],
        "recovery": recoveries,
        "recovery_images": {"train": len(x_tr), "validation": len(x_va)},
    }
    meta = dict(loaded.metadata)
    meta.setdefault("architecture", loaded.name)  # a zoo-name source has no metadata yet
    meta.setdefault("task", loaded.task)
    meta.setdefault("class_names", list(loaded.class_names))
    meta.setdefault("preprocess", loaded.spec.to_dict())
    meta["pruning"] = record
    meta["parameters"] = params1
    pruned = dataclasses.replace(loaded, module=student, metadata=meta)
    return pruned, record


def prune_and_verify(loaded: Any, rec: Any, plan: Any, x: np.ndarray, y: np.ndarray,
                     ref: np.ndarray, source_metrics: dict[str, Any], on_error: str = "skip"
                     ) -> tuple[Any, dict[str, Any], np.ndarray]:
    """Prune + recover on ``plan``'s non-verification images, then score the pruned PyTorch
    model against the unpruned one (``ref``, ``source_metrics``) on the verification images
    ``x, y`` with the recipe's gate. Returns (pruned model, record, pruned model's logits)."""
    from edgekit.sources import reference_outputs
    from edgekit.ui import status
    from edgekit.verify import compare

    pruned, record = prune_and_recover(loaded, rec.pruning, plan.dataset, plan.train_pool,
                                       seed=rec.seed, on_error=on_error)
    logits = reference_outputs(pruned, x)
    v = record["verification"] = compare(ref, logits, y, task=loaded.task,
                                         class_names=loaded.class_names, precision="pruned",
                                         recipe=rec, source_metrics=source_metrics,
                                         seed=rec.seed)
    record["verification_origin"] = plan.origin
    headline = "mean_auroc" if loaded.task == "multilabel" else "accuracy"
    before, after = source_metrics[headline]["value"], v["metrics"][headline]["value"]
    scale, unit = (1, "") if loaded.task == "multilabel" else (100, " %")
    status(f"Pruned PyTorch model: MACs {record['macs_fraction']:.1%} of the original, "
           f"{headline.replace('_', ' ')} {scale * before:.4g}{unit} → {scale * after:.4g}{unit} "
           f"on the verification images — "
           f"{'[green]within[/]' if v['passed'] else '[red]outside[/]'} the recipe's gate")
    return pruned, record, logits


# --------------------------------------------------------------------------- latency target
LATENCY_FRACTIONS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


def latency_search(loaded: Any, cfg: Any, target_ms: float, target: Any, *,
                   threads: int | None = None, protocol: Any = None,
                   fractions: Sequence[float] = LATENCY_FRACTIONS,
                   executor: Any = None) -> tuple[float, list[dict]]:
    """Prune copies of ``loaded`` step by step (MACs 100 %, 90 %, 80 % … of the original; L2
    importance: only the widths matter for speed), export each to the target's preferred fp32
    runtime and time it with the bench protocol, until the p50 is at most ``target_ms``.

    Returns (MACs fraction to prune to, one row per measured step). Raises ConfigError when the
    target is not local (latency must be measured where the model will run) or not reachable.
    ``executor`` (tests) replaces the local executor that times each candidate.
    """
    import dataclasses
    import os
    import tempfile
    from pathlib import Path

    import torch

    from edgekit.backends import ExportRequest, require_backend
    from edgekit.bench.local import LocalExecutor
    from edgekit.bench.protocol import Protocol
    from edgekit.ui import progress_bar, status

    if target.access.kind != "local":
        raise ConfigError(f"--target-latency-ms measures every candidate on the target; "
                          f"{target.name} is reached by {target.access.kind!r}, and only local "
                          "targets can be measured here. Use --target-macs, or run edgekit "
                          "prune on the device.")
    names = [b for b in target.preferred.get("fp32", []) or ["openvino"]]
    backend = require_backend(names[0])
    threads = threads or max(target.thread_counts(os.cpu_count() or 1))
    protocol = protocol or Protocol(warmup_iters=10, warmup_seconds=1.0, iters=50,
                                    min_seconds=3.0, trials=1)
    options = target.runtime_options.get(backend.name)
    executor = executor or LocalExecutor()
    example = torch.zeros(loaded.spec.input_shape(1))
    macs0 = count(loaded.module, example)[0]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-prune-latency-") as tmp, \
            progress_bar(f"Latency search on {target.name} ({backend.name} fp32, "
                         f"{threads} threads)", len(fractions) + 1) as bar:
        for i, frac in enumerate((1.0, *fractions)):
            module = copy.deepcopy(loaded.module).eval()
            if frac < 1.0:
                s = _step_settings(cfg, 1)
                s.importance, s.ratio, s.target_macs = "l2", None, frac
                prune(module, example, s, reference_macs=macs0)
            candidate = dataclasses.replace(loaded, module=module)
            out_dir = Path(tmp) / f"step{i}"
            out_dir.mkdir()
            artifact = backend.export(ExportRequest(model=candidate, precision="fp32",
                                                    out_dir=out_dir, stem="model"))
            timing = executor.time_file(artifact.path, backend.name, list(example.shape),
                                        threads, protocol, options)
            p50 = float(timing["latency_ms"]["p50"])
            rows.append({"macs_fraction": count(module, example)[0] / macs0, "p50_ms": p50,
                         "backend": backend.name, "threads": threads})
            bar.advance()
            bar.update(note=f"{rows[-1]['macs_fraction']:.0%} MACs: {p50:.2f} ms")
            if p50 <= target_ms:
                if frac < 1.0:
                    status(f"Latency target {target_ms:g} ms met at "
                           f"{rows[-1]['macs_fraction']:.0%} of the MACs ({p50:.2f} ms p50 on "
                           f"{backend.name}, {threads} threads)")
                return frac, rows
    best = min(rows, key=lambda r: r["p50_ms"])
    raise ConfigError(
        f"latency target {target_ms:g} ms not reachable: the fastest candidate "
        f"({best['macs_fraction']:.0%} of the MACs) runs in {best['p50_ms']:.2f} ms on "
        f"{backend.name} with {threads} threads. Steps measured: "
        + ", ".join(f"{r['macs_fraction']:.0%} → {r['p50_ms']:.2f} ms" for r in rows))


def for_latency(loaded: Any, rec: Any, target_latency_ms: float | None, target: str | Any,
                threads: int | None = None) -> tuple[Any, list[dict]]:
    """``rec`` with its MACs target replaced by the one :func:`latency_search` finds for
    ``target_latency_ms`` on ``target`` (unchanged when no latency target is given)."""
    if target_latency_ms is None:
        return rec, []
    from edgekit.targets import Target, load_target
    from edgekit.ui import status

    if target_latency_ms <= 0:
        raise ConfigError(f"--target-latency-ms must be > 0, got {target_latency_ms}")
    tgt = target if isinstance(target, Target) else load_target(target)
    frac, rows = latency_search(loaded, rec.pruning, target_latency_ms, tgt, threads=threads)
    if frac >= 1.0:
        raise ConfigError(
            f"the unpruned model already runs in {rows[0]['p50_ms']:.2f} ms (p50, "
            f"{rows[0]['backend']}, {rows[0]['threads']} threads) ≤ {target_latency_ms:g} ms: "
            "nothing to prune. Compress it with the int8 or fp32 recipe instead.")
    status(f"Pruning to {frac:.0%} of the MACs for the latency target")
    return pruning_recipe(rec, **{"pruning.target_macs": frac}), rows


# --------------------------------------------------------------------------- edgekit prune
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


def pruning_recipe(recipe: Any = "prune30", **overrides: Any) -> Any:
    """A pruning recipe with ``pruning.*`` / top-level overrides (None = keep the recipe's).
    ``target_macs`` and ``ratio`` replace each other."""
    from edgekit.recipes import Recipe, load_recipe

    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if rec.pruning is None:
        raise ConfigError(f"recipe {rec.name!r} has no 'pruning' section; use prune30, "
                          "prune50, prune30-int8, prune50-int8 or a recipe of your own with one")
    data = rec.model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
        if key == "pruning.target_macs":
            data["pruning"]["ratio"] = None
        elif key == "pruning.ratio":
            data["pruning"]["target_macs"] = None
    from edgekit import config

    return config.validate(Recipe, data, f"recipe {rec.name!r} with overrides", "recipe")


def prune_file(source: Any, *, data: Any, out: Any, recipe: Any = "prune30",
               target_latency_ms: float | None = None, target: str = "x86-local",
               threads: int | None = None, verification_images: int | None = None,
               on_error: str = "skip", overwrite: bool = False,
               **overrides: Any) -> PruneFileResult:
    """Prune + recover ``source`` and write a pruned edgekit checkpoint to ``out``.

    ``overrides`` are recipe fields (``pruning.target_macs=0.5``, ``seed=1`` …). With
    ``target_latency_ms`` the MACs target comes from :func:`latency_search` on ``target``.
    The pruned model is scored against the unpruned one on held-out verification images
    (the checkpoint's own validation split when it was trained on ``data``).
    """
    import time
    from pathlib import Path

    from edgekit.calibrate import plan_data
    from edgekit.checkpoint import save_checkpoint
    from edgekit.evaluate import load_arrays, score
    from edgekit.sources import LoadedModel, load_model, reference_outputs

    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    rec = pruning_recipe(recipe, **{
        k if k.startswith("pruning.") or k == "seed" else f"pruning.{k}": v
        for k, v in overrides.items()})
    if verification_images is not None:
        rec = rec.with_overrides(**{"verification.images": verification_images})
    loaded = source if isinstance(source, LoadedModel) else load_model(source)
    require_prunable(loaded)
    rec, latency_rows = for_latency(loaded, rec, target_latency_ms, target, threads)
    plan = plan_data(loaded, data, seed=rec.seed, on_error=on_error, calibration_images=1,
                     verification_images=rec.verification.images)
    verify_set = plan.dataset.subset(plan.verification)
    x, y = load_arrays(verify_set, loaded.spec, on_error=on_error,
                       description="Loading verification images")
    ref = reference_outputs(loaded, x)
    source_metrics = score(y, ref, task=loaded.task, class_names=loaded.class_names,
                           seed=rec.seed)
    pruned, record, _ = prune_and_verify(loaded, rec, plan, x, y, ref, source_metrics, on_error)
    record["latency_search"] = latency_rows
    record["recipe"] = rec.model_dump()
    record["source"] = str(loaded.source)
    pruned.metadata["pruning"] = record
    save_checkpoint(out, pruned.module.state_dict(), pruned.metadata)
    return PruneFileResult(out, record, source_metrics, time.perf_counter() - start,
                           latency_rows)


def scan_source(source: Any, *, data: Any, ratio: float = 0.5, round_to: int = 8,
                protect: Sequence[str] | None = None, verification_images: int = 300,
                seed: int = 0, on_error: str = "skip") -> dict[str, Any]:
    """Per-group sensitivity: prune each group alone by ``ratio`` (no recovery) and measure
    accuracy (mean AUROC for multi-label) on held-out images. Rows sorted as in the graph."""
    import torch

    from edgekit.calibrate import plan_data
    from edgekit.evaluate import load_arrays, predict, score
    from edgekit.sources import LoadedModel, load_model
    from edgekit.ui import progress_bar

    if not 0 < ratio < 1:
        raise ConfigError(f"scan ratio must be in (0, 1), got {ratio}")
    loaded = source if isinstance(source, LoadedModel) else load_model(source)
    require_prunable(loaded)
    plan = plan_data(loaded, data, seed=seed, on_error=on_error, calibration_images=1,
                     verification_images=verification_images)
    x, y = load_arrays(plan.dataset.subset(plan.verification), loaded.spec, on_error=on_error,
                       description="Loading verification images")
    key = "mean_auroc" if loaded.task == "multilabel" else "accuracy"

    def evaluate(module: Any) -> float:
        m = score(y, predict(module, x), task=loaded.task, class_names=loaded.class_names,
                  ci=False)[key]
        return float(m["value"] if isinstance(m, dict) else m)

    example = torch.zeros(loaded.spec.input_shape(1))
    groups = prunable_groups(loaded.module, example, protect)
    base = evaluate(loaded.module)
    with progress_bar(f"Scanning {len(groups)} groups (each pruned alone by {ratio:.0%})",
                      len(groups)) as bar:
        rows = scan_groups(loaded.module, example, groups, ratio, evaluate,
                           round_to=round_to, progress=bar.set)
    for r in rows:
        r["drop"] = None if r["metric"] is None else base - r["metric"]
    return {"metric": key, "baseline": base, "ratio": ratio, "images": len(y),
            "origin": plan.origin, "groups": rows}

"""The pruning engine: structured pruning that removes whole channels, on Torch-Pruning's
dependency graph. It imports only the zoo and Torch-Pruning (and edgekit.inspect for MACs): it
knows nothing of training loops, data or files (those are ``recover`` and ``latency``).

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

Models that are not zoo architectures (a ``torch.export`` program's graph) are made editable by
``edgekit.prune.graph``; the ops of such a graph that fix a channel count (``blocked``) protect
the layers that feed them, like the stem, and are reported in the outcome."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgekit.errors import BackendUnavailable, ConfigError, UnreachableTarget
from edgekit.inspect import layer_table
from edgekit.prune.graph import Blocker, blockers, check_runs

PLAN_FORMAT = "edgekit.prune-plan/1"


IMPORTANCES = ("l2", "taylor")


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as exc:  # pragma: no cover - part of edgekit[compress]
        raise BackendUnavailable("Structured pruning needs Torch-Pruning: "
                                 "pip install 'edgekit[compress]'") from exc
    return torch_pruning


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


def blocked(module: Any, example: Any) -> list[Blocker]:
    """The ops of ``module``'s graph (a pruned ``.pt2``'s, any ``GraphModule``'s) that fix a
    channel count, with the layers that feed them; ops fed only by the always-protected
    interface layers (the classifier) are left out: nothing would prune them anyway."""
    always = set(_always_protected(_leaf_order(module, example)))
    return [b for b in blockers(module) if not set(b.layers) <= always]


def _protected(module: Any, example: Any, protect: Sequence[str] | None) -> list[str]:
    """``protect`` (default: the stem), always plus the interface layers: pruning a model's
    outputs would silently drop classes, its input channels would change the input; and the
    layers that feed an op that fixes their channel count (:func:`blocked`)."""
    names = (default_protected(module, example) if protect is None
             else [*protect, *_always_protected(_leaf_order(module, example))])
    names += [n for b in blocked(module, example) for n in b.layers]
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


def _layer_macs(module: Any, example: Any) -> dict[str, int]:
    """MACs per layer name, summed over calls (a CBAM channel gate runs its MLP twice)."""
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


COSTS = ("macs", "latency")


@dataclass
class PruneSettings:
    """How channels are chosen. Exactly one of ``ratio`` / ``target_macs`` / ``target_time``.

    ``cost="latency"`` ranks channels by importance / predicted ms saved per channel removed
    (from ``profile``, a :class:`edgekit.prune.profile.TimeProfile` of the unpruned model),
    with global pruning so channels of all groups compete; ``target_time`` is the fraction of
    the profiled time to keep (bisection on the PREDICTED time)."""

    ratio: float | None = None  # fraction of each group's channels to remove
    target_macs: float | None = None  # fraction of the ORIGINAL MACs to keep
    importance: str = "l2"
    global_pruning: bool = False
    max_layer_ratio: float = 0.75
    round_to: int = 8
    protect: list[str] | None = None  # None: stem; a list replaces it (classifier: always)
    cost: str = "macs"
    target_time: float | None = None  # fraction of the profiled (unpruned) time to keep
    profile: Any = None  # TimeProfile; required by cost "latency"

    def validate(self) -> None:
        if sum(x is not None for x in (self.ratio, self.target_macs, self.target_time)) != 1:
            raise ConfigError("give exactly one of a channel ratio, a MACs target and a time "
                              "target")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ConfigError(f"pruning ratio must be in (0, 1), got {self.ratio}")
        if self.target_macs is not None and not 0 < self.target_macs < 1:
            raise ConfigError(f"target MACs must be a fraction of the original in (0, 1), "
                              f"got {self.target_macs}")
        if self.target_time is not None and not 0 < self.target_time < 1:
            raise ConfigError(f"target time must be a fraction of the profiled time in (0, 1), "
                              f"got {self.target_time}")
        if self.cost not in COSTS:
            raise ConfigError(f"unknown pruning cost {self.cost!r}; use one of {', '.join(COSTS)}")
        if self.cost == "latency" and self.profile is None:
            raise ConfigError("the latency cost needs a time profile of the unpruned model "
                              "(edgekit.prune.profile.profile_for_target)")
        if self.target_time is not None and self.cost != "latency":
            raise ConfigError("a time target (target_time) needs cost 'latency'")
        if not 0 < self.max_layer_ratio < 1:
            raise ConfigError(f"max_layer_ratio must be in (0, 1), got {self.max_layer_ratio}")
        if self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1, got {self.round_to}")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"unknown importance {self.importance!r}; "
                              f"use one of {', '.join(IMPORTANCES)}")


def _latency_importance(base: Any, module: Any, profile: Any, s: PruneSettings,
                        tally: dict[str, int]) -> Any:
    """Torch-Pruning importance = ``base``'s (normalized per group) divided by the predicted ms
    one channel of the group saves: a layer's time scales ~ with in × out channels, so removing
    one channel of a group saves, in every layer of the group, the layer's time × the share of
    its (in or out) dimension that channel holds (a Linear after a flatten: H×W inputs per
    channel). The side time a layer owns (concat, reorders, gates after it) scales with its
    outputs. The channels each group must keep (``max_layer_ratio``, rounded up to
    ``round_to``) get an infinite score, so the global ranking never takes them."""
    import torch

    tp = _tp()
    names = {m: n for n, m in module.named_modules()}
    layers = profile.layers

    class LatencyImportance(tp.importance.Importance):
        def __call__(self, group: Any) -> Any:
            imp = base(group)
            if imp is None:
                return None
            n = len(imp)
            cost, seen = 0.0, set()
            for dep, idxs in group:
                t = layers.get(names.get(dep.target.module, ""))
                if t is None:
                    continue
                out = getattr(dep.handler, "__name__", "").startswith("prune_out")
                key = (id(dep.target.module), "out" if (out or t.depthwise) else "in")
                if key in seen:
                    continue
                seen.add(key)
                dim = t.out_channels if (out or t.depthwise) else t.in_channels
                share = len(idxs) / max(n, 1) / max(dim, 1)
                cost += t.ms * share + (t.side_ms * share if (out or t.depthwise) else 0.0)
            imp = imp / max(cost, 1e-9)
            keep = min(n, max(s.round_to, math.ceil(n * (1 - s.max_layer_ratio) / s.round_to)
                              * s.round_to))
            tally["total"] += n
            tally["free"] += n - keep
            if keep > 0:
                top = torch.topk(imp, keep).indices
                imp = imp.clone()
                imp[top] = float("inf")
            return imp

    return LatencyImportance()


def _prune_once(module: Any, example: Any, ratio: float, s: PruneSettings,
                protect: Sequence[str], dry_run: bool = False) -> list[list[Any]]:
    """Prune ``module`` in place at channel ratio ``ratio``; return Torch-Pruning's history."""
    tp = _tp()
    if s.importance == "taylor" and not any(p.grad is not None for p in module.parameters()):
        raise ConfigError("Taylor importance needs gradients: call "
                          "edgekit.prune.accumulate_gradients(module, x, y, task=...) first, "
                          "or use importance 'l2'")
    _record_gate_widths(module, example)
    imp = _importance(s.importance)
    latency = s.cost == "latency"
    tally = {"total": 0, "free": 0}
    if latency:
        imp = _latency_importance(imp, module, s.profile, s, tally)
    with _Traceable(module):
        pruner = tp.pruner.MetaPruner(
            module, example, importance=imp,
            global_pruning=s.global_pruning or latency, pruning_ratio=ratio,
            max_pruning_ratio=s.max_layer_ratio, round_to=s.round_to,
            ignored_layers=_modules_by_name(module, protect),
            customized_pruners=_customized())
        if dry_run:  # the importances only: how many channels the global ranking may take
            for _ in pruner.step(interactive=True):
                break
            return [[tally["free"], tally["total"]]]
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
    blocked: list[dict[str, Any]] = field(default_factory=list)  # ops pruned around (Blocker)
    cost: str = "macs"
    time_before_ms: float | None = None  # predicted from the profile (latency cost)
    time_after_ms: float | None = None

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def time_fraction(self) -> float | None:
        """Predicted time kept (latency cost), from the profile of the unpruned model."""
        if self.time_before_ms is None or self.time_after_ms is None:
            return None
        return self.time_after_ms / self.time_before_ms if self.time_before_ms else 1.0


def prune(module: Any, example: Any, settings: PruneSettings, *,
          reference_macs: int | None = None, reference_ms: float | None = None
          ) -> PruneOutcome:
    """Remove channels from ``module`` in place.

    With ``target_macs`` (``target_time``) the channel ratio is found by bisection (each trial
    prunes a copy) so that the pruned MACs (the time predicted from ``settings.profile``) are at
    most ``target_macs × reference_macs`` (``target_time × reference_ms``; both default to the
    module's current MACs / predicted time; pass the original's for a later iterative step).
    For Taylor importance, call :func:`accumulate_gradients` first.
    """
    settings.validate()
    module.eval()
    protect = _protected(module, example, settings.protect)
    stops = blocked(module, example)
    if stops and not any(not g.protected for g in prunable_groups(module, example, protect)):
        raise ConfigError(
            "nothing left to prune: "
            + "; ".join(f"{b.describe()}" for b in stops)
            + ". Those layers' channels cannot shrink, and the others are protected ("
            + ", ".join(protect) + ")."
            + (" Re-export the model with the shape computed from the input (x.flatten(1), "
               "x.view(x.size(0), -1)) instead of a fixed size."
               if any(b.why.startswith("fixes") for b in stops) else ""))
    macs0, params0 = count(module, example)
    profile = settings.profile if settings.cost == "latency" else None
    ms0 = profile.predict_ms(module) if profile is not None else None
    searched: list[dict[str, float]] = []
    if settings.target_time is not None:
        ref = reference_ms or ms0
        goal = settings.target_time * ref
        measure: Callable[[Any], float] = profile.predict_ms
        label, base = "time_fraction", ref
    elif settings.target_macs is not None:
        goal = settings.target_macs * (reference_macs or macs0)
        measure = lambda m: float(count(m, example)[0])  # noqa: E731
        label, base = "macs_fraction", macs0
    else:
        goal = None
    if goal is None:
        ratio = float(settings.ratio)
    elif (ms0 if settings.target_time is not None else macs0) <= goal:
        ratio = 0.0
    else:
        ratio = _bisect_ratio(module, example, settings, protect, goal, base, searched,
                              measure, label)
    history = _prune_once(module, example, ratio, settings, protect) if ratio > 0 else []
    check_runs(module, example)  # an op that fixes channels and that no rule caught: named
    macs1, params1 = count(module, example)
    return PruneOutcome(history, ratio, macs0, macs1, params0, params1, protect, searched,
                        [b.to_dict() for b in stops], settings.cost, ms0,
                        profile.predict_ms(module) if profile is not None else None)


def _bisect_ratio(module: Any, example: Any, s: PruneSettings, protect: Sequence[str],
                  goal: float, base: float, searched: list[dict[str, float]],
                  measure: Callable[[Any], float], label: str) -> float:
    what = "the MACs" if label == "macs_fraction" else "the profiled time"

    def value_at(r: float) -> float:
        trial = _copy_with_grads(module)
        _prune_once(trial, example, r, s, protect)
        v = measure(trial)
        searched.append({"ratio": r, label: v / base})
        return v

    hi = s.max_layer_ratio if not s.global_pruning else min(0.95, s.max_layer_ratio)
    if s.cost == "latency":  # global ranking: at most the channels no group must keep
        free, total = _prune_once(_copy_with_grads(module), example, 0.01, s, protect,
                                  dry_run=True)[0]
        hi = min(hi, 0.995 * free / total) if total else 0.0
    if hi <= 0 or value_at(hi) > goal:
        best = min((x[label] for x in searched), default=1.0)
        raise UnreachableTarget(
            f"cannot reach {goal / base:.0%} of {what}: at the largest ratio allowed "
            f"(max_layer_ratio {s.max_layer_ratio}) the model keeps {best:.0%} (protected: "
            f"{', '.join(protect) or 'none'}). Raise max_layer_ratio or relax the target.",
            reachable=best)
    lo = 0.0
    for _ in range(9):  # ratio to ±0.2 %: well below one channel of rounding in most layers
        mid = (lo + hi) / 2
        v = value_at(mid)
        if v <= goal:
            hi = mid
            if v >= 0.98 * goal:  # within 2 % of the target from below: close enough
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


def step_settings(cfg: Any, step: int, profile: Any = None) -> PruneSettings:
    """Settings of iterative step ``step`` (1-based) of ``cfg.steps``: a MACs (time) target
    falls linearly to ``cfg.target_macs`` (``cfg.target_time``); a channel ratio compounds to
    ``cfg.ratio``. ``profile`` (a TimeProfile of the unpruned model) for cost ``latency``."""
    n = cfg.steps
    target = None if cfg.target_macs is None else 1 - (1 - cfg.target_macs) * step / n
    target_time = getattr(cfg, "target_time", None)
    target_time = None if target_time is None else 1 - (1 - target_time) * step / n
    ratio = None if cfg.ratio is None else 1 - (1 - cfg.ratio) ** (1 / n)
    return PruneSettings(ratio=ratio, target_macs=target, importance=cfg.importance,
                         global_pruning=cfg.global_pruning, max_layer_ratio=cfg.max_layer_ratio,
                         round_to=cfg.round_to,
                         protect=None if cfg.protect is None else list(cfg.protect),
                         cost=getattr(cfg, "cost", "macs"), target_time=target_time,
                         profile=profile)

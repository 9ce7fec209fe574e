"""Structured channel pruning (``edgekit.prune``) on Torch-Pruning's dependency graph.

One tiny model per zoo block pattern (squeeze-excitation, CBAM, spatial gate, multi-receptive
field, depthwise separable, inverted residual) plus the Flatten head of ``dsconv_cbam``: each is
pruned, still runs, keeps its output shape, loses MACs, keeps widths that are multiples of 8 and
exports to ONNX with the same outputs. Then the spatial-gate fix against plain Torch-Pruning,
MACs targets on the zoo models, plan replay, Taylor importance, protection and validation.

Inputs are small (32 px for the block models, 64 px for the zoo) and torch runs on one thread,
to keep the file fast on 2 busy CPU cores.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit.errors import ConfigError
from edgekit.prune import (
    PLAN_FORMAT,
    PruneSettings,
    accumulate_gradients,
    apply_plan,
    count,
    default_protected,
    layer_widths,
    make_plan,
    prunable_groups,
    prune,
)
from edgekit.zoo import create_model, model_config
from edgekit.zoo.blocks import (
    CBAM,
    ConvBNAct,
    InvertedResidual,
    MultiReceptiveField,
    SeparableConv2d,
    SpatialGate,
    SqueezeExcite,
)

tp = pytest.importorskip("torch_pruning", reason="pip install 'edgekit[compress]'")

BLOCK_SIZE = 32  # the hand-built block models
ZOO_SIZE = 64  # zoo models (divisible by 8, as dsconv_cbam's Flatten head requires)
BATCH = 2
ROUND_TO = 8
ONNX_OPSET = 18  # as tests/test_zoo.py: the lowest opset the dynamo exporter implements natively
SEED_MODELS = ("prudensnet", "dsconv_cbam_gap", "dsconv_cbam", "ich_mrf", "mobilenetv2")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# Tiny inputs: intra-op threads buy nothing and spin against other processes on 2 cores.
pytestmark = pytest.mark.usefixtures("single_torch_thread")


# --- tiny models, one per block pattern --------------------------------------------------------


class Tiny(nn.Module):
    """``stem`` (3 → 16, stride 2) → ``body`` → global mean → ``classifier``."""

    def __init__(self, body: nn.Module, width: int, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 16, 3, stride=2)
        self.body = body
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(self.stem(x)).mean(dim=(2, 3)))


def _body(**layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


def se_model() -> nn.Module:
    return Tiny(_body(conv=ConvBNAct(16, 64, 3), se=SqueezeExcite(64)), 64)


def cbam_model() -> nn.Module:
    return Tiny(_body(conv=ConvBNAct(16, 64, 3), cbam=CBAM(64, ratio=16, spatial_kernel=5)), 64)


def spatial_model() -> nn.Module:
    return Tiny(_body(conv=ConvBNAct(16, 64, 3), spatial=SpatialGate(7)), 64)


def gated_model() -> nn.Module:
    """Squeeze-excitation then a spatial gate on the same tensor, as in a PruDensNet block."""
    return Tiny(_body(conv=ConvBNAct(16, 64, 3, stride=2), se=SqueezeExcite(64),
                      spatial=SpatialGate(7)), 64)


def mrf_model() -> nn.Module:
    mrf1 = MultiReceptiveField(32, 32, stride=1)
    assert mrf1.use_residual
    return Tiny(_body(conv=ConvBNAct(16, 32, 1), mrf1=mrf1,
                      mrf2=MultiReceptiveField(32, 48, stride=2)), 48)


def separable_model() -> nn.Module:
    return Tiny(_body(sep1=SeparableConv2d(16, 64, 3), bn1=nn.BatchNorm2d(64), act1=nn.ReLU(),
                      sep2=SeparableConv2d(64, 64, 3, stride=2), bn2=nn.BatchNorm2d(64),
                      act2=nn.ReLU()), 64)


def inverted_model() -> nn.Module:
    ir1 = InvertedResidual(32, 32, stride=1, expand_ratio=4)
    assert ir1.use_residual
    return Tiny(_body(conv=ConvBNAct(16, 32, 1), ir1=ir1,
                      ir2=InvertedResidual(32, 48, stride=2, expand_ratio=6)), 48)


def dsconv_cbam_model() -> nn.Module:
    return create_model("dsconv_cbam", input_size=ZOO_SIZE)


# (builder, input size, layers that must shrink: the pattern itself was pruned)
PATTERNS: dict[str, tuple[Callable[[], nn.Module], int, tuple[str, ...]]] = {
    "squeeze_excite": (se_model, BLOCK_SIZE, ("body.conv.conv", "body.se.fc2")),
    "cbam": (cbam_model, BLOCK_SIZE, ("body.conv.conv", "body.cbam.channel.fc2")),
    "spatial_gate": (spatial_model, BLOCK_SIZE, ("body.conv.conv",)),
    "multi_receptive_field": (mrf_model, BLOCK_SIZE, (
        "body.conv.conv", "body.mrf1.fuse.conv",  # the residual sum: one group
        "body.mrf1.expand.conv", "body.mrf1.branches.2.conv",  # the concatenated branches
        "body.mrf2.expand.conv", "body.mrf2.fuse.conv")),
    "separable": (separable_model, BLOCK_SIZE, (
        "body.sep1.pointwise", "body.sep2.depthwise", "body.sep2.pointwise")),
    "inverted_residual": (inverted_model, BLOCK_SIZE, (
        "body.conv.conv", "body.ir1.conv.2.conv",  # the shortcut: one group
        "body.ir1.conv.0.conv", "body.ir1.conv.1.conv", "body.ir2.conv.0.conv")),
    "dsconv_cbam_flatten": (dsconv_cbam_model, ZOO_SIZE, (
        "trunk.stages.1.0.pointwise", "trunk.stages.2.0.pointwise", "fc")),
}


def example(size: int) -> torch.Tensor:
    return torch.zeros(1, 3, size, size)


def batch(size: int) -> torch.Tensor:
    return torch.rand(BATCH, 3, size, size)


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def changed_widths(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    assert before.keys() == after.keys()
    return {k: (before[k], after[k]) for k in before if before[k] != after[k]}


def assert_onnx_matches(model: nn.Module, x: torch.Tensor, path) -> None:
    """Export like tests/test_zoo.py does and compare ONNX Runtime with eager PyTorch."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = model.eval()
    torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=ONNX_OPSET,
                      external_data=False, input_names=["input"], output_names=["logits"],
                      verbose=False)
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": x.numpy()})
    expected = run(model, x).numpy()
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-4


# --- 1. every block pattern --------------------------------------------------------------------


def test_squeeze_excite_gate_shares_a_group_with_the_gated_conv() -> None:
    groups = prunable_groups(se_model(), example(BLOCK_SIZE))
    gated = [g for g in groups if "body.se.fc2" in g.layers and "body.conv.conv" in g.layers]
    assert len(gated) == 1
    assert gated[0].channels == 64
    assert not gated[0].protected
    assert "body.se.fc1" in gated[0].layers  # fc1's inputs shrink with the gated tensor


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_pattern_pruned_runs_and_exports(pattern: str, tmp_path) -> None:
    build, size, must_shrink = PATTERNS[pattern]
    model = build().eval()
    x = batch(size)
    expected_shape = run(model, x).shape
    before = layer_widths(model)
    protected = default_protected(model, example(size))

    outcome = prune(model, example(size), PruneSettings(ratio=0.5))

    out = run(model, x)
    assert out.shape == expected_shape
    assert torch.isfinite(out).all()
    assert outcome.macs_after < outcome.macs_before
    assert outcome.macs_after == count(model, example(size))[0]
    assert outcome.params_after < outcome.params_before
    assert outcome.history, "no pruning history recorded"
    changed = changed_widths(before, layer_widths(model))
    assert changed, "nothing was pruned"
    assert not [k for k, (_, w) in changed.items() if w % ROUND_TO], changed
    assert not [k for k in protected if k in changed], changed
    assert not [k for k in must_shrink if k not in changed], changed
    assert outcome.protect == protected
    assert_onnx_matches(model, x, tmp_path / f"{pattern}.onnx")


# --- 2. the spatial-gate fix -------------------------------------------------------------------


def plain_torch_pruning(model: nn.Module, x: torch.Tensor, ratio: float) -> None:
    """Torch-Pruning out of the box: no customized pruners, the same policy as edgekit
    (L2 magnitude, widths rounded to 8, at most 75 % per layer, stem and classifier ignored)."""
    modules = dict(model.named_modules())
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
        max_pruning_ratio=0.75, round_to=ROUND_TO,
        ignored_layers=[modules[n] for n in default_protected(model, x)])
    pruner.step()


@pytest.mark.parametrize("name", ["gated", "dsconv_cbam_gap"])
def test_spatial_gate_needs_the_customized_pruner(name: str) -> None:
    def build() -> nn.Module:
        torch.manual_seed(0)
        if name == "gated":
            return gated_model().eval()
        return create_model(name, input_size=ZOO_SIZE).eval()

    size = BLOCK_SIZE if name == "gated" else ZOO_SIZE
    x = example(size)
    plain = build()
    macs0 = count(plain, x)[0]
    plain_torch_pruning(plain, x, 0.3)
    assert count(plain, x)[0] / macs0 >= 0.98  # the gate couples every channel: nothing goes

    model = build()
    outcome = prune(model, x, PruneSettings(ratio=0.3))
    assert outcome.macs_before == macs0
    assert outcome.macs_fraction <= 0.75
    assert run(model, batch(size)).shape == (BATCH, model.classifier.out_features)


# --- 3. MACs targets on the zoo ----------------------------------------------------------------

# stem (first dense conv) + a depthwise conv on the input image (its channels are the image's)
STEMS = {
    "prudensnet": ["stem.0.conv"],
    "dsconv_cbam_gap": ["trunk.stages.0.0.pointwise", "trunk.stages.0.0.depthwise"],
    "dsconv_cbam": ["trunk.stages.0.0.pointwise", "trunk.stages.0.0.depthwise"],
    "ich_mrf": ["stem.0.pointwise", "stem.0.depthwise"],
    "mobilenetv2": ["features.0.conv"],
}


@pytest.mark.parametrize("name", SEED_MODELS)
def test_zoo_model_meets_macs_target(name: str) -> None:
    model = create_model(name, input_size=ZOO_SIZE).eval()
    x = example(ZOO_SIZE)
    assert default_protected(model, x) == [*STEMS[name], "classifier"]
    before = layer_widths(model)
    macs0 = count(model, x)[0]

    outcome = prune(model, x, PruneSettings(target_macs=0.7))

    macs1 = count(model, x)[0]
    assert outcome.macs_before == macs0 and outcome.macs_after == macs1
    assert macs1 <= 0.7 * macs0  # the target is an upper bound …
    assert macs1 <= 0.75 * macs0  # … so at least 25 % of the MACs are gone
    assert 0 < outcome.ratio <= 0.75
    assert outcome.searched, "the ratio was not searched"
    assert all(0 < s["macs_fraction"] <= 1 for s in outcome.searched)
    after = layer_widths(model)
    for layer in (*STEMS[name], "classifier"):
        assert after[layer] == before[layer], layer
    changed = changed_widths(before, after)
    assert not [k for k, (_, w) in changed.items() if w % ROUND_TO], changed
    assert run(model, batch(ZOO_SIZE)).shape == (BATCH, model_config(name).num_classes)


def test_macs_target_already_met_prunes_nothing() -> None:
    model = create_model("dsconv_cbam_gap", input_size=ZOO_SIZE).eval()
    before = copy.deepcopy(model.state_dict())
    macs0 = count(model, example(ZOO_SIZE))[0]
    outcome = prune(model, example(ZOO_SIZE), PruneSettings(target_macs=0.7),
                    reference_macs=2 * macs0)  # an earlier step already pruned below 70 %
    assert outcome.ratio == 0 and outcome.history == []
    assert outcome.macs_after == macs0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unreachable_macs_target_is_a_config_error() -> None:
    model = create_model("prudensnet", input_size=ZOO_SIZE).eval()
    with pytest.raises(ConfigError, match="cannot reach 1% of the MACs"):
        prune(model, example(ZOO_SIZE), PruneSettings(target_macs=0.01))


@pytest.mark.parametrize("name", [
    "prudensnet", "ich_mrf", "mobilenetv2",
    "dsconv_cbam_gap",  # CBAM's shared MLP runs twice per forward: both calls are counted
])
def test_count_matches_edgekit_inspect(name: str) -> None:
    from edgekit.inspect import summarize
    from edgekit.sources import load_model

    torch.manual_seed(0)
    loaded = load_model(name, input_size=ZOO_SIZE)
    summary = summarize(loaded)
    assert count(loaded.module, example(ZOO_SIZE)) == (summary.macs, summary.params)


# --- 4. plan replay ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prudensnet", "ich_mrf", "dsconv_cbam_gap"])
def test_plan_replays_on_a_fresh_model(name: str) -> None:
    x = example(ZOO_SIZE)
    pruned = create_model(name, input_size=ZOO_SIZE).eval()
    macs0 = count(pruned, x)[0]
    first = prune(pruned, x, PruneSettings(ratio=0.2))
    second = prune(pruned, x, PruneSettings(target_macs=0.6), reference_macs=macs0)
    assert second.macs_after <= 0.6 * macs0
    plan = make_plan([first.history, second.history], architecture=name,
                     input_shape=list(x.shape), protect=first.protect)

    text = json.dumps(plan)
    restored = json.loads(text)
    assert restored == json.loads(json.dumps(restored))
    assert restored["format"] == PLAN_FORMAT and restored["architecture"] == name
    assert len(restored["steps"]) == 2

    torch.manual_seed(1)  # different weights: only the state dict can make them agree
    fresh = create_model(name, input_size=ZOO_SIZE)
    assert apply_plan(fresh, x, restored) is fresh
    assert layer_widths(fresh) == layer_widths(pruned)
    fresh.load_state_dict(pruned.state_dict())  # strict: every shape agrees
    xb = batch(ZOO_SIZE)
    torch.testing.assert_close(run(fresh, xb), run(pruned, xb), rtol=0, atol=0)
    assert count(fresh, x)[0] == second.macs_after


def test_plan_with_wrong_format_is_a_config_error() -> None:
    model = create_model("dsconv_cbam_gap", input_size=ZOO_SIZE).eval()
    outcome = prune(model, example(ZOO_SIZE), PruneSettings(ratio=0.3))
    plan = make_plan([outcome.history])
    for bad in ({**plan, "format": "edgekit.prune-plan/0"}, {"steps": plan["steps"]}):
        fresh = create_model("dsconv_cbam_gap", input_size=ZOO_SIZE)
        widths = layer_widths(fresh)
        with pytest.raises(ConfigError, match="pruning plan format"):
            apply_plan(fresh, example(ZOO_SIZE), bad)
        assert layer_widths(fresh) == widths


# --- 5. Taylor importance ----------------------------------------------------------------------


@pytest.mark.parametrize("name, settings", [
    ("prudensnet", PruneSettings(ratio=0.5, importance="taylor")),
    ("ich_mrf", PruneSettings(ratio=0.5, importance="taylor")),
    ("dsconv_cbam_gap", PruneSettings(target_macs=0.6, importance="taylor")),
])
def test_taylor_importance_prunes_after_gradients(name: str, settings: PruneSettings) -> None:
    cfg = model_config(name)
    rng = np.random.default_rng(0)
    x = rng.random((8, 3, ZOO_SIZE, ZOO_SIZE), dtype=np.float32)
    if cfg.task == "multilabel":
        y = rng.integers(0, 2, (8, cfg.num_classes))
    else:
        y = rng.integers(0, cfg.num_classes, 8)
    model = create_model(name, input_size=ZOO_SIZE)
    before = layer_widths(model)
    accumulate_gradients(model, x, y, task=cfg.task, batch_size=4)
    assert not model.training
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)

    outcome = prune(model, example(ZOO_SIZE), settings)

    assert outcome.macs_fraction < 0.75
    if settings.target_macs is not None:
        assert outcome.macs_fraction <= settings.target_macs
    changed = changed_widths(before, layer_widths(model))
    assert changed and not [k for k, (_, w) in changed.items() if w % ROUND_TO], changed
    assert run(model, batch(ZOO_SIZE)).shape == (BATCH, cfg.num_classes)


def test_taylor_and_l2_choose_different_channels() -> None:
    """Channels 0-7 of ``body`` have huge weights (L2 keeps them) but the classifier ignores
    them, so the loss does not depend on them (Taylor removes them first)."""
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = ConvBNAct(3, 16, 3, stride=2)
            self.body = nn.Conv2d(16, 64, 3, padding=1)
            self.act = nn.ReLU()
            self.classifier = nn.Linear(64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.act(self.body(self.stem(x))).mean(dim=(2, 3)))

    torch.manual_seed(0)
    base = Head()
    with torch.no_grad():
        base.body.weight[:8] *= 100
        base.classifier.weight[:, :8] = 0
    rng = np.random.default_rng(0)
    x = rng.random((8, 3, BLOCK_SIZE, BLOCK_SIZE), dtype=np.float32)
    y = rng.integers(0, 3, 8)

    def removed(importance: str) -> set[int]:
        model = copy.deepcopy(base)
        if importance == "taylor":
            accumulate_gradients(model, x, y, task="multiclass")
        outcome = prune(model, example(BLOCK_SIZE),
                        PruneSettings(ratio=0.5, importance=importance))
        assert model.body.out_channels == 32
        (idxs,) = [i for layer, out, i in outcome.history if layer == "body" and out]
        return set(idxs)

    unused = set(range(8))
    assert not unused & removed("l2")
    assert unused <= removed("taylor")


def test_taylor_without_gradients_is_a_config_error() -> None:
    model = create_model("dsconv_cbam_gap", input_size=ZOO_SIZE)
    with pytest.raises(ConfigError):
        prune(model, example(ZOO_SIZE), PruneSettings(ratio=0.5, importance="taylor"))


# --- 6. protection and validation --------------------------------------------------------------


def test_protected_layer_keeps_its_width() -> None:
    model = create_model("prudensnet", input_size=ZOO_SIZE).eval()
    before = layer_widths(model)
    keep = ["stem.0.conv", "blocks.1.sep1.pointwise", "classifier"]
    outcome = prune(model, example(ZOO_SIZE), PruneSettings(ratio=0.5, protect=keep))
    assert outcome.protect == keep
    after = layer_widths(model)
    for layer in keep:
        assert after[layer] == before[layer], layer
    # its coupled depthwise keeps its width too; the same layer of another block shrinks
    assert after["blocks.1.sep2.depthwise"] == before["blocks.1.sep2.depthwise"]
    assert after["blocks.0.sep1.pointwise"] < before["blocks.0.sep1.pointwise"]


def test_unknown_protected_layer_is_named() -> None:
    model = create_model("prudensnet", input_size=ZOO_SIZE).eval()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=r"blocks\.9\.nothing") as info:
        prune(model, example(ZOO_SIZE),
              PruneSettings(ratio=0.5, protect=["classifier", "blocks.9.nothing"]))
    assert "its layers are: act, blocks.0.act1" in str(info.value)  # and lists real ones
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match=r"blocks\.9\.nothing"):
        prunable_groups(model, example(ZOO_SIZE), protect=["blocks.9.nothing"])


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 0.3, "target_macs": 0.7}, "exactly one"),
    ({}, "exactly one"),
    ({"ratio": 0.0}, "ratio must be in"),
    ({"ratio": 1.0}, "ratio must be in"),
    ({"ratio": -0.2}, "ratio must be in"),
    ({"target_macs": 0.0}, "target MACs"),
    ({"target_macs": 1.5}, "target MACs"),
    ({"ratio": 0.3, "max_layer_ratio": 1.0}, "max_layer_ratio"),
    ({"ratio": 0.3, "round_to": 0}, "round_to"),
    ({"ratio": 0.3, "importance": "l1"}, "unknown importance"),
])
def test_invalid_settings_are_config_errors(kwargs: dict, message: str) -> None:
    settings = PruneSettings(**kwargs)
    with pytest.raises(ConfigError, match=message):
        settings.validate()
    model = se_model()
    with pytest.raises(ConfigError, match=message):
        prune(model, example(BLOCK_SIZE), settings)


# --- 7. groups ---------------------------------------------------------------------------------


def test_prudensnet_groups() -> None:
    model = create_model("prudensnet", input_size=ZOO_SIZE).eval()
    widths = layer_widths(model)
    groups = prunable_groups(model, example(ZOO_SIZE))
    assert layer_widths(model) == widths  # a copy is analysed, the model is untouched
    assert [g.index for g in groups] == list(range(len(groups)))
    for g in groups:
        assert g.root in g.layers and g.channels > 0 and g.macs > 0
        assert set(g.to_dict()) == {"index", "root", "channels", "layers", "protected", "macs"}
    (classifier,) = [g for g in groups if g.root == "classifier"]
    assert classifier.protected and classifier.channels == 4
    (stem,) = [g for g in groups if g.root == "stem.0.conv"]
    assert stem.protected
    assert [g.root for g in groups if g.protected] == ["classifier", "stem.0.conv"]
    for i, width in enumerate((128, 320, 640)):
        block = f"blocks.{i}"
        (gated,) = [g for g in groups if f"{block}.se.fc2" in g.layers
                    and f"{block}.sep2.pointwise" in g.layers]
        assert f"{block}.shortcut.conv" in gated.layers
        assert gated.channels == width and not gated.protected
    # protect=[] still protects the classifier (its outputs are the classes); an explicit list
    # replaces the stem's protection and marks exactly the groups of those layers
    assert [g.root for g in prunable_groups(model, example(ZOO_SIZE), protect=[])
            if g.protected] == ["classifier"]
    marked = [g.root for g in prunable_groups(model, example(ZOO_SIZE),
                                              protect=["blocks.1.sep2.pointwise"])
              if g.protected]
    assert sorted(marked) == ["blocks.1.se.fc2", "classifier"]


# --- defects found while writing these tests (fixed) -----------------------------------------------------------------------------


def test_prune_with_frozen_parameters() -> None:
    model = create_model("prudensnet", input_size=ZOO_SIZE).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    outcome = prune(model, example(ZOO_SIZE), PruneSettings(ratio=0.3))
    assert outcome.macs_fraction < 0.75


def test_apply_plan_with_frozen_parameters() -> None:
    x = example(ZOO_SIZE)
    pruned = create_model("prudensnet", input_size=ZOO_SIZE).eval()
    plan = make_plan([prune(pruned, x, PruneSettings(ratio=0.3)).history])
    fresh = create_model("prudensnet", input_size=ZOO_SIZE).eval()
    for p in fresh.parameters():
        p.requires_grad_(False)
    apply_plan(fresh, x, plan)
    assert layer_widths(fresh) == layer_widths(pruned)


def test_explicit_protect_list_keeps_the_outputs() -> None:
    model = create_model("prudensnet", input_size=ZOO_SIZE, num_classes=16).eval()
    prune(model, example(ZOO_SIZE), PruneSettings(ratio=0.5, protect=["stem.0.conv"]))
    assert run(model, batch(ZOO_SIZE)).shape == (BATCH, 16)

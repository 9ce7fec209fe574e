"""Structured pruning beyond the zoo: ``torch.export`` programs (``.pt2``) and plain modules.

A small ResNet-ish CNN that is NOT in the zoo (greyscale 64 px, BatchNorm, a depthwise block
with a residual sum, global pooling, a Linear head), trained briefly on the MRI phantoms and
exported with ``torch.export``: pruned with the CLI, compressed with a prune recipe, the pruned
``.pt2`` compressed again. Graphs that fix a channel count (a channel slice, a view that splits
the channels, a custom op) are pruned around or refused with the op's name; a constant view that
only flattens (``x.view(-1, 64 * 8 * 8)``) follows the pruned width."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning", reason="pruning needs torch-pruning (edgekit[compress])")
nn = torch.nn


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.pw(torch.relu(self.bn1(self.dw(x))))))


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(16, 48, 3, 1, 1, bias=False), nn.BatchNorm2d(48),
                                  nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(48, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU())
        self.block = Block(64)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        x = self.block(self.down(self.conv(self.stem(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class FixedView(nn.Module):
    """VGG-ish with ``x.view(-1, 64 * 8 * 8)``: the exported graph reads view(x, [-1, 4096])."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.fc = nn.Linear(64 * 8 * 8, 4)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        x = nn.functional.max_pool2d(torch.relu(self.c3(x)), 4)
        return self.fc(x.view(-1, 64 * 8 * 8))


class ChannelSlice(nn.Module):
    """Keeps the first 48 of 64 channels: a slice at fixed channel positions."""

    def __init__(self, middle: bool = False) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1) if middle else nn.Identity()
        self.c3 = nn.Conv2d(32 if middle else 16, 64, 3, padding=1)
        self.fc = nn.Linear(48, 4)

    def forward(self, x):
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))[:, :48]
        return self.fc(x.mean((2, 3)))


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: a view that splits the channels into 2 groups of 16."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        x = x.view(1, 2, 16, 64, 64).transpose(1, 2).reshape(1, 32, 64, 64)
        return self.fc(x.mean((2, 3)))


@torch.library.custom_op("edgekit_test::channel_scale", mutates_args=())
def channel_scale(x: torch.Tensor) -> torch.Tensor:
    return x * torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1, 1)


@channel_scale.register_fake
def _(x):
    return torch.empty_like(x)


class CustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = channel_scale(torch.relu(self.c2(torch.relu(self.c1(x)))))
        return self.fc(x.mean((2, 3)))


class SharedGate(nn.Module):
    """A CBAM-style channel gate: one MLP (1×1 convolutions) on the average- and the
    max-pooled features, so the program reads the same weights in two calls."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Conv2d(32, 8, 1)
        self.fc2 = nn.Conv2d(8, 32, 1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        mlp = lambda t: self.fc2(torch.relu(self.fc1(t)))  # noqa: E731
        gate = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), True)))
        return self.fc((x * gate).mean((2, 3)))


EXAMPLE = (1, 1, 64, 64)


def _export(module: nn.Module, path: Path) -> Path:
    program = torch.export.export(module.eval(), (torch.zeros(EXAMPLE),))
    torch.export.save(program, str(path))
    return path


def _macs(cli, model: Path) -> int:
    return json.loads(cli("inspect", model, "--json").stdout)["macs"]


@pytest.fixture(scope="module")
def program(mri_phantoms: Path, tmp_path_factory) -> Path:
    """ResNetish trained for 6 epochs on the grey 64 px phantoms normalised with mean 0.5 /
    std 0.5 (as third-party models often are), exported as a .pt2."""
    from edgekit.data.folder import scan
    from edgekit.data.preprocess import PreprocessSpec
    from edgekit.evaluate import load_arrays

    spec = PreprocessSpec(input_size=(64, 64), color="gray", mean=(0.5,), std=(0.5,))
    x, y = load_arrays(scan(mri_phantoms), spec)
    torch.manual_seed(0)
    model = ResNetish()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    for _ in range(6):
        for idx in torch.randperm(len(xt)).split(16):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return _export(model, tmp_path_factory.mktemp("program") / "net.pt2")


@pytest.fixture(scope="module")
def pruned_program(program: Path, mri_phantoms: Path, tmp_path_factory):
    """`edgekit prune net.pt2 --mean 0.5 --std 0.5 --out pruned.pt2`, default recipe (prune30)."""
    from click.testing import CliRunner

    from edgekit.cli import main

    out = tmp_path_factory.mktemp("pruned") / "pruned.pt2"
    res = CliRunner().invoke(main, ["prune", str(program), "--data", str(mri_phantoms),
                                    "--out", str(out), "--epochs", "2", "--mean", "0.5",
                                    "--std", "0.5",
                                    "--verification-images", "40"], catch_exceptions=False)
    return out, res


def test_editable_graph_has_real_layers_and_runs_at_any_batch() -> None:
    from edgekit.prune import blockers, editable
    from edgekit.prune.engine import layer_widths

    torch.manual_seed(1)
    model = ResNetish().eval()
    for m in model.modules():  # non-trivial BN statistics: a lost buffer would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    program = torch.export.export(model, (torch.zeros(EXAMPLE),))
    graph = editable(program.module(), torch.zeros(EXAMPLE))
    kinds = {n: type(m).__name__ for n, m in graph.named_modules() if n}
    assert kinds["stem.0"] == "Conv2d" and kinds["block.dw"] == "Conv2d"
    assert kinds["head"] == "Linear" and "BatchNorm2d" in kinds.values()
    assert layer_widths(graph) == layer_widths(model)
    assert not any(n.op == "call_function" and "conv" in str(n.target)
                   for n in graph.graph.nodes)
    x = torch.randn(3, *EXAMPLE[1:])  # batch 3 through a program exported at batch 1
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-5)
    assert blockers(graph) == []


def test_weights_read_twice_become_one_module_called_twice() -> None:
    from edgekit.prune import PruneSettings, blockers, editable, prune
    from edgekit.prune.engine import layer_widths

    torch.manual_seed(4)
    model, example = SharedGate().eval(), torch.zeros(EXAMPLE)
    graph = editable(torch.export.export(model, (example,)).module(), example)
    calls = [n.target for n in graph.graph.nodes if n.op == "call_module"]
    assert calls.count("fc1") == 2 and calls.count("fc2") == 2
    assert blockers(graph) == [] and not any(n.op == "get_attr" for n in graph.graph.nodes)
    x = torch.randn(2, *EXAMPLE[1:])
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-5)
    prune(graph, example, PruneSettings(ratio=0.5, round_to=8))
    assert layer_widths(graph)["c2"] == layer_widths(graph)["fc2"] == 16  # gate follows c2
    with torch.no_grad():
        assert graph(x).shape == (2, 4)


class HandGate(nn.Module):
    """A spatial attention written the other way round from the zoo's: ``[max; mean]`` with
    ``torch.max(...)[0]`` and the gate on the left of the product."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 32, 3, padding=1)
        self.attn = nn.Conv2d(2, 1, 5, padding=2)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        pooled = torch.cat([torch.max(x, 1, keepdim=True)[0], x.mean(1, keepdim=True)], 1)
        x = torch.sigmoid(self.attn(pooled)) * x
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("name", ["hand", "dsconv_cbam_gap"])
def test_a_spatial_attention_gate_in_a_program_does_not_freeze_the_channels_it_gates(
        name: str) -> None:
    """``x * sigmoid(conv([max; mean]))`` couples the gate's single channel with every gated
    channel in Torch-Pruning's tracer; the editable graph makes it one SpatialGate module (the
    zoo's own gate pruner then applies): same outputs, and the gated layers prune (a
    ``.pt2`` of DSConv-CBAM could not be pruned at all: every block is gated)."""
    from edgekit.prune import PruneSettings, blockers, editable, prune
    from edgekit.prune.engine import layer_widths
    from edgekit.zoo import create_model
    from edgekit.zoo.blocks import SpatialGate

    torch.manual_seed(5)
    model = (HandGate() if name == "hand" else
             create_model(name, num_classes=4, input_size=64)).eval()
    example = torch.zeros(EXAMPLE if name == "hand" else (1, 3, 64, 64))
    graph = editable(torch.export.export(model, (example,)).module(), example)
    gates = [n for n, m in graph.named_modules() if isinstance(m, SpatialGate)]
    assert len(gates) == (1 if name == "hand" else 3) and blockers(graph) == []
    widths = layer_widths(graph)
    if name == "hand":  # a top-level gate conv is held by the gate: "attn_spatial_gate.conv"
        widths["attn"] = widths.pop("attn_spatial_gate.conv")
    assert widths == layer_widths(model)  # in a holder of its own, the conv keeps its name
    x = torch.randn(2, *example.shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-5)
    outcome = prune(graph, example, PruneSettings(target_macs=0.7))
    assert outcome.macs_fraction <= 0.72
    gated = "c2" if name == "hand" else "trunk.stages.2.0.pointwise"
    assert layer_widths(graph)[gated] < layer_widths(model)[gated]
    with torch.no_grad():
        assert graph(x).shape == (2, 4)


def test_a_symbolically_traced_graph_module_prunes() -> None:
    """A ``torch.fx.symbolic_trace`` GraphModule: real layers already, leaf activations,
    pooling and dropout as call_module nodes — none of them blocks."""
    from edgekit.prune import PruneSettings, blockers, editable, prune

    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU6(), nn.MaxPool2d(2),
                          nn.Dropout(0.1), nn.Conv2d(32, 32, 3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(32, 4)).eval()
    graph = torch.fx.symbolic_trace(model)
    assert blockers(graph) == []
    example = torch.zeros(EXAMPLE)
    module = editable(graph, example)
    outcome = prune(module, example, PruneSettings(ratio=0.5))
    assert outcome.macs_fraction < 0.6 and not outcome.blocked
    with torch.no_grad():
        assert module(torch.zeros(3, *EXAMPLE[1:])).shape == (3, 4)


def test_prune_a_pt2_with_the_cli(pruned_program, program: Path, mri_phantoms: Path,
                                  cli) -> None:
    from edgekit.errors import ConfigError
    from edgekit.sources import load_model
    from edgekit.sources.declared import declared

    out, res = pruned_program
    assert res.exit_code in (0, 1), (res.output, res.stderr)
    assert out.is_file() and "Pruned model:" in res.stderr
    assert f"edgekit compress {out} --recipe int8" in res.stderr or res.exit_code == 1
    for text in ("MACs", "Layer widths that changed", "Recovery", "Verification on"):
        assert text in res.stdout, text
    loaded = load_model(out)  # the program, with the classes and spec edgekit recorded
    record = loaded.metadata["pruning"]
    assert loaded.class_names == ("glioma", "meningioma", "notumor", "pituitary")
    assert loaded.spec.color == "gray" and loaded.spec.input_size == (64, 64)
    assert loaded.spec.mean == (0.5,) and loaded.spec.std == (0.5,)  # recorded, not re-declared
    assert loaded.spec_sources["mean"] == "program's edgekit record"
    with pytest.raises(ConfigError, match="program's edgekit record fixes mean"):
        load_model(out, preprocess=declared(mean=(0.2,)))
    assert record["saved_as"] == "torch.export" and record["recovery"]
    macs0, macs1 = _macs(cli, program), _macs(cli, out)
    assert (macs0, macs1) == (record["macs_before"], record["macs_after"])
    assert macs1 <= 0.75 * macs0  # prune30: at least 25 % fewer MACs
    changed = record["widths_after"]
    assert changed and "head" not in changed and "stem.0" not in changed  # protected
    assert changed.get("block.dw") == changed.get("block.pw") == changed.get("down.0")  # residual
    assert (record["verification"]["decision"] != "fail") == (res.exit_code == 0)
    # recovery by distillation keeps most of the trained model's accuracy
    start, best = record["recovery"][0]["start_metric"], record["recovery"][0]["best_metric"]
    assert best >= start


def test_compress_prunes_a_pt2_and_takes_the_pruned_pt2(program: Path, pruned_program,
                                                        mri_phantoms: Path, tmp_path: Path
                                                        ) -> None:
    from edgekit.backends import require_backend
    from edgekit.compress import compress
    from edgekit.prune import pruning_recipe
    from edgekit.sources import load_model
    from edgekit.sources.declared import declared

    recipe = pruning_recipe("prune30", **{"pruning.recovery.epochs": 0})
    result = compress(program, data=mri_phantoms, out=tmp_path / "b", recipe=recipe,
                      backends=["onnxruntime"], verification_images=24,
                      allow_accuracy_drop=True, preprocess=declared(mean=(0.5,), std=(0.5,)))
    m = result.manifest.to_json()
    p = m["pruning"]
    assert p["saved_as"] == "torch.export" and p["checkpoint"]["path"] == "source/pruned.pt2"
    assert p["macs_fraction"] <= 0.75 and p["widths_after"]
    assert m["preprocess"]["mean"] == [0.5]
    assert "source/pruned.pt2" in {f["path"] for f in m["files"]}
    pruned = load_model(tmp_path / "b" / "source" / "pruned.pt2")
    art = result.artifacts[0]
    assert art.verification.to_json()["max_abs_logit_diff_vs_pruned"] <= 1e-4
    x = np.random.default_rng(0).random((4, *EXAMPLE[1:]), dtype=np.float32)
    got = require_backend(art.artifact.backend).open(art.artifact.path).run(x)
    np.testing.assert_allclose(pruned.predict(x), got, atol=1e-4)  # the bundle's .pt2 is it

    out, _ = pruned_program  # the CLI's pruned .pt2 is a source like any other
    again = compress(out, data=mri_phantoms, out=tmp_path / "c", recipe="fp32",
                     backends=["onnxruntime"], verification_images=24)
    v = again.artifacts[0].verification.to_json()
    assert v["max_abs_logit_diff"] <= 1e-4 and v["decision"] == "pass"
    assert again.manifest.to_json()["class_names"] == list(load_model(out).class_names)


def test_a_constant_flatten_view_follows_the_pruned_width() -> None:
    """``x.view(-1, 64 * 8 * 8)`` merges dimensions: it becomes flatten(1), so the last
    convolution prunes and the Linear after it loses the matching inputs."""
    from edgekit.prune import PruneSettings, blockers, editable, prune
    from edgekit.prune.engine import layer_widths

    torch.manual_seed(2)
    example, model = torch.zeros(EXAMPLE), FixedView().eval()
    graph = editable(torch.export.export(model, (example,)).module(), example)
    assert blockers(graph) == []
    x = torch.randn(2, *EXAMPLE[1:])
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-5)
    prune(graph, example, PruneSettings(ratio=0.5, round_to=8))
    assert layer_widths(graph)["c3"] == 32 and dict(graph.named_modules())["fc"].in_features \
        == 32 * 8 * 8
    with torch.no_grad():
        assert graph(x).shape == (2, 4)


def test_a_decomposed_program_has_real_layers_too() -> None:
    """``run_decompositions()`` programs: aten.convolution, _native_batch_norm_legit_no_training,
    addmm on a transposed weight, flatten as a view."""
    from edgekit.prune import PruneSettings, blockers, editable, prune

    torch.manual_seed(5)
    example, model = torch.zeros(EXAMPLE), ResNetish().eval()
    program = torch.export.export(model, (example,)).run_decompositions()
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"aten.convolution.default", "aten.addmm.default",
            "aten._native_batch_norm_legit_no_training.default"} <= targets
    graph = editable(program.module(), example)
    kinds = {n: type(m).__name__ for n, m in graph.named_modules() if n}
    assert kinds["head"] == "Linear" and kinds["block.bn1"] == "BatchNorm2d"
    assert blockers(graph) == []
    x = torch.randn(3, *EXAMPLE[1:])
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-5)
    assert prune(graph, example, PruneSettings(ratio=0.3)).macs_fraction < 0.75


def test_a_channel_slice_is_pruned_around_and_said_so() -> None:
    from edgekit.prune import PruneSettings, editable, prunable_groups, prune
    from edgekit.prune.engine import layer_widths

    torch.manual_seed(2)
    example = torch.zeros(EXAMPLE)
    program = torch.export.export(ChannelSlice(middle=True).eval(), (example,))
    graph = editable(program.module(), example)
    groups = {g.root: g for g in prunable_groups(graph, example)}
    assert groups["c3"].protected and not groups["c2"].protected
    outcome = prune(graph, example, PruneSettings(ratio=0.5, round_to=8))
    assert [b["layers"] for b in outcome.blocked] == [["c3"]]
    blocked = outcome.blocked[0]
    assert (blocked["target"], blocked["node"]) == ("aten.slice.Tensor", "slice_1")
    assert blocked["why"] == "indexes channels (dim 1) at fixed positions"
    widths = layer_widths(graph)
    assert widths["c3"] == 64 and widths["c2"] == 16  # c2 pruned, c3 kept whole
    with torch.no_grad():
        assert graph(torch.zeros(2, *EXAMPLE[1:])).shape == (2, 4)


@pytest.mark.parametrize("model, message", [
    (ChannelSlice, "aten.slice.Tensor at node 'slice_1' indexes channels (dim 1)"),
    (ChannelShuffle, "aten.view.default at node 'view' fixes the shape [N, 2, 16, 64, 64]"),
    (CustomOp, "edgekit_test.channel_scale.default at node 'channel_scale' is a custom op"),
])
def test_a_graph_with_nothing_left_to_prune_names_the_op(model, message) -> None:
    from edgekit.errors import ConfigError
    from edgekit.prune import PruneSettings, editable, prune

    example = torch.zeros(EXAMPLE)
    program = torch.export.export(model().eval(), (example,))
    graph = editable(program.module(), example)
    with pytest.raises(ConfigError, match="nothing left to prune") as info:
        prune(graph, example, PruneSettings(ratio=0.3))
    assert message in str(info.value)


def test_the_cli_refuses_a_blocked_pt2_with_the_op(mri_phantoms: Path, tmp_path: Path,
                                                   cli) -> None:
    blocked = _export(ChannelSlice(), tmp_path / "sliced.pt2")
    res = cli("prune", blocked, "--data", mri_phantoms, "--out", tmp_path / "p.pt2",
              "--epochs", "0", "--verification-images", "8", code=2)
    assert ("aten.slice.Tensor at node 'slice_1' indexes channels (dim 1) at fixed positions "
            "(fed by c3)") in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "p.pt2").exists()


def test_plain_modules_prune_and_torchscript_is_refused(mri_phantoms: Path,
                                                        tmp_path: Path) -> None:
    from edgekit.data.preprocess import PreprocessSpec
    from edgekit.errors import ConfigError
    from edgekit.prune import prune_file, require_prunable
    from edgekit.sources import TorchSource, load_model

    torch.manual_seed(3)
    source = TorchSource(module=ResNetish().eval(), name="resnetish", task="multiclass",
                         class_names=(), spec=PreprocessSpec(input_size=(64, 64), color="gray", mean=(0.0,), std=(1.0,)),
                         source="resnetish", pretrained=True)
    with pytest.raises(ConfigError, match=r"name --out with \.pt2"):
        prune_file(source, data=mri_phantoms, out=tmp_path / "p.pt", **{
            "pruning.recovery.epochs": 0})
    result = prune_file(source, data=mri_phantoms, out=tmp_path / "p.pt2",
                        verification_images=16, **{"pruning.recovery.epochs": 0})
    assert result.record["macs_fraction"] <= 0.75
    pruned = load_model(tmp_path / "p.pt2")
    assert pruned.num_classes == 4 and pruned.metadata["pruning"]["widths_after"]

    scripted = tmp_path / "m.ts"
    torch.jit.save(torch.jit.trace(ResNetish().eval(), torch.zeros(EXAMPLE)), str(scripted))
    with pytest.raises(ConfigError, match="TorchScript archive, which has no editable graph"):
        require_prunable(load_model(scripted, input_size=64))

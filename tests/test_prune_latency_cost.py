"""Latency-weighted pruning (``pruning.cost: latency``): the per-layer time profile of the
unpruned model (real OpenVINO on a 64 px zoo model), the engine's ranking by importance / ms
saved per channel, the predicted-time bisection, recipe validation and the profile-guided
``--target-latency-ms`` walk. No timing assertions: profiles are constructed where a test
needs a known cost."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from edgekit.errors import ConfigError
from edgekit.prune import PruneSettings, layer_widths, prunable_groups, prune
from edgekit.prune.profile import TimeProfile, uniform_profile
from edgekit.zoo import create_model

pytest.importorskip("torch_pruning", reason="pip install 'edgekit[compress]'")
ZOO_SIZE = 64

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _model(name: str = "mobilenetv2") -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return create_model(name, input_size=ZOO_SIZE).eval(), torch.zeros(1, 3, ZOO_SIZE, ZOO_SIZE)


def test_profile_attributes_openvino_time_to_the_torch_layers() -> None:
    pytest.importorskip("openvino")
    from edgekit.prune.profile import profile_openvino

    model, x = _model("ich_mrf")
    prof = profile_openvino(model, x, threads=1, iters=3)
    convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)}
    assert set(prof.layers) == convs  # every conv/linear layer has a row
    timed = [n for n, t in prof.layers.items() if t.ms > 0]
    assert len(timed) >= 0.8 * len(convs), "most layers' nodes were traced back to torch"
    assert not prof.untraced_conv_nodes
    # the concat of the multi-receptive-field blocks is owned by a layer (side time), not fixed
    assert sum(t.side_ms for t in prof.layers.values()) > 0
    assert prof.predict_ms(model) == pytest.approx(prof.total_ms)
    again = TimeProfile.from_dict(prof.to_dict())  # JSON round trip (outcome / manifest)
    assert again.predict_ms(model) == pytest.approx(prof.total_ms)


def test_time_after_a_gate_goes_to_the_layer_whose_channels_it_scales_with() -> None:
    """An attention gate's multiply (64 channels) runs after the 1-channel gate convolution:
    its time belongs to the 64-channel convolution before the gate, which pruning shrinks, not
    to the gate convolution, which it cannot (what misled dsconv_cbam's prediction at 224 px)."""
    from edgekit.prune.profile import _owner

    layers = {"block.conv": 64, "block.gate.conv": 1}  # their output channels
    seen = ["block.conv", "block.gate.conv"]
    assert _owner(seen, layers, 64) == "block.conv"
    assert _owner(seen, layers, 1) == "block.gate.conv"
    assert _owner(seen, layers, None) == "block.gate.conv"  # width unknown: the latest layer
    assert _owner(seen, layers, 7) == "block.gate.conv"  # no layer that wide: the latest


def test_a_channel_reduction_scales_with_the_channels_it_reads() -> None:
    """A spatial gate's channel mean writes 1 channel but reads all of them: its runtime node is
    owned by the width it reads (it was charged to the previous block's 1-channel gate conv)."""
    ov = pytest.importorskip("openvino")
    from edgekit.prune.profile import _channels

    class Value:
        def __init__(self, text: str) -> None:
            self.text = text

        def astype(self, _: type) -> str:
            return self.text

    class Port:
        def __init__(self, dims: list[int]) -> None:
            self.shape = ov.PartialShape(dims)

        def get_partial_shape(self):
            return self.shape

    class Node:
        def __init__(self, kind: str) -> None:
            self.kind = kind

        def get_rt_info(self):
            return {"layerType": Value(self.kind)}

        def get_input_size(self) -> int:
            return 1

        def get_output_size(self) -> int:
            return 1

        def input(self, _: int) -> Port:
            return Port([1, 128, 8, 8])

        def output(self, _: int) -> Port:
            return Port([1, 1, 8, 8])

    assert _channels(Node("Reduce")) == 128
    assert _channels(Node("Eltwise")) == 1  # any other node: its output's channels


def test_a_remote_target_is_profiled_by_its_latency_model(capsys) -> None:
    """rpi4 cannot be profiled from here: its latency model's per-kernel prediction is the
    profile (every layer has a row, the total is the model's whole-network prediction), and it
    reaches the pruning settings; a remote target without a latency model falls back to MACs."""
    from edgekit.bench.predict import kernels, predict_route, target_latency_model
    from edgekit.prune.recover import latency_profile
    from edgekit.recipes import load_recipe
    from edgekit.targets import load_target

    model, x = _model("dsconv_cbam")
    rpi4 = load_target("rpi4")
    cfg = load_recipe("prune30").pruning.model_copy(update={"cost": "latency"})
    kept, prof = latency_profile(model, x, cfg, rpi4, None)
    assert kept.cost == "latency" and prof is not None and prof.source == "predicted"
    assert prof.backend == "litert" and prof.label.startswith("litert (xnnpack/fp32/")
    convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)}
    assert set(prof.layers) == convs and all(t.ms > 0 for t in prof.layers.values())
    whole = predict_route(target_latency_model(rpi4), kernels(model, tuple(x.shape)), "litert",
                          "fp32", prof.threads)
    assert prof.total_ms == pytest.approx(whole["p50_ms"], rel=1e-3)
    assert prof.predict_ms(model) == pytest.approx(prof.total_ms)
    # the gates' multiplies are side time of the convolutions they scale, not of the gate convs
    gate = [n for n in convs if n.endswith("spatial.conv")]
    assert gate and all(prof.layers[n].side_ms == 0 for n in gate)
    err = capsys.readouterr().err
    assert "predicted, not measured" in err and "on litert (xnnpack/fp32/" in err

    blind = rpi4.model_copy(update={"predict": None})
    macs, none = latency_profile(model, x, cfg, blind, None)
    assert none is None and macs.cost == "macs"
    assert "falling back to the MACs cost" in capsys.readouterr().err


def test_an_expensive_group_loses_more_channels_under_the_latency_cost() -> None:
    model, x = _model()
    groups = [g for g in prunable_groups(model, x) if not g.protected and g.channels >= 32]
    hot = groups[len(groups) // 2].root  # a mid-network group, made 50x as slow as the rest
    prof = uniform_profile(model, x, {hot: 50.0}, default_ms=1.0)

    by_macs = copy.deepcopy(model)
    prune(by_macs, x, PruneSettings(target_macs=0.8))
    by_time = copy.deepcopy(model)
    out = prune(by_time, x, PruneSettings(target_time=0.8, cost="latency", profile=prof))

    w0, wm, wt = layer_widths(model), layer_widths(by_macs), layer_widths(by_time)
    assert wt[hot] < wm[hot], (w0[hot], wm[hot], wt[hot])
    assert wt[hot] >= w0[hot] * 0.25  # max_layer_ratio 0.75 still holds
    assert all(v % 8 == 0 or v == w0[k] for k, v in wt.items())  # round_to 8
    # the predicted fraction is met, and not overshot by much
    assert out.time_fraction is not None and 0.7 < out.time_fraction <= 0.8
    assert out.time_fraction == pytest.approx(prof.predict_ms(by_time) / prof.total_ms)
    assert out.cost == "latency" and out.searched and "time_fraction" in out.searched[0]


def test_protected_layers_keep_their_channels_under_the_latency_cost() -> None:
    model, x = _model()
    stem = "features.0.conv"
    prof = uniform_profile(model, x, {stem: 100.0})  # the stem is most of the time …
    pruned = copy.deepcopy(model)
    with pytest.raises(ConfigError, match="cannot reach 50% of the profiled time"):
        prune(pruned, x, PruneSettings(target_time=0.5, cost="latency", profile=prof))
    prune(pruned, x, PruneSettings(target_time=0.9, cost="latency", profile=prof))
    assert layer_widths(pruned)[stem] == layer_widths(model)[stem]  # … but it is protected


def test_settings_and_recipe_validation() -> None:
    from pydantic import ValidationError

    from edgekit.recipes import Pruning, pruning_recipe

    model, x = _model()
    with pytest.raises(ConfigError, match="exactly one"):
        PruneSettings(target_macs=0.7, target_time=0.7, cost="latency").validate()
    with pytest.raises(ConfigError, match="needs cost 'latency'"):
        PruneSettings(target_time=0.7, profile=uniform_profile(model, x)).validate()
    with pytest.raises(ConfigError, match="needs a time profile"):
        PruneSettings(target_time=0.7, cost="latency").validate()
    with pytest.raises(ValidationError, match="exactly one of target_macs, ratio and target_time"):
        Pruning(target_macs=0.7, target_time=0.7, cost="latency")
    with pytest.raises(ValidationError, match="needs cost: latency"):
        Pruning(target_time=0.7)
    rec = pruning_recipe("prune30", **{"pruning.cost": "latency", "pruning.target_time": 0.6})
    assert rec.pruning.target_time == 0.6 and rec.pruning.target_macs is None
    back = pruning_recipe(rec, **{"pruning.target_macs": 0.5})
    assert back.pruning.target_time is None and back.pruning.target_macs == 0.5


class _ScriptedTimer:
    def __init__(self, p50s: list[float]) -> None:
        self.p50s = list(p50s)

    def time_file(self, path, backend, shape, threads, protocol, options=None):
        assert Path(path).is_file()
        return {"latency_ms": {"p50": self.p50s.pop(0)}}


def _constructed_profile(monkeypatch, hot: dict[str, float] | None = None) -> None:
    """The walk's profile made constant (a real one depends on the machine's CPU: on some,
    the protected layers own so much of a 64 px model's time that 78 % is out of reach)."""
    import edgekit.prune.latency as latency

    monkeypatch.setattr(latency, "profile_openvino",
                        lambda module, example, **_: uniform_profile(module, example, hot))


def test_latency_search_with_the_latency_cost_starts_at_the_profiled_fraction(
        trained, monkeypatch) -> None:
    pytest.importorskip("openvino")
    from edgekit.prune import latency_search
    from edgekit.recipes import pruning_recipe
    from edgekit.sources import load_model
    from edgekit.targets import load_target

    _constructed_profile(monkeypatch)
    loaded = load_model(trained)
    cfg = pruning_recipe("prune30", **{"pruning.cost": "latency",
                                       "pruning.target_time": 0.7}).pruning
    # unpruned 10 ms, target 8 ms: the first candidate keeps ~0.8 × 0.97 of the profiled time
    # (not the MACs walk's 90 %, 80 % …) and is fast enough: one pruned candidate
    frac, rows = latency_search(loaded, cfg, 8.0, load_target("x86-local"), threads=1,
                                executor=_ScriptedTimer([10.0, 7.5]))
    assert len(rows) == 2 and rows[1]["cost"] == "latency"
    assert frac == pytest.approx(0.8 * 0.97 * 1.0, abs=0.2) and frac < 0.8
    assert rows[1]["predicted_time_fraction"] <= frac + 1e-9


def test_a_time_target_below_the_protected_layers_measures_the_floor_once(
        trained, monkeypatch) -> None:
    """When the protected layers (stem, classifier) own most of the predicted time, the walk
    prunes to the smallest time fraction reachable, measures it, and then stops with the
    steps it measured (instead of giving up before measuring any pruned model)."""
    pytest.importorskip("openvino")
    from edgekit.prune import latency_search
    from edgekit.prune.engine import default_protected
    from edgekit.recipes import pruning_recipe
    from edgekit.sources import load_model
    from edgekit.targets import load_target

    loaded = load_model(trained)
    x = torch.zeros(loaded.spec.input_shape(1))
    protected = default_protected(loaded.module, x)
    assert protected
    _constructed_profile(monkeypatch, {name: 100.0 for name in protected})
    cfg = pruning_recipe("prune30", **{"pruning.cost": "latency",
                                       "pruning.target_time": 0.7}).pruning
    timer = _ScriptedTimer([10.0, 9.0, 8.5])
    with pytest.raises(ConfigError, match="not reachable") as err:
        latency_search(loaded, cfg, 2.0, load_target("x86-local"), threads=1, executor=timer)
    assert "→ 9.00 ms" in str(err.value) and "8.50" not in str(err.value)
    assert timer.p50s == [8.5], "the floor is measured once, then the walk stops"


def test_cli_prune_with_the_latency_cost_records_the_profile(cli, trained, mri_phantoms,
                                                            tmp_path) -> None:
    import json

    pytest.importorskip("openvino")
    out = tmp_path / "p.pt"
    res = cli("prune", trained, "--data", mri_phantoms, "--out", out, "--target-time", "0.85",
              "--threads", "1", "--importance", "l2", "--epochs", "0",
              "--verification-images", "24", "--allow-accuracy-drop", "--json")
    data = json.loads(res.stdout)
    assert out.is_file()
    assert data["settings"]["cost"] == "latency" and data["settings"]["target_time"] == 0.85
    prof = data["latency_profile"]
    assert prof["backend"] == "openvino" and prof["threads"] == 1 and prof["layers"]
    assert 0 < data["predicted_time_fraction"] <= 0.85
    assert data["steps"][0]["cost"] == "latency"

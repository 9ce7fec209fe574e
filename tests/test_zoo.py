"""The model zoo: published sizes, training, torch.export and ONNX round trips for every model.

Model-wise tests are parametrized over ``list_models()`` so a newly registered architecture is
covered automatically. Inputs are small (64 px, batch 2) to keep the file fast on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit.errors import ConfigError
from edgekit.zoo import create_model, list_models, model_config
from edgekit.zoo.blocks import GaussianNoise

SIZE = 64  # divisible by 8, as dsconv_cbam's Flatten head requires
BATCH = 2
ONNX_OPSET = 18  # the lowest opset the torch.export-based exporter implements natively
PRUDENSNET_PUBLISHED_PARAMS = 1_461_587
FORBIDDEN_ATEN_OPS = ("adaptive_max_pool", "max_pool2d_with_indices")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # The inputs are tiny: intra-op threads buy nothing, and on a 2-core machine shared with
    # another busy process they spin against it (measured: 150x slower training steps).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates per sample: Conv2d = output elements × (in/groups) × kH × kW,
    Linear = in × out."""
    total = 0

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_sample = output.numel() // output.shape[0]
            total += per_sample * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def sample_input() -> torch.Tensor:
    return torch.rand(BATCH, 3, SIZE, SIZE)


# --- published sizes ---------------------------------------------------------------------------


def test_prudensnet_parameters_within_ten_percent_of_paper() -> None:
    count = n_params(create_model("prudensnet", input_size=256))
    assert count == 1_373_329  # the reconstruction documented in edgekit/zoo/prudensnet.py
    assert abs(count - PRUDENSNET_PUBLISHED_PARAMS) <= 0.10 * PRUDENSNET_PUBLISHED_PARAMS


def test_prudensnet_macs_match_paper() -> None:
    macs = count_macs(create_model("prudensnet"), torch.zeros(1, 3, 256, 256))
    assert macs == pytest.approx(3.69e9, rel=0.01)


def test_dsconv_cbam_parameters_exact() -> None:
    model = create_model("dsconv_cbam", input_size=224, num_classes=4)
    assert n_params(model) == 12_860_227
    assert n_params(model.trunk) == 14_527


def test_dsconv_cbam_gap_parameters_exact() -> None:
    assert n_params(create_model("dsconv_cbam_gap", num_classes=4)) == 31_555


def test_ich_mrf_parameters_and_macs_in_range() -> None:
    model = create_model("ich_mrf")
    assert 46_000 <= n_params(model) <= 170_000
    assert count_macs(model, torch.zeros(1, 3, 256, 256)) <= 400e6


def test_mobilenetv2_matches_reference_with_1000_classes() -> None:
    assert n_params(create_model("mobilenetv2", num_classes=1000)) == 3_504_872


# --- every model -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_train_step_updates_weights(name: str) -> None:
    cfg = model_config(name)
    model = create_model(name, input_size=SIZE).train()
    x = sample_input()
    if cfg.task == "multilabel":
        target = torch.randint(0, 2, (BATCH, cfg.num_classes)).float()
        loss_fn: nn.Module = nn.BCEWithLogitsLoss()
    else:
        target = torch.randint(0, cfg.num_classes, (BATCH,))
        loss_fn = nn.CrossEntropyLoss()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    logits = model(x)
    assert logits.shape == (BATCH, cfg.num_classes)
    loss = loss_fn(logits, target)
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    params = dict(model.named_parameters())
    assert not [k for k, p in params.items() if p.grad is None], "parameter outside the graph"
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    # A gate unit whose ReLU is inactive for this batch legitimately gets a zero gradient
    # (CBAM's 32 → 2 → 32 MLP can be fully inactive at init); everything else must move.
    stale = [k for k, p in params.items()
             if p.grad.abs().sum() > 0 and torch.equal(before[k], p)]
    assert not stale, f"{name}: parameters with a gradient were not updated: {stale}"
    first, *_, last = params  # the gradient reaches the input layer, and the head moved
    assert not torch.equal(before[first], params[first])
    assert not torch.equal(before[last], params[last])


@pytest.mark.parametrize("name", list_models())
def test_torch_export_matches_eager(name: str) -> None:
    model = create_model(name, input_size=SIZE).eval()
    x = sample_input()
    program = torch.export.export(model, (x,))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert not [t for t in targets if any(bad in t for bad in FORBIDDEN_ATEN_OPS)]
    with torch.no_grad():
        expected = model(x)
        actual = program.module()(x)
    assert actual.shape == (BATCH, model_config(name).num_classes)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_onnx_export_runs_in_onnxruntime(name: str, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = create_model(name, input_size=SIZE).eval()
    x = sample_input()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=ONNX_OPSET,
                      external_data=False, input_names=["input"], output_names=["logits"],
                      verbose=False)

    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17
    nodes = list(proto.graph.node)
    assert all(n.domain in ("", "ai.onnx") for n in nodes), "non-standard ONNX domain"
    assert not [n.op_type for n in nodes if "adaptive" in n.op_type.lower()]
    max_pools = [n for n in nodes if n.op_type == "MaxPool"]
    assert all(len(n.output) == 1 for n in max_pools), "MaxPool with indices"
    # every MaxPool in the graph is one of the model's nn.MaxPool2d layers, nothing derived
    assert len(max_pools) == sum(isinstance(m, nn.MaxPool2d) for m in model.modules())

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-4


@pytest.mark.parametrize("name", list_models())
def test_no_adaptive_max_pool_modules(name: str) -> None:
    model = create_model(name, input_size=SIZE)
    assert not [m for m in model.modules() if isinstance(m, nn.AdaptiveMaxPool2d)]


# --- errors and blocks -------------------------------------------------------------------------


def test_unknown_model_names_known_models() -> None:
    with pytest.raises(ConfigError, match="Known models") as info:
        create_model("resnet-9000")
    for name in list_models():
        assert name in str(info.value)


def test_dsconv_cbam_rejects_size_not_divisible_by_8() -> None:
    with pytest.raises(ConfigError, match="divisible by 8"):
        create_model("dsconv_cbam", input_size=100)
    with pytest.raises(ValueError, match="divisible by 8"):
        create_model("dsconv_cbam", input_size=100)
    assert create_model("dsconv_cbam_gap", input_size=100) is not None


def test_gaussian_noise_only_in_training() -> None:
    noise = GaussianNoise(0.1)
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(noise.eval()(x), x)
    perturbed = noise.train()(x)
    assert not torch.equal(perturbed, x)
    assert (perturbed - x).std().item() == pytest.approx(0.1, rel=0.1)

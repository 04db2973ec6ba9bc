"""PMPDNet: parameter counts computed independently, output shapes, torchvision weight loading."""

from __future__ import annotations

import pytest
import torch

from inference.pmpd.model import (
    ModelConfig,
    PMPDNet,
    adapt_first_conv,
    autocast_context,
    fuse_batchnorm,
    load_pretrained,
    model_summary,
)

# torchvision's ResNet50 has 25,557,032 parameters; its 1000-class fc layer holds
# 2048 * 1000 + 1000 = 2,049,000 of them, so the convolutional trunk has 23,508,032.
TORCHVISION_RESNET50 = 25_557_032
TORCHVISION_RESNET50_FC = 2048 * 1000 + 1000
# With 2 input channels instead of 3, conv1 (64 x C x 7 x 7, no bias) loses 64 * 7 * 7 weights.
BACKBONE_2CH = TORCHVISION_RESNET50 - TORCHVISION_RESNET50_FC - 64 * 7 * 7
assert BACKBONE_2CH == 23_504_896


def head_parameters(channels: tuple[int, ...], reduction: int, hidden: int, sites: int) -> int:
    """SE units (two linear layers with bias each), 4 gates, the MLP and the two heads."""
    se = sum(c * (c // reduction) + c // reduction + (c // reduction) * c + c for c in channels)
    fused = sum(channels)
    return se + len(channels) + fused * hidden + hidden + (hidden + 1) + (hidden * sites + sites)


@pytest.mark.slow
def test_resnet50_parameter_count_and_shapes_at_224():
    model = PMPDNet(ModelConfig(depth=50, input_size=224))
    summary = model_summary(model)
    assert summary.backbone_parameters == BACKBONE_2CH
    expected_heads = head_parameters((256, 512, 1024, 2048), 16, 512, 4)
    assert expected_heads == 2_669_561
    assert summary.head_parameters == expected_heads
    assert summary.total_parameters == 26_174_457 == BACKBONE_2CH + expected_heads
    assert "26,174,457" in str(summary)
    model.eval()
    with torch.inference_mode():
        output = model(torch.rand(2, 2, 224, 224))
    assert output.metastasis_logit.shape == (2,)
    assert output.site_logits.shape == (2, 4)
    maps = model.block_features(torch.rand(1, 2, 224, 224))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (256, 56, 56),
        (512, 28, 28),
        (1024, 14, 14),
        (2048, 7, 7),
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("depth", "channels"), [(10, 512), (18, 512), (34, 512)])
def test_smaller_depths_at_small_input(depth, channels):
    model = PMPDNet(ModelConfig(depth=depth, input_size=64)).eval()
    assert model.config.block_channels[-1] == channels
    with torch.inference_mode():
        output = model(torch.rand(3, 2, 64, 64))
    assert output.metastasis_logit.shape == (3,)
    assert output.site_logits.shape == (3, 4)


@pytest.mark.slow
def test_gates_start_at_one_half_and_are_learnable():
    model = PMPDNet(ModelConfig(depth=10, input_size=64))
    assert torch.allclose(model.gates, torch.full((4,), 0.5))
    assert model.gate_parameters.requires_grad
    output = model(torch.rand(2, 2, 64, 64))
    output.metastasis_logit.sum().backward()
    assert model.gate_parameters.grad is not None
    assert model.gate_parameters.grad.abs().sum() > 0


@pytest.mark.slow
def test_first_conv_matches_torchvision_geometry():
    conv = PMPDNet(ModelConfig(depth=50)).backbone.conv1
    assert conv.kernel_size == (7, 7) and conv.stride == (2, 2) and conv.padding == (3, 3)
    assert conv.bias is None and conv.in_channels == 2


def torchvision_resnet50_state_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's resnet50().state_dict(), written from its architecture."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def batch_norm(prefix: str, channels: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    batch_norm("bn1", 64)
    in_planes = 64
    stages = zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)
    for layer, (planes, blocks) in enumerate(stages, start=1):
        for block in range(blocks):
            prefix = f"layer{layer}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (planes, in_planes, 1, 1)
            batch_norm(f"{prefix}.bn1", planes)
            shapes[f"{prefix}.conv2.weight"] = (planes, planes, 3, 3)
            batch_norm(f"{prefix}.bn2", planes)
            shapes[f"{prefix}.conv3.weight"] = (planes * 4, planes, 1, 1)
            batch_norm(f"{prefix}.bn3", planes * 4)
            if block == 0:
                shapes[f"{prefix}.downsample.0.weight"] = (planes * 4, in_planes, 1, 1)
                batch_norm(f"{prefix}.downsample.1", planes * 4)
            in_planes = planes * 4
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return shapes


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    shapes = torchvision_resnet50_state_shapes()
    learnable = sum(
        torch.Size(s).numel()
        for k, s in shapes.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert learnable == TORCHVISION_RESNET50  # the hand-written layout is torchvision's
    generator = torch.Generator().manual_seed(3)
    state = {
        key: torch.tensor(7) if shape == () else torch.randn(shape, generator=generator)
        for key, shape in shapes.items()
    }
    path = tmp_path_factory.mktemp("weights") / "resnet50_imagenet.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.slow
def test_torchvision_resnet50_weights_load_with_two_channel_first_conv(torchvision_file):
    path, state = torchvision_file
    model = PMPDNet(ModelConfig(depth=50))
    report = load_pretrained(model, path)
    assert report.loaded == len(state) - 2  # everything but fc.weight and fc.bias
    assert report.ignored == ("fc.bias", "fc.weight")
    assert report.first_conv_adapted_from == 3
    backbone = model.backbone
    rgb = state["conv1.weight"]
    assert torch.equal(backbone.conv1.weight[:, 0], rgb.mean(dim=1))
    assert torch.equal(backbone.conv1.weight[:, 1], rgb.mean(dim=1))
    assert torch.equal(backbone.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])
    assert torch.equal(
        backbone.layer4[0].downsample[0].weight, state["layer4.0.downsample.0.weight"]
    )
    assert torch.equal(
        backbone.layer1[0].downsample[1].running_var, state["layer1.0.downsample.1.running_var"]
    )
    assert torch.equal(backbone.bn1.bias, state["bn1.bias"])


@pytest.mark.slow
def test_weights_of_another_depth_are_refused(torchvision_file):
    path, _ = torchvision_file
    with pytest.raises(ValueError, match="does not fit a ResNet18"):
        load_pretrained(PMPDNet(ModelConfig(depth=18, input_size=64)), path)


def test_adapt_first_conv_averages_rgb():
    weight = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    adapted = adapt_first_conv(weight, 2)
    assert adapted.shape == (2, 2, 2, 2)
    assert torch.equal(adapted[:, 1], weight.mean(dim=1))


def test_autocast_only_on_request_on_cpu():
    cpu = torch.device("cpu")
    with autocast_context(cpu):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context(cpu, bf16_on_cpu=True):
        assert torch.is_autocast_enabled("cpu")
    with autocast_context(cpu, bf16_on_cpu=True, enabled=False):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_automatic_bf16_on_cpu_follows_the_cpu(monkeypatch, native):
    from inference.pmpd import model as model_module

    monkeypatch.setattr(model_module, "cpu_has_native_bf16", lambda: native)
    with autocast_context(torch.device("cpu"), bf16_on_cpu=None):
        assert torch.is_autocast_enabled("cpu") is native
    with autocast_context(torch.device("cpu"), bf16_on_cpu=False):
        assert not torch.is_autocast_enabled("cpu")


def test_native_bf16_is_read_from_the_cpu_flags():
    from pathlib import Path

    from inference.pmpd.model import cpu_has_native_bf16

    flags = next(
        (
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        ),
        "",
    ).split()
    assert cpu_has_native_bf16() is bool({"avx512_bf16", "amx_bf16"} & set(flags))


def test_invalid_configuration_is_refused():
    with pytest.raises(ValueError, match="depth"):
        ModelConfig(depth=42)
    with pytest.raises(ValueError, match="input_size"):
        ModelConfig(input_size=16)


def test_package_exports_resolve_lazily():
    import inference.pmpd as pmpd
    from inference.pmpd.predict import score_patient

    assert pmpd.score_patient is score_patient
    for name in pmpd.__all__:
        assert getattr(pmpd, name) is not None
    with pytest.raises(AttributeError):
        pmpd.not_a_name  # noqa: B018


@pytest.mark.slow
def test_fused_batchnorm_scores_the_same_without_any_batchnorm_left():
    torch.manual_seed(0)
    model = PMPDNet(ModelConfig(depth=18, input_size=64))
    # Non-trivial running statistics, as after training.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    images = torch.randn(3, 2, 64, 64)
    with torch.inference_mode():
        before = model(images)
    n_batchnorm = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert n_batchnorm == n_conv  # every convolution of the ResNet is followed by a norm
    fuse_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.inference_mode():
        after = model(images)
    torch.testing.assert_close(
        after.metastasis_logit, before.metastasis_logit, atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(after.site_logits, before.site_logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        fuse_batchnorm(PMPDNet(ModelConfig(depth=10, input_size=64)))

"""PMPDNet: a MONAI ResNet on two-channel CT+mask patches with gated, SE-weighted multi-block
feature fusion, a binary metastasis head and a metastasis-site head (PMPD_METHOD.md, "Model").

The backbone is ``monai.networks.nets.ResNet`` built so that its parameters have the names and
shapes of torchvision's ResNet (7x7 stride-2 first convolution, 1x1 convolution + BatchNorm
shortcuts without bias), so an ImageNet state dict in torchvision's layout loads into it with
``load_pretrained``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
from monai.networks.nets import ResNet
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)

SITE_NAMES: tuple[str, ...] = ("none", "liver", "lung", "peritoneum")

# depth -> (MONAI block type, blocks per stage, channels out of layer1..layer4)
_RESNET_LAYOUTS: dict[int, tuple[str, list[int], tuple[int, int, int, int]]] = {
    10: ("basic", [1, 1, 1, 1], (64, 128, 256, 512)),
    18: ("basic", [2, 2, 2, 2], (64, 128, 256, 512)),
    34: ("basic", [3, 4, 6, 3], (64, 128, 256, 512)),
    50: ("bottleneck", [3, 4, 6, 3], (256, 512, 1024, 2048)),
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of PMPDNet; stored in every checkpoint's model card.

    Attributes:
        depth: ResNet depth, 10/18/34/50 (paper: 50).
        input_size: side of the square input in pixels (open: 224). The network pools
            globally, so this only validates inputs and sizes FLOP counts.
        in_channels: 2 (windowed CT, expanded mask).
        se_reduction: Squeeze-and-Excitation bottleneck ratio (the SE paper's 16).
        gate_init: initial value of each block's gate parameter; the gate is
            sigmoid(parameter), so 0.0 starts every block at weight 0.5 and lets training move
            it freely in (0, 1) without a block ever being switched off exactly.
        classifier_hidden: width of the fused-feature MLP before the two heads.
        dropout: dropout in that MLP.
        n_sites: outputs of the site head: none, liver, lung, peritoneum. Open point (multi-label
            vs multi-class): a patient can have several sites, so each output is an independent
            sigmoid (multi-label), trained with binary cross-entropy per site.
    """

    depth: int = 50
    input_size: int = 224
    in_channels: int = 2
    se_reduction: int = 16
    gate_init: float = 0.0
    classifier_hidden: int = 512
    dropout: float = 0.3
    n_sites: int = len(SITE_NAMES)

    def __post_init__(self) -> None:
        if self.depth not in _RESNET_LAYOUTS:
            raise ValueError(f"depth must be one of {sorted(_RESNET_LAYOUTS)}, not {self.depth}")
        if self.input_size < 32:
            raise ValueError("input_size must be at least 32 (five stride-2 stages)")

    @property
    def block_channels(self) -> tuple[int, int, int, int]:
        """Channels out of layer1..layer4 (256/512/1024/2048 for ResNet50)."""
        return _RESNET_LAYOUTS[self.depth][2]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        return cls(**values)


class PMPDOutput(NamedTuple):
    """Raw network outputs: logits, not probabilities."""

    metastasis_logit: torch.Tensor  # [batch]
    site_logits: torch.Tensor  # [batch, n_sites]


class SqueezeExcitation(nn.Module):
    """SE unit on a pooled feature vector: channel weights sigmoid(W2 relu(W1 v)) times v.

    The "squeeze" is the global average pooling already done on the block's output, so the unit
    works on the pooled vector directly.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.reduce = nn.Linear(channels, hidden)
        self.expand = nn.Linear(hidden, channels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.expand(torch.relu(self.reduce(pooled))))
        return pooled * weights


class PMPDNet(nn.Module):
    """ResNet features of layer1..layer4, each pooled, SE-re-weighted and gated, concatenated,
    then an MLP feeding a binary metastasis head (1 logit) and a site head (4 logits)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        block, layers, channels = _RESNET_LAYOUTS[self.config.depth]
        self.backbone = ResNet(
            block=block,
            layers=layers,
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=2,
            n_input_channels=self.config.in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            bias_downsample=False,
            feed_forward=False,
        )
        self.squeeze_excitation = nn.ModuleList(
            SqueezeExcitation(c, self.config.se_reduction) for c in channels
        )
        self.gate_parameters = nn.Parameter(torch.full((4,), float(self.config.gate_init)))
        fused = sum(channels)
        self.classifier = nn.Sequential(
            nn.Linear(fused, self.config.classifier_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(self.config.dropout),
        )
        self.metastasis_head = nn.Linear(self.config.classifier_hidden, 1)
        self.site_head = nn.Linear(self.config.classifier_hidden, self.config.n_sites)

    @property
    def gates(self) -> torch.Tensor:
        """Each block's influence in (0, 1): sigmoid of its learnable gate parameter."""
        return torch.sigmoid(self.gate_parameters)

    def block_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps out of layer1..layer4 (the last one is Grad-CAM's target)."""
        net = self.backbone
        x = net.maxpool(net.act(net.bn1(net.conv1(x))))
        maps = []
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> PMPDOutput:
        gates = self.gates
        fused = torch.cat(
            [
                se(feature_map.mean(dim=(2, 3))) * gates[index]
                for index, (se, feature_map) in enumerate(
                    zip(self.squeeze_excitation, self.block_features(x), strict=True)
                )
            ],
            dim=1,
        )
        hidden = self.classifier(fused)
        return PMPDOutput(
            metastasis_logit=self.metastasis_head(hidden).squeeze(1),
            site_logits=self.site_head(hidden),
        )


@dataclass(frozen=True)
class ModelSummary:
    """Parameter counts of a PMPDNet, printed as a short table."""

    depth: int
    input_size: int
    block_channels: tuple[int, int, int, int]
    backbone_parameters: int
    head_parameters: int
    total_parameters: int
    trainable_parameters: int

    def __str__(self) -> str:
        return (
            f"PMPDNet ResNet{self.depth} at {self.input_size}x{self.input_size}, "
            f"blocks {self.block_channels}\n"
            f"  backbone   {self.backbone_parameters:>12,d}\n"
            f"  fusion+heads {self.head_parameters:>10,d}\n"
            f"  total      {self.total_parameters:>12,d} ({self.trainable_parameters:,d} trainable)"
        )


def _count(parameters: Iterator[nn.Parameter]) -> int:
    return sum(p.numel() for p in parameters)


def model_summary(model: PMPDNet) -> ModelSummary:
    """Parameter counts of the backbone, the fusion and heads, and the whole model."""
    backbone = _count(model.backbone.parameters())
    total = _count(model.parameters())
    return ModelSummary(
        depth=model.config.depth,
        input_size=model.config.input_size,
        block_channels=model.config.block_channels,
        backbone_parameters=backbone,
        head_parameters=total - backbone,
        total_parameters=total,
        trainable_parameters=_count(p for p in model.parameters() if p.requires_grad),
    )


@dataclass(frozen=True)
class PretrainedReport:
    """What ``load_pretrained`` did: tensors loaded, keys ignored, first-conv adaptation."""

    loaded: int
    ignored: tuple[str, ...]
    first_conv_adapted_from: int


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn an RGB first-convolution kernel [64, 3, k, k] into ``in_channels`` input channels.

    Each new channel gets the mean of the RGB kernels: a grey image then excites the filter as
    it did in colour (up to a constant factor that the following BatchNorm absorbs during
    fine-tuning), and neither the CT nor the mask channel is favoured at the start.
    """
    if weight.shape[1] == in_channels:
        return weight.clone()
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)


def load_pretrained(model: PMPDNet, path: str | Path) -> PretrainedReport:
    """Load a local torchvision-style ResNet state dict (e.g. ImageNet weights) into the backbone.

    Keys are torchvision's (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
    ``layer1.0.downsample.0.weight``...); ``fc.*`` is ignored (PMPD has its own heads). The
    first convolution is adapted from 3 to 2 input channels by ``adapt_first_conv``. Any
    backbone tensor missing from the file, or of another shape, is an error: a silently partial
    load would train from a mix of pretrained and random weights.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    target = model.backbone.state_dict()
    ignored = tuple(sorted(k for k in state if k.startswith("fc.") or k not in target))
    new_state: dict[str, torch.Tensor] = {}
    original_channels = model.config.in_channels
    problems = []
    for key, expected in target.items():
        if key not in state:
            problems.append(f"missing {key}")
            continue
        value = state[key]
        if key == "conv1.weight":
            original_channels = int(value.shape[1])
            value = adapt_first_conv(value, model.config.in_channels)
        if tuple(value.shape) != tuple(expected.shape):
            problems.append(f"{key}: file {tuple(value.shape)} vs model {tuple(expected.shape)}")
            continue
        new_state[key] = value.to(expected.dtype)
    if problems:
        raise ValueError(
            f"{path} does not fit a ResNet{model.config.depth} backbone: "
            + "; ".join(problems[:10])
        )
    model.backbone.load_state_dict(new_state)
    return PretrainedReport(
        loaded=len(new_state), ignored=ignored, first_conv_adapted_from=original_channels
    )


def select_device(preference: str = "auto") -> torch.device:
    """CUDA when present (``auto``), else CPU; or exactly the device asked for."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def prepare_model(model: ModuleT, device: torch.device, *, channels_last: bool = True) -> ModuleT:
    """Move a model to ``device``, in channels_last memory format when asked (fastest for
    convolutions on tensor cores and on oneDNN)."""
    model.to(device)  # modules move in place
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that follows a convolution into that convolution's
    weights and bias, in place, and return the model (for inference only: the model must be
    in eval mode and stay there).

    The output is the same up to float rounding; each fused BatchNorm becomes ``nn.Identity``,
    which saves one pass over every activation map: about a fifth of ResNet50's CPU time.
    Pairs are found by name, as MONAI's ResNet lays them out: ``convN`` with ``bnN`` in the
    stem and the bottlenecks, and ``downsample`` = Sequential(conv, norm).
    """
    if model.training:
        raise ValueError("fuse_batchnorm needs a model in eval mode")
    for module in list(model.modules()):
        children = dict(module.named_children())
        pairs = [
            (name, "bn" + name.removeprefix("conv")) for name in children if name.startswith("conv")
        ]
        if isinstance(module, nn.Sequential):
            pairs += [(str(i), str(i + 1)) for i in range(len(module) - 1)]
        for conv_name, bn_name in pairs:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
                continue
            if bn.running_mean is None or bn.running_var is None:
                continue
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
            setattr(module, conv_name, fused)
            setattr(module, bn_name, nn.Identity())
    return model


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo).

    Without either, bf16 autocast on CPU measured slower than fp32 (an AVX2 machine); with
    AVX512-BF16 it scored a patient 1.7x faster than fp32 (tests/bench/bench_inference_cpu.py).
    False where /proc/cpuinfo cannot be read (not Linux).
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def autocast_context(
    device: torch.device, *, bf16_on_cpu: bool | None = False, enabled: bool = True
) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; on CPU when asked (``bf16_on_cpu`` True) or, with None, when the
    CPU has native bf16 (``cpu_has_native_bf16``); nothing when ``enabled`` is False (fp32
    throughout, e.g. as a benchmark baseline)."""
    if bf16_on_cpu is None:
        bf16_on_cpu = cpu_has_native_bf16()
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and device.type == "cpu" and bf16_on_cpu:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_model(
    config: ModelConfig | None = None, *, pretrained_weights: str | None = None
) -> PMPDNet:
    """A fresh PMPDNet; with ImageNet-style weights in the backbone when a file is given,
    trained from scratch otherwise."""
    model = PMPDNet(config)
    if pretrained_weights:
        load_pretrained(model, pretrained_weights)
    return model

"""Built-in backbones in plain torch (no torchvision): a tiny conv net, ResNets and MobileNetV2.

- ``tiny``: four 3x3 conv blocks, for digits, tests and quick runs.
- ``resnet18``, ``resnet34``: ResNet (He et al., 2016, Table 1) with basic blocks.
- ``resnet50``: ResNet with bottleneck blocks, the stride on the 3x3 conv (torchvision's "v1.5").
- ``mobilenetv2``: MobileNetV2 (Sandler et al., 2018, Table 2) with a width multiplier; 64-224 px inputs.

The ResNets and MobileNetV2 have exactly torchvision's state-dict names and shapes without the classifier
(``fc.*``, ``classifier.*``), so torchvision checkpoints load unchanged (``load_backbone_weights``).
"""

from __future__ import annotations

import torch
from torch import nn

from edgedml.models.registry import backbones


def _conv_bn(
    in_ch: int,
    out_ch: int,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] = nn.ReLU,
    kernel: int = 3,
) -> nn.Sequential:
    """conv -> BatchNorm -> activation, as ``.0``, ``.1``, ``.2`` (torchvision's Conv2dNormActivation names)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        act(inplace=True),
    )


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions (fan out), BatchNorm weight 1 and bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class TinyConvNet(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        widths = [width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(widths):
            layers.append(_conv_bn(in_ch, out_ch))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_ch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(images)).flatten(1)


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """Expand (1x1, unless ``expand`` is 1) -> depthwise 3x3 -> linear 1x1 projection, all under ``conv``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int):
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(in_ch, hidden, act=nn.ReLU6, kernel=1))
        layers += [
            _conv_bn(hidden, hidden, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


# (expansion t, channels c, repeats n, first stride s), from the MobileNetV2 paper, Table 2.
MOBILENETV2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """``features.0`` the stem, ``features.1-17`` the inverted residuals, ``features.18`` the 1x1 head conv."""

    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        in_ch = _make_divisible(32 * width_mult)
        self.num_features = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn(3, in_ch, stride=2, act=nn.ReLU6)]
        for expand, channels, repeats, stride in MOBILENETV2_STAGES:
            out_ch = _make_divisible(channels * width_mult)
            for i in range(repeats):
                layers.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, expand))
                in_ch = out_ch
        layers.append(_conv_bn(in_ch, self.num_features, act=nn.ReLU6, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        _init_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(images)).flatten(1)


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    """The 1x1 projection shortcut (``downsample.0/1``) where the block changes resolution or width."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carrying the stride) -> 1x1 expand by 4 (ResNet-50)."""

    expansion = 4

    def __init__(self, in_ch: int, channels: int, stride: int):
        super().__init__()
        out_ch = channels * self.expansion
        self.conv1 = nn.Conv2d(in_ch, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


class ResNet(nn.Module):
    """Stem (``conv1``, ``bn1``, max pool), ``layer1-4`` of ``blocks_per_stage`` blocks, global average pool."""

    def __init__(self, block: type[BasicBlock | Bottleneck], blocks_per_stage: tuple[int, int, int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for index, (channels, count) in enumerate(zip((64, 128, 256, 512), blocks_per_stage, strict=True)):
            stride = 1 if index == 0 else 2
            blocks = [block(in_ch, channels, stride)]
            in_ch = channels * block.expansion
            blocks += [block(in_ch, channels, 1) for _ in range(count - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_ch
        _init_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


@backbones.register("resnet18")
def resnet18() -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2))


@backbones.register("resnet34")
def resnet34() -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3))


@backbones.register("resnet50")
def resnet50() -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3))


backbones.register("tiny")(TinyConvNet)
backbones.register("mobilenetv2")(MobileNetV2)

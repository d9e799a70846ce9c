"""Built-in backbones in plain torch (no torchvision): a tiny conv net and two mobile-class networks.

- ``tiny``: four 3x3 conv blocks, for digits, tests and quick runs.
- ``mobilenetv2``: MobileNetV2 (Sandler et al., 2018) with a width multiplier; 64-224 px inputs.
- ``resnet18``: ResNet-18 (He et al., 2016) with basic blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from edgedml.models.registry import backbones


def _conv_bn(
    in_ch: int, out_ch: int, stride: int = 1, groups: int = 1, act: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(out_ch), act(inplace=True)
    )


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
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int):
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            _conv_bn(hidden, hidden, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


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
        layers += [
            nn.Conv2d(in_ch, self.num_features, 1, bias=False),
            nn.BatchNorm2d(self.num_features),
            nn.ReLU6(inplace=True),
        ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(images)).flatten(1)


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(in_ch, out_ch, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        stages, in_ch = [], 64
        for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1)]
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 512
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(images))).flatten(1)


backbones.register("tiny")(TinyConvNet)
backbones.register("mobilenetv2")(MobileNetV2)
backbones.register("resnet18")(ResNet18)

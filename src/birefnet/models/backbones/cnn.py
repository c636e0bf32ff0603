"""VGG16, VGG16-BN and ResNet-50 encoders with torchvision's layer indices.

The official BiRefNet cuts torchvision's layer lists into four stages named ``conv1`` .. ``conv4``
(slicing an ``nn.Sequential`` keeps the original indices, so keys read ``conv2.10.weight``). We
build the same module trees ourselves (torchvision cannot be a dependency here), so official
checkpoints load strictly, and torchvision ImageNet files load through
:meth:`Backbone.remap_pretrained_key` (``features.10.weight`` -> ``conv2.10.weight``,
``layer2.0.conv1.weight`` -> ``conv2.0.conv1.weight``, ...).
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from birefnet.models.backbones.base import Backbone

__all__ = ["VGG", "ResNet50", "resnet50", "vgg16", "vgg16bn"]

# torchvision's VGG16 layer list ("M" = 2x2 max-pool).
_VGG16_LAYOUT: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


def _vgg_features(batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, int(item), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(item)))
        layers.append(nn.ReLU(inplace=True))
        channels = int(item)
    return layers


def _indexed_sequential(layers: list[nn.Module], start: int, stop: int) -> nn.Sequential:
    """``nn.Sequential`` of ``layers[start:stop]`` keeping the original indices as child names."""
    return nn.Sequential(OrderedDict((str(i), layers[i]) for i in range(start, stop)))


class VGG(Backbone):
    """VGG16 (optionally with BatchNorm) cut into four stages after each of the last four pools.

    ``features[:10] / [10:17] / [17:24] / [24:31]`` (plain) or ``[:14] / [14:24] / [24:34] /
    [34:44]`` (BN); the first stage includes the first two pools (stride 4) and the final
    max-pool is kept, so the strides are 4, 8, 16, 32 with 128, 256, 512, 512 channels.

    Args:
        batch_norm: VGG16-BN instead of VGG16.
    """

    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        self.out_channels = (128, 256, 512, 512)
        layers = _vgg_features(batch_norm)
        self._bounds = (0, 14, 24, 34, 44) if batch_norm else (0, 10, 17, 24, 31)
        for i in range(4):
            self.add_module(f"conv{i + 1}", _indexed_sequential(layers, self._bounds[i], self._bounds[i + 1]))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x ``(B, 3, H, W)``. Returns four NCHW maps (strides 4, 8, 16, 32)."""
        x1 = self.conv1(x)
        x2 = self.conv2(x1)
        x3 = self.conv3(x2)
        x4 = self.conv4(x3)
        return [x1, x2, x3, x4]

    def remap_pretrained_key(self, key: str) -> str | None:
        """torchvision ``features.N.*`` -> ``conv{stage}.N.*``; the classifier is dropped."""
        match = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        if match is None:
            return None
        index = int(match.group(1))
        for stage in range(4):
            if self._bounds[stage] <= index < self._bounds[stage + 1]:
                return f"conv{stage + 1}.{index}.{match.group(2)}"
        return None


class Bottleneck(nn.Module):
    """torchvision ResNet v1.5 bottleneck: 1x1 -> 3x3 (stride here) -> 1x1 (x4), plus shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def _res_layer(in_channels: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(in_channels, planes, stride)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50(Backbone):
    """ResNet-50: ``conv1`` = stem (conv, bn, relu, max-pool) + layer1, ``conv2..4`` = layer2..4.

    Strides 4, 8, 16, 32 with 256, 512, 1024, 2048 channels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.out_channels = (256, 512, 1024, 2048)
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            _res_layer(64, 64, 3, stride=1),
        )
        self.conv2 = _res_layer(256, 128, 4, stride=2)
        self.conv3 = _res_layer(512, 256, 6, stride=2)
        self.conv4 = _res_layer(1024, 512, 3, stride=2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x ``(B, 3, H, W)``. Returns four NCHW maps (strides 4, 8, 16, 32)."""
        x1 = self.conv1(x)
        x2 = self.conv2(x1)
        x3 = self.conv3(x2)
        x4 = self.conv4(x3)
        return [x1, x2, x3, x4]

    def remap_pretrained_key(self, key: str) -> str | None:
        """torchvision names -> ours: ``conv1``/``bn1`` -> ``conv1.0``/``conv1.1``,
        ``layer1`` -> ``conv1.4``, ``layer2..4`` -> ``conv2..4``; ``fc`` is dropped."""
        head, _, rest = key.partition(".")
        mapping = {
            "conv1": "conv1.0",
            "bn1": "conv1.1",
            "layer1": "conv1.4",
            "layer2": "conv2",
            "layer3": "conv3",
            "layer4": "conv4",
        }
        return f"{mapping[head]}.{rest}" if head in mapping and rest else None


def vgg16() -> VGG:
    """VGG16 without BatchNorm (official ``vgg16``)."""
    return VGG(batch_norm=False)


def vgg16bn() -> VGG:
    """VGG16 with BatchNorm (official ``vgg16bn``)."""
    return VGG(batch_norm=True)


def resnet50() -> ResNet50:
    """ResNet-50 (official ``resnet50``)."""
    return ResNet50()

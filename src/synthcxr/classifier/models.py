"""Classifier networks, written from scratch (no torchvision), plus the resolution-agnostic wrapper.

Both backbones expose ``features(x) -> [N, F]`` (after global average pooling) and a linear ``head``,
so the same network serves as a pathology classifier and as the domain feature extractor of the
distribution metrics. Architectures are rebuilt from a JSON-able ``arch`` dict, which is what makes a
saved model loadable with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..imaging import resize_batch


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """A VGG-style CNN small enough to train on a laptop CPU at 64 px.

    ``n_stages`` stages each halve the resolution; channels double per stage from ``width`` up to
    ``8 * width``. The first stage has one convolution (it runs at full resolution, where compute is
    dearest), the others two.
    """

    def __init__(self, n_out: int, in_ch: int = 1, width: int = 32, n_stages: int = 4, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_ch
        for i in range(n_stages):
            c = width * 2 ** min(i, 3)
            layers += _conv_bn_relu(c_in, c)
            if i > 0:
                layers += _conv_bn_relu(c, c)
            layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.n_features = c_in
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(c_in, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        """Logits from :meth:`features`' output."""
        return self.head(self.dropout(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (bottleneck to ``bn_size * growth``) then BN-ReLU-Conv3x3 to ``growth`` maps."""

    def __init__(self, c_in: int, growth: int, bn_size: int, drop_rate: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        if self.drop_rate > 0:
            y = F.dropout(y, p=self.drop_rate, training=self.training)
        return torch.cat([x, y], 1)


class _Transition(nn.Module):
    """BN-ReLU-Conv1x1 halving the channels, then 2x2 average pooling."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.norm(x))), 2)


class DenseNet121(nn.Module):
    """DenseNet-BC (Huang et al. 2017) with the DenseNet-121 layout, as used by CheXNet.

    Stem: 7x7/2 convolution to ``2 * growth`` maps, 3x3/2 max-pool; four dense blocks of
    ``blocks`` layers joined by compressing transitions; final BN-ReLU and global average pooling.
    With ``in_ch=3, n_out=1000`` it has exactly the 7,978,856 parameters of the reference model.
    """

    def __init__(
        self,
        n_out: int,
        in_ch: int = 1,
        growth: int = 32,
        blocks: Sequence[int] = (6, 12, 24, 16),
        bn_size: int = 4,
        init_features: int = 64,
        compression: float = 0.5,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_ch, init_features, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(init_features),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        c = init_features
        for b, n_layers in enumerate(blocks):
            block = []
            for _ in range(n_layers):
                block.append(_DenseLayer(c, growth, bn_size, drop_rate))
                c += growth
            stages.append(nn.Sequential(*block))
            if b < len(blocks) - 1:
                c_next = int(math.floor(c * compression))
                stages.append(_Transition(c, c_next))
                c = c_next
        self.blocks = nn.Sequential(*stages)
        self.norm_final = nn.BatchNorm2d(c)
        self.n_features = c
        self.head = nn.Linear(c, n_out)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm_final(self.blocks(self.stem(x))))
        return torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        """Logits from :meth:`features`' output."""
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


ARCHS = ("small_cnn", "densenet121")


def build_network(arch: dict) -> nn.Module:
    """Backbone from its JSON-able description ``{"name": ..., "n_out": ..., **kwargs}``."""
    kw = dict(arch)
    name = kw.pop("name", None)
    if name == "small_cnn":
        return SmallCNN(**kw)
    if name == "densenet121":
        if "blocks" in kw:
            kw["blocks"] = tuple(kw["blocks"])
        return DenseNet121(**kw)
    raise ValueError(f"unknown classifier architecture {name!r}; expected one of {', '.join(ARCHS)}")


def default_arch(name: str, n_out: int, input_res: int, width: int = 32) -> dict:
    """The ``arch`` dict for a config: SmallCNN depth follows the input resolution (down to ~4 px)."""
    if name == "small_cnn":
        n_stages = max(1, min(5, int(math.log2(input_res)) - 2))
        return {"name": "small_cnn", "n_out": n_out, "in_ch": 1, "width": width, "n_stages": n_stages}
    if name == "densenet121":
        return {"name": "densenet121", "n_out": n_out, "in_ch": 1, "growth": 32, "blocks": [6, 12, 24, 16], "bn_size": 4}
    raise ValueError(f"classifier.arch: unknown architecture {name!r}; expected one of {', '.join(ARCHS)}")


class Classifier(nn.Module):
    """Multi-label pathology classifier over ``label_names`` that accepts images of any resolution.

    Inputs are float ``[N, 1, H, W]`` in [-1, 1]; they are resized to ``input_res`` inside the module
    with :func:`synthcxr.imaging.resize_batch`, which is differentiable, so latent class optimisation can
    back-propagate from the logits to a generator's output at its own resolution.
    """

    def __init__(self, arch: dict, label_names: Sequence[str], input_res: int):
        super().__init__()
        if arch.get("n_out") != len(label_names):
            raise ValueError(f"arch n_out={arch.get('n_out')} but {len(label_names)} label names given")
        self.arch = dict(arch)
        self.label_names = list(label_names)
        self.input_res = int(input_res)
        self.net = build_network(arch)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"Classifier expects [N, 1, H, W] images, got shape {tuple(x.shape)}")
        return resize_batch(x, self.input_res)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, L]`` (apply a sigmoid for per-label probabilities)."""
        return self.net(self._prepare(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``[N, F]`` after global pooling (for FID-style metrics)."""
        return self.net.features(self._prepare(x))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [N, L], features [N, F])`` from one forward (LCO's realism gate reads both)."""
        f = self.net.features(self._prepare(x))
        return self.net.classify(f), f

    @property
    def n_features(self) -> int:
        return int(self.net.n_features)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

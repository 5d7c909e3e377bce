"""Building blocks of the Progressive GAN (Karras et al. 2018), written for grayscale X-rays.

Equalised learning rate keeps every layer's effective step size the same under Adam: weights are
stored as N(0, 1) and multiplied at run time by the He constant ``gain / sqrt(fan_in)``, so a layer
with a large fan-in is not updated more slowly than a small one. Pixel normalisation keeps the
generator's feature magnitudes from escalating, and the minibatch standard-deviation feature lets
the critic see a lack of variety across samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


class EqualizedLinear(nn.Module):
    """Fully connected layer with run-time He scaling (``gain / sqrt(in_features)``)."""

    def __init__(self, in_features: int, out_features: int, gain: float = SQRT2, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        o, i = self.weight.shape
        return f"in={i}, out={o}, scale={self.scale:.4g}"


class EqualizedConv2d(nn.Module):
    """Square convolution (stride 1, 'same' padding) with run-time He scaling (fan_in = C_in * k * k)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = SQRT2, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"in={i}, out={o}, k={k}, scale={self.scale:.4g}"


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each pixel's feature vector (dim 1) to unit root-mean-square."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


class PixelNorm(nn.Module):
    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x, self.eps)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, eps: float = 1e-8) -> torch.Tensor:
    """Append one feature map holding the mean per-group standard deviation across the minibatch.

    Samples are grouped with stride, as in the reference implementation: with ``M = ceil(N / G)``
    groups (``G = min(group_size, N)``), sample ``i`` belongs to group ``i % M``. When ``N`` is a
    multiple of ``G`` every group has ``G`` members; otherwise some groups have one member fewer
    rather than the batch being rejected or samples dropped. The statistic is the population
    standard deviation over a group's members, averaged over channels and pixels.
    """
    n, _, h, w = x.shape
    g = max(1, min(group_size, n))
    m = -(-n // g)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in >= fp32
    if n % g == 0:
        y = xf.reshape(g, m, *xf.shape[1:])
        std = (y.var(dim=0, unbiased=False) + eps).sqrt()  # [M, C, H, W]
        per_group = std.mean(dim=(1, 2, 3))  # [M]
        feat = per_group.repeat(g)  # sample i -> group i % M
    else:
        idx = torch.arange(n, device=x.device) % m
        counts = torch.bincount(idx, minlength=m).to(xf.dtype).view(m, 1, 1, 1)
        mean = torch.zeros((m, *xf.shape[1:]), dtype=xf.dtype, device=x.device).index_add_(0, idx, xf) / counts
        dev2 = (xf - mean[idx]).pow(2)
        var = torch.zeros_like(mean).index_add_(0, idx, dev2) / counts
        per_group = (var + eps).sqrt().mean(dim=(1, 2, 3))
        feat = per_group[idx]
    feat = feat.to(x.dtype).view(n, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat([x, feat], dim=1)


class MinibatchStdDev(nn.Module):
    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return minibatch_stddev(x, self.group_size)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour doubling (the paper's upsampling)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling (the paper's downsampling)."""
    return F.avg_pool2d(x, 2)


def lerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """``a + (b - a) * alpha``: alpha 0 gives ``a``, alpha 1 gives ``b`` exactly."""
    if alpha >= 1.0:
        return b
    if alpha <= 0.0:
        return a
    return a + (b - a) * alpha

"""Progressive GAN generator and critic for 1-channel images, grown from 4x4 to ``resolution``.

Both networks hold every block up to the final resolution from the start; ``res`` and ``alpha``
in ``forward`` select how much of them is in use, so growing the network is a change of arguments
rather than of modules, and a checkpoint's state dict never changes shape during training.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import (
    SQRT2,
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchStdDev,
    PixelNorm,
    downsample2x,
    lerp,
    pixel_norm,
    upsample2x,
)


def log2_res(res: int) -> int:
    """log2 of a power-of-two resolution >= 4; raises on anything else."""
    k = int(round(math.log2(res))) if res > 0 else -1
    if res < 4 or 2**k != res:
        raise ValueError(f"resolution must be a power of two >= 4, got {res}")
    return k


def n_features(stage: int, fmap_base: int, fmap_max: int) -> int:
    """Feature maps at a stage (stage 1 = the 4x4 block): ``min(fmap_base / 2**stage, fmap_max)``."""
    return max(1, min(int(fmap_base / 2.0**stage), fmap_max))


def resolutions(final: int) -> list[int]:
    return [2**k for k in range(2, log2_res(final) + 1)]


class _GBlock(nn.Module):
    """Upsample, then two 3x3 convs, each followed by LeakyReLU(0.2) and pixel norm."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.c_out = c_out
        self.conv0 = EqualizedConv2d(c_in, c_out, 3)
        self.conv1 = EqualizedConv2d(c_out, c_out, 3)
        self.act = nn.LeakyReLU(0.2)
        self.norm = PixelNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = upsample2x(x)
        x = self.norm(self.act(self.conv0(x)))
        return self.norm(self.act(self.conv1(x)))


class _GFirst(nn.Module):
    """Latent -> 4x4 feature maps (dense layer acting as a 4x4 transposed conv), then one 3x3 conv."""

    def __init__(self, latent_dim: int, c: int):
        super().__init__()
        self.c = self.c_out = c
        # gain sqrt(2)/4 as in the reference: the dense layer plays the role of a 4x4 deconv
        self.dense = EqualizedLinear(latent_dim, c * 16, gain=SQRT2 / 4)
        self.conv = EqualizedConv2d(c, c, 3)
        self.act = nn.LeakyReLU(0.2)
        self.norm = PixelNorm()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(pixel_norm(z)).view(-1, self.c, 4, 4)
        x = self.norm(self.act(x))
        return self.norm(self.act(self.conv(x)))


class Generator(nn.Module):
    """Maps ``z ~ N(0, I)`` to a ``[N, 1, R, R]`` image in about [-1, 1] (linear output).

    A latent may also carry an additive offset to the features of one block (intermediate-layer
    optimisation, Daras et al. 2021): ``latent_dim + offset_dims()[r]`` numbers, the latent followed by
    the ``[C_r, r, r]`` offset added to block r's output (after its pixel norm), flattened. The length
    alone says which block, so latents files, rendering and re-rendering need no other field. An all-zero
    offset renders exactly the image of the plain latent.
    """

    def __init__(self, resolution: int, latent_dim: int = 512, fmap_base: int = 8192, fmap_max: int = 512):
        super().__init__()
        self.resolution = int(resolution)
        self.latent_dim = int(latent_dim)
        self.fmap_base = int(fmap_base)
        self.fmap_max = int(fmap_max)
        self.res_list = resolutions(self.resolution)

        def nf(stage: int) -> int:
            return n_features(stage, fmap_base, fmap_max)

        self.blocks = nn.ModuleList()
        self.to_rgb = nn.ModuleList()
        for r in self.res_list:
            s = log2_res(r) - 1
            if r == 4:
                self.blocks.append(_GFirst(latent_dim, nf(s)))
            else:
                self.blocks.append(_GBlock(nf(s - 1), nf(s)))
            self.to_rgb.append(EqualizedConv2d(nf(s), 1, 1, gain=1.0))

    def offset_dims(self) -> dict[int, int]:
        """``{r: C_r * r * r}``: the offset length each block below the output resolution accepts."""
        return {r: self.blocks[i].c_out * r * r for i, r in enumerate(self.res_list[:-1])}

    def offset_res(self, length: int) -> int | None:
        """The block a latent of ``length`` numbers offsets (None: a plain latent); raises on any other length."""
        extra = int(length) - self.latent_dim
        if extra == 0:
            return None
        for r, n in self.offset_dims().items():
            if n == extra:
                return r
        accepted = [self.latent_dim, *(self.latent_dim + n for n in self.offset_dims().values())]
        raise ValueError(f"latents must have one of the lengths {accepted} (latent_dim {self.latent_dim}, or it plus one "
                         f"block's feature offset), got {length}")

    @property
    def arch(self) -> dict:
        """JSON-able constructor kwargs, stored beside the weights."""
        return {
            "resolution": self.resolution,
            "latent_dim": self.latent_dim,
            "fmap_base": self.fmap_base,
            "fmap_max": self.fmap_max,
            "channels": 1,
        }

    def forward(self, z: torch.Tensor, res: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """Image at ``res`` (default: full). During fade-in (``alpha < 1``) the new block's output
        is blended with the nearest-upsampled output of the previous resolution's ``to_rgb``."""
        res = self.resolution if res is None else int(res)
        if res not in self.res_list:
            raise ValueError(f"res {res} not in this generator's resolutions {self.res_list}")
        if z.ndim != 2:
            raise ValueError(f"z must be [N, {self.latent_dim}], got {list(z.shape)}")
        at = self.offset_res(z.shape[1])
        k = self.res_list.index(res)
        x, offset = z[:, : self.latent_dim], z[:, self.latent_dim :]
        prev = None
        for i in range(k + 1):
            if i == k and k > 0 and alpha < 1.0:
                prev = x
            x = self.blocks[i](x)
            if at == self.res_list[i]:
                x = x + offset.reshape(x.shape)
        out = self.to_rgb[k](x)
        if prev is not None:
            out = lerp(upsample2x(self.to_rgb[k - 1](prev)), out, alpha)
        return out


class _DBlock(nn.Module):
    """Two 3x3 convs with LeakyReLU(0.2), then 2x2 average pooling."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv0 = EqualizedConv2d(c_in, c_in, 3)
        self.conv1 = EqualizedConv2d(c_in, c_out, 3)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv0(x))
        x = self.act(self.conv1(x))
        return downsample2x(x)


class _DLast(nn.Module):
    """Minibatch stddev, 3x3 conv, dense 4x4 -> features, dense -> one linear score."""

    def __init__(self, c: int, c_dense: int, mbstd_group: int):
        super().__init__()
        self.mbstd = MinibatchStdDev(mbstd_group)
        self.conv = EqualizedConv2d(c + 1, c, 3)
        self.dense0 = EqualizedLinear(c * 16, c_dense)
        self.dense1 = EqualizedLinear(c_dense, 1, gain=1.0)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mbstd(x)
        x = self.act(self.conv(x))
        x = self.act(self.dense0(x.flatten(1)))
        return self.dense1(x)


class Discriminator(nn.Module):
    """WGAN critic: ``[N, 1, R, R]`` -> ``[N, 1]`` unbounded scores (unconditional, as in the paper)."""

    def __init__(
        self, resolution: int, fmap_base: int = 8192, fmap_max: int = 512, mbstd_group: int = 4
    ):
        super().__init__()
        self.resolution = int(resolution)
        self.fmap_base = int(fmap_base)
        self.fmap_max = int(fmap_max)
        self.res_list = resolutions(self.resolution)

        def nf(stage: int) -> int:
            return n_features(stage, fmap_base, fmap_max)

        self.blocks = nn.ModuleList()
        self.from_rgb = nn.ModuleList()
        for r in self.res_list:
            s = log2_res(r) - 1
            self.from_rgb.append(EqualizedConv2d(1, nf(s), 1))
            if r == 4:
                self.blocks.append(_DLast(nf(s), nf(s - 1), mbstd_group))
            else:
                self.blocks.append(_DBlock(nf(s), nf(s - 1)))
        self.act = nn.LeakyReLU(0.2)

    @property
    def arch(self) -> dict:
        return {"resolution": self.resolution, "fmap_base": self.fmap_base, "fmap_max": self.fmap_max}

    def forward(self, img: torch.Tensor, res: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """Score at ``res`` (default: the image's size). During fade-in the new block's output is
        blended with the previous resolution's ``from_rgb`` applied to the average-pooled image."""
        res = img.shape[-1] if res is None else int(res)
        if img.shape[-1] != res or img.shape[-2] != res:
            raise ValueError(f"critic expected [N, 1, {res}, {res}] images, got {list(img.shape)}")
        if res not in self.res_list:
            raise ValueError(f"res {res} not in this critic's resolutions {self.res_list}")
        k = self.res_list.index(res)
        x = self.act(self.from_rgb[k](img))
        x = self.blocks[k](x)
        if k > 0 and alpha < 1.0:
            skip = self.act(self.from_rgb[k - 1](downsample2x(img)))
            x = lerp(skip, x, alpha)
        for i in range(k - 1, -1, -1):
            x = self.blocks[i](x)
        return x

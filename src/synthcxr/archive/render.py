"""Turn latents into uint8 images with the generator, in micro-batches aligned to the shard index.

Whether a convolution's floating-point result for one sample depends on its batch-mates is up to the
backend (oneDNN, cuDNN pick algorithms by batch shape), and one ulp can move a pixel across a rounding
boundary. So images are always rendered in fixed groups: micro-batch k of a shard holds indices
``[k*b, (k+1)*b)``. :func:`render_one` re-renders exactly that group, which makes regeneration
byte-identical on the same platform whatever the backend does.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ..imaging import float_to_uint8


def generator_resolution(G: nn.Module) -> int:
    """The generator's output side length (``G.resolution`` per the pggan contract)."""
    res = getattr(G, "resolution", None)
    if res is None:
        raise AttributeError(f"{type(G).__name__} has no 'resolution' attribute; load it with synthcxr.pggan.load_generator")
    return int(res)


def _device_of(G: nn.Module) -> torch.device:
    for p in G.parameters():
        return p.device
    return torch.device("cpu")


def render_batch(G: nn.Module, z: np.ndarray) -> np.ndarray:
    """uint8 ``[b, R, R]`` for latents ``z`` ``[b, D]`` rendered as one forward pass."""
    dev = _device_of(G)
    # cuDNN: no autotuning (it may pick a different algorithm next run) and deterministic kernels only.
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        out = G(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).to(dev))
    res = getattr(G, "resolution", None)
    side = "R" if res is None else str(int(res))
    if out.ndim != 4 or out.shape[1] != 1 or out.shape[0] != len(z) or out.shape[2] != out.shape[3] or (
        res is not None and out.shape[-1] != int(res)
    ):
        raise ValueError(f"generator returned shape {tuple(out.shape)}; expected [{len(z)}, 1, {side}, {side}]")
    return float_to_uint8(out[:, 0]).cpu().numpy()


def micro_batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of micro-batch k = ``[k*b, min((k+1)*b, n))``."""
    if batch_size < 1:
        raise ValueError(f"archive.batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def render_batches(G: nn.Module, z: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, uint8 [b, R, R])`` for each aligned micro-batch of a shard's latents."""
    for start, stop in micro_batches(len(z), batch_size):
        yield start, render_batch(G, z[start:stop])


def render_one(G: nn.Module, z: np.ndarray, index: int, batch_size: int) -> np.ndarray:
    """Re-render sample ``index`` of a shard by rendering its whole micro-batch, as sampling did."""
    if not 0 <= index < len(z):
        raise IndexError(f"sample index {index} outside shard of {len(z)} samples")
    start = (index // batch_size) * batch_size
    stop = min(start + batch_size, len(z))
    return render_batch(G, z[start:stop])[index - start]

"""Improved precision and recall (Kynkaanniemi et al., 2019), plus density and coverage.

Each set's manifold is approximated by balls around its points whose radius is the distance to the
point's k-th nearest neighbour within the same set. Precision is the fraction of generated samples
that fall inside the real manifold (fidelity); recall is the fraction of real samples inside the
generated manifold (diversity). Density and coverage (Naeem et al., 2020) reuse the same radii and
are less sensitive to outliers. Distances are computed in chunks so large sets stay in bounded memory.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if t.ndim != 2:
        raise ValueError(f"features must be [N, F], got shape {tuple(t.shape)}")
    return t


def knn_radii(x: np.ndarray | torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row of ``x`` to its ``k``-th nearest other row (the point itself excluded)."""
    t = x if isinstance(x, torch.Tensor) else _as_tensor(x)
    if not 1 <= k < len(t):
        raise ValueError(f"k must be between 1 and N-1 = {len(t) - 1}, got {k}")
    out = torch.empty(len(t), dtype=t.dtype)
    for s in range(0, len(t), chunk):
        d = torch.cdist(t[s : s + chunk], t)
        # k+1 smallest: the first is the point itself (distance 0)
        out[s : s + chunk] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


def _inside_counts(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each query row, how many reference balls (``||q - r|| <= radius_r``) contain it."""
    out = torch.empty(len(query), dtype=torch.int64)
    for s in range(0, len(query), chunk):
        d = torch.cdist(query[s : s + chunk], ref)
        out[s : s + chunk] = (d <= radii[None, :]).sum(dim=1)
    return out


def precision_recall(
    real: np.ndarray, generated: np.ndarray, k: int = 3, chunk: int = 1024
) -> dict[str, float]:
    """Precision, recall, density and coverage of ``generated`` against ``real`` (``[N, F]`` each)."""
    r, g = _as_tensor(real), _as_tensor(generated)
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: real {r.shape[1]}, generated {g.shape[1]}")
    r_radii = knn_radii(r, k, chunk)
    g_radii = knn_radii(g, k, chunk)
    in_real = _inside_counts(g, r, r_radii, chunk)
    in_gen = _inside_counts(r, g, g_radii, chunk)
    # coverage: real points whose nearest generated sample lies inside their own k-NN ball
    nearest_gen = torch.empty(len(r), dtype=r.dtype)
    for s in range(0, len(r), chunk):
        nearest_gen[s : s + chunk] = torch.cdist(r[s : s + chunk], g).min(dim=1).values
    return {
        "precision": float((in_real > 0).double().mean()),
        "recall": float((in_gen > 0).double().mean()),
        "density": float(in_real.double().sum() / (k * len(g))),
        "coverage": float((nearest_gen <= r_radii).double().mean()),
    }

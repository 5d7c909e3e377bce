"""Which real image the GAN is shown k-th: a seeded, resumable order over the training split.

The order is a function of ``k`` alone, so training resumed at ``nimg`` continues it exactly. Images
that carry a rare finding may be shown several times per epoch (:func:`finding_repeats`): an
unconditional GAN trained on a few dozen examples of a finding tends to drop it, and LCO can only
steer towards what the generator can draw. The archive's label frequencies come from the LCO plan,
not from the generator's prior, so oversampling changes coverage, not the released label mix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

DATA_SEED_SALT = 0xDA7A


def finding_repeats(labels: np.ndarray, floor: float, max_repeat: int) -> np.ndarray:
    """Times each training image appears per epoch so every finding is on at least ``floor`` of shown images.

    ``labels`` is ``[n, F]`` over the findings (1 positive; 0 or NaN not). Each finding gets a factor
    and an image is shown as often as the largest factor among its positive findings (1 with none).
    Because repeats also lengthen the epoch and carry co-occurring findings along, the factors are
    found by a fixed point: a finding still below ``floor`` in :func:`shown_share` has its factor
    scaled by ``floor / share`` (rounded up, at least +1), capped at ``max_repeat``, until every
    finding reaches the floor or its cap. ``floor <= 0`` or ``max_repeat == 1`` gives all ones.
    """
    y = np.asarray(labels, dtype=np.float64) == 1  # NaN (unknown) compares unequal: not positive
    if y.ndim != 2:
        raise ValueError(f"labels must be [n, F], got shape {y.shape}")
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"finding_floor must be in [0, 1), got {floor}")
    if max_repeat < 1:
        raise ValueError(f"finding_max_repeat must be >= 1, got {max_repeat}")
    reps = np.ones(len(y), dtype=np.int64)
    if floor <= 0.0 or max_repeat == 1 or len(y) == 0 or y.shape[1] == 0:
        return reps
    present = y.any(axis=0)
    factor = np.ones(y.shape[1], dtype=np.int64)
    while True:  # every pass raises some factor by >= 1 towards its cap, so this ends
        reps = np.where(y, factor[None, :], 1).max(axis=1)
        share = shown_share(y, reps)
        low = present & (share < floor - 1e-12) & (factor < max_repeat)
        if not low.any():
            return reps
        grown = np.ceil(factor[low] * floor / share[low] - 1e-9).astype(np.int64)
        factor[low] = np.minimum(np.maximum(grown, factor[low] + 1), max_repeat)


def shown_share(labels: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    """Per finding, the share of shown images that carry it, given per-image ``repeats``."""
    y = np.asarray(labels, dtype=np.float64) == 1
    r = np.asarray(repeats, dtype=np.float64)
    return (y * r[:, None]).sum(axis=0) / max(r.sum(), 1.0)


class ImageStream:
    """The k-th shown image: a fresh seeded permutation per epoch of the (repeat-expanded) training set.

    With ``repeats`` (one count per image) an epoch holds image ``i`` ``repeats[i]`` times; without it
    every image is shown once per epoch whatever the minibatch schedule.
    """

    def __init__(self, n: int, seed: int, repeats: np.ndarray | None = None):
        if n <= 0:
            raise ValueError("the training split is empty")
        if repeats is None:
            self.items = np.arange(n, dtype=np.int64)
        else:
            repeats = np.asarray(repeats, dtype=np.int64)
            if repeats.shape != (n,) or (repeats < 1).any():
                raise ValueError(f"repeats must be {n} counts >= 1, got shape {repeats.shape}")
            self.items = np.repeat(np.arange(n, dtype=np.int64), repeats)
        self.n = len(self.items)
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            order = np.random.default_rng([self.seed, DATA_SEED_SALT, epoch]).permutation(self.n)
            self._cache[epoch] = self.items[order]
        return self._cache[epoch]

    def indices(self, start: int, count: int) -> np.ndarray:
        k = np.arange(start, start + count)
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(k // self.n):
            sel = (k // self.n) == e
            out[sel] = self._perm(int(e))[k[sel] % self.n]
        return out


def rank_share(batch: int, rank: int, world_size: int, group: int = 4) -> np.ndarray:
    """Positions in a global minibatch of ``batch`` that rank ``rank`` of ``world_size`` trains on.

    The critic's minibatch-stddev layer groups samples with stride (sample ``i`` of ``N`` in group
    ``i % (N / group)``). When ``batch`` is a multiple of ``group * world_size`` each rank takes whole
    groups, laid out so that its local stride grouping rebuilds exactly the groups of the global batch:
    data-parallel training then computes the same losses and gradients as one process on the whole
    minibatch. Otherwise rank ``r`` takes the r-th contiguous slice (groups form within each rank).
    """
    if batch % world_size:
        raise ValueError(f"minibatch {batch} is not divisible by the {world_size} ranks")
    local = batch // world_size
    g = max(1, min(group, batch))
    if world_size > 1 and batch % (g * world_size) == 0:
        m = batch // g  # groups in the global batch; this rank owns m / world_size of them
        cols = np.arange(rank * m // world_size, (rank + 1) * m // world_size)
        return (np.arange(g)[:, None] * m + cols[None, :]).ravel()
    return np.arange(rank * local, (rank + 1) * local)


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's share of each global minibatch, starting at ``start_nimg``.

    This plays the role of a ``DistributedSampler`` (disjoint per-rank shards of the same global
    order) while staying resumable mid-epoch: rank ``r`` takes the positions :func:`rank_share`
    gives it, the same positions whose latents it draws.
    """

    def __init__(self, stream: ImageStream, start_nimg: int, batch: int, rank: int, world_size: int,
                 group: int = 4):
        self.share = rank_share(batch, rank, world_size, group)
        self.stream, self.start, self.batch = stream, start_nimg, batch
        self.rank, self.world = rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        nimg = self.start
        while True:
            idx = self.stream.indices(nimg, self.batch)
            yield idx[self.share].tolist()
            nimg += self.batch

    def __len__(self) -> int:  # effectively endless; the loop stops drawing when the phase ends
        return 2**62


def epoch_repeats(data, cfg, logger: logging.Logger | None = None) -> np.ndarray | None:
    """Per-image showings per epoch of ``data``'s train split (a PreparedDataset) from ``cfg``'s
    ``pggan.finding_floor`` (None: each image once); ``logger`` states the shares before and after."""
    if cfg.finding_floor <= 0:
        return None
    train = data.split("train")
    names = [n for n in (cfg.labels or data.label_names) if n != "No_Finding"]
    y = data.label_matrix(train, names)
    reps = finding_repeats(y, cfg.finding_floor, cfg.finding_max_repeat)
    if logger is not None:
        before, after = shown_share(y, np.ones(len(y))), shown_share(y, reps)
        logger.info("finding_floor %.3g (max %dx): epoch of %d showings for %d images; finding share shown: %s",
                    cfg.finding_floor, cfg.finding_max_repeat, int(reps.sum()), len(reps),
                    ", ".join(f"{n} {b:.3f}->{a:.3f}" for n, b, a in zip(names, before, after)))
    return reps

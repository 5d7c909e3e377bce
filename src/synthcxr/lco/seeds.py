"""Every seed LCO uses, derived from the config's master seed by a platform-independent integer hash: each
sample's, each retry's, each shard's prior pool and each new base of a pair, in streams that never coincide."""

from __future__ import annotations

import numpy as np

# Stream tags so the seeds of different uses of the master seed never coincide.
_TAG_SAMPLE = 0x53414D50  # "SAMP"
_TAG_ATTEMPT = 0x41545450  # "ATTP"
_TAG_SHUFFLE = 0x53485546  # "SHUF"
_TAG_POOL = 0x504F4F4C  # "POOL"
_TAG_REBASE = 0x52424153  # "RBAS"

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One round of SplitMix64: a cheap, well-mixed 64-bit hash with no platform dependence."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(base: int, *keys: int) -> int:
    """A non-negative int64 seed from ``base`` and integer ``keys`` (order matters).

    Pure integer arithmetic, so the same inputs give the same seed on every platform and numpy version.
    """
    h = _splitmix64(int(base) & _MASK64)
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _MASK64))
    return h >> 1


def sample_seeds(seed: int, n: int) -> np.ndarray:
    """Seeds of samples ``0..n-1`` of a plan made from master ``seed`` (int64)."""
    return np.array([derive_seed(seed, _TAG_SAMPLE, i) for i in range(n)], dtype=np.int64)


def attempt_seed(sample_seed: int, attempt: int) -> int:
    """Seed of retry ``attempt`` of a sample; attempt 0 uses the plan's seed unchanged."""
    return int(sample_seed) if attempt == 0 else derive_seed(sample_seed, _TAG_ATTEMPT, attempt)


def rebase_seed(sample_seed: int, rnd: int) -> int:
    """Seed of a pair's new base in rebase round ``rnd`` (1, 2, ...) of a base sample seeded ``sample_seed``;
    also seeds that round's prior pool, from the shard's pool seed."""
    return derive_seed(sample_seed, _TAG_REBASE, rnd)


def pool_seed(seed: int, shard: int) -> int:
    """Seed of the prior pool an LCO job draws for ``shard`` (master ``seed``): one pool per shard."""
    return derive_seed(seed, _TAG_POOL, shard)

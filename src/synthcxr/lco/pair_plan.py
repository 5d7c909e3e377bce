"""Pairs in the plan: which targets are bases of paired counterfactuals, the variants' targets (one finding
flipped each, No_Finding following) and where the groups sit, never across two shards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..config import build
from ..labels import NO_FINDING


@dataclass
class PairsConfig:
    """The ``archive.pairs`` section: how much of the plan is pairs, which findings they edit, and the
    proximity weights of a variant's optimisation (latent distance; patient-verifier embedding distance), how
    they relax for a variant left short of its edit, and how many new bases a pair left short may draw."""

    share: float
    findings: list[str]
    latent_weight: float
    embed_weight: float
    relax_rounds: int
    relax_factor: float
    rebase_rounds: int

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None) -> "PairsConfig":
        return build(cls, "archive.pairs", dict(sec or {}))

    def groups(self, n: int) -> int:
        """How many bases a plan of ``n`` samples holds: ``share * n`` members in groups of a base and its variants."""
        return int(self.share * n) // (1 + len(self.findings)) if self.findings else 0


def edit_target(target: np.ndarray, labels: Sequence[str], finding: str) -> tuple[np.ndarray, str]:
    """``target`` with ``finding`` flipped and the edit's name (``+Effusion`` adds, ``-Effusion`` removes)."""
    labels = list(labels)
    if finding not in labels or finding == NO_FINDING:
        raise ValueError(f"archive.pairs.findings: {finding!r} is not one of the findings in labels ({', '.join(n for n in labels if n != NO_FINDING)})")
    out = np.asarray(target, dtype=np.float32).copy()
    j = labels.index(finding)
    add = out[j] < 0.5
    out[j] = 1.0 if add else 0.0
    if NO_FINDING in labels:
        others = [k for k, n in enumerate(labels) if n != NO_FINDING]
        out[labels.index(NO_FINDING)] = 0.0 if out[others].max(initial=0.0) >= 0.5 else 1.0
    return out, f"{'+' if add else '-'}{finding}"


def lay_out_pairs(targets: np.ndarray, labels: Sequence[str], pairs: PairsConfig, groups: int,
                  shard_size: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The plan's targets with ``groups`` bases, spread evenly over the shuffled ``targets``, each followed
    by one variant per edited finding: (targets, each row's edit, each row's pair id or -1)."""
    is_base = np.zeros(len(targets), dtype=bool)
    is_base[(np.arange(groups) * len(targets)) // groups] = True  # every shard mixes pairs and single samples
    group_of = np.cumsum(is_base) - 1
    rows, edits, group = [], [], []
    for b, f in pair_layout(is_base, len(pairs.findings), shard_size):
        if f < 0:
            rows.append(targets[b])
            edits.append("")
        else:
            t, e = edit_target(targets[b], labels, pairs.findings[f])
            rows.append(t.astype(np.int8))
            edits.append(e)
        group.append(int(group_of[b]) if is_base[b] else -1)
    return np.asarray(rows, dtype=np.int8).reshape(len(rows), len(labels)), edits, np.asarray(group, dtype=np.int64)


def pair_layout(is_base: np.ndarray, k: int, shard_size: int) -> list[tuple[int, int]]:
    """The plan's order as (target, variant number or -1): each base target (``is_base``) is followed by
    its ``k`` variants; no group spans two shards of ``shard_size`` rows (a group that would waits while
    the next single targets fill the shard's end). Raises when the singles run out first."""
    from collections import deque

    groups = int(np.count_nonzero(is_base))
    units = deque((b, bool(x)) for b, x in enumerate(is_base))
    out: list[tuple[int, int]] = []
    while units:
        b, is_group = units[0]
        room = shard_size - len(out) % shard_size
        if not is_group or k + 1 <= room:
            units.popleft()
            out.append((b, -1))
            if is_group:
                out.extend((b, f) for f in range(k))
            continue
        single = next((u for u in units if not u[1]), None)
        if single is None:
            raise ValueError(f"archive.pairs: {groups} groups of {k + 1} samples cannot be laid out in shards of "
                             f"lco.shard_size {shard_size} without one spanning two shards; lower archive.pairs.share")
        units.remove(single)
        out.append((single[0], -1))
    return out


def variant_targets(base_targets: np.ndarray, labels: Sequence[str], findings: Sequence[str]) -> pd.DataFrame:
    """One row per (base row, finding): ``base_row``, ``edit`` and the variant's ``target_<label>`` columns."""
    rows = []
    for i, t in enumerate(np.asarray(base_targets, dtype=np.float32)):
        for f in findings:
            v, edit = edit_target(t, labels, f)
            rows.append({"base_row": i, "edit": edit, **{f"target_{n}": int(x) for n, x in zip(labels, v)}})
    return pd.DataFrame(rows, columns=["base_row", "edit", *[f"target_{n}" for n in labels]])

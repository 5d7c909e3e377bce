"""The label plan: which multi-label targets the archive will hold, in which shard, from which seed.

The plan is fixed before any latent is optimised so that every per-shard LCO job is independent and a
rerun of one shard reproduces exactly the same targets and seeds. Three ways to choose the targets:

``match_real``
    Reproduce the label combinations of the real *train* split with their frequencies. Unknown labels
    (NaN) count as absent (the "U-zeros" convention, which keeps every image; dropping partially
    labelled rows would bias the plan towards fully annotated sources). ``No_Finding`` is derived from
    the findings, never read from the table, so every target is self-consistent; rows whose
    ``other_finding`` is 1 and that have no configured finding (positive only for findings outside
    ``labels``) are left out rather than counted as No_Finding. Counts come from
    largest-remainder (Hamilton) rounding of ``n_samples * frequency``, so they sum to ``n_samples``
    exactly and each differs from its ideal share by less than one sample. With ``plan.keep_rare``
    (default) and ``n_samples`` at least the number of observed combinations, every observed combination
    gets at least one sample; the samples it needs are taken one at a time from the combination with
    the largest surplus over its ideal share.
``balanced``
    Single-finding targets: each configured label (``No_Finding`` included) is one sample's only
    positive label, in equal numbers; the ``n_samples % n_labels`` leftover samples go to the first
    labels in configured order.
``quotas``
    Explicit counts per combination from ``lco.plan.quotas`` (keys parsed with
    :func:`synthcxr.labels.parse_combo`). ``n_samples`` must equal the sum of the quotas because the
    workflow derives its shard list from ``n_samples``.

Rows are shuffled with the seed so every shard mixes combinations; ``shard = position // shard_size``.
Each sample's seed is a 63-bit hash of (config seed, sample position), independent of shard layout
(:mod:`.seeds`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import build
from ..labels import NO_FINDING, check_labels, combo_key, findings_of, parse_combo
from ..utils.atomic import atomic_path
from .pair_plan import lay_out_pairs
from .seeds import _TAG_SHUFFLE, derive_seed, sample_seeds

log = logging.getLogger("synthcxr")

MODES = ("match_real", "balanced", "quotas", "augment")

@dataclass
class PlanConfig:
    """The ``lco.plan`` section plus ``lco.shard_size`` (defaults from the schema, :func:`synthcxr.config.build`)."""

    mode: str
    n_samples: int
    shard_size: int
    quotas: dict[str, int]
    keep_rare: bool
    min_positives: int
    min_checker_sensitivity: float

    @classmethod
    def from_section(cls, cfg: Mapping[str, Any]) -> "PlanConfig":
        """Build from the ``lco`` config section (as produced by ``synthcxr.config.section``)."""
        if "plan" not in cfg:
            raise ValueError("lco config: missing key 'plan' (expected lco.plan.mode, lco.plan.n_samples)")
        shard = build(_ShardSize, "lco", {"shard_size": cfg["shard_size"]} if "shard_size" in cfg else {}).shard_size
        out = build(cls, "lco.plan", cfg["plan"], shard_size=shard)
        if out.mode == "augment" and out.min_positives < 1:
            raise ValueError("'lco.plan.min_positives': augment mode needs a positive count of samples per finding")
        return out


@dataclass
class _ShardSize:
    """`lco.shard_size` on its own, checked against the schema."""

    shard_size: int


def largest_remainder(weights: np.ndarray, n: int, keep_all: bool = False) -> np.ndarray:
    """Integer counts summing to ``n`` proportional to ``weights`` (Hamilton's method).

    Ties in the remainders go to the lower index, so the result is deterministic. With ``keep_all`` and
    ``n >= len(weights)``, every positive weight gets at least one count; each missing count is taken
    from the entry whose count most exceeds its ideal share (lowest index on ties).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("largest_remainder: weights must be a non-empty 1-d array of non-negative numbers with a positive sum")
    ideal = n * w / w.sum()
    counts = np.floor(ideal).astype(np.int64)
    rest = n - int(counts.sum())
    if rest > 0:
        order = np.lexsort((np.arange(len(w)), -(ideal - counts)))
        counts[order[:rest]] += 1
    if keep_all and n >= int(np.count_nonzero(w > 0)):
        for j in np.flatnonzero((w > 0) & (counts == 0)):
            surplus = np.where(counts > 1, counts - ideal, -np.inf)
            donor = int(np.argmax(surplus))
            counts[donor] -= 1
            counts[j] += 1
    return counts


def _combos_from_real(real_table: pd.DataFrame, labels: Sequence[str]) -> pd.Series:
    """Combination key per train row (NaN counted as absent; No_Finding derived from the findings)."""
    table = real_table
    if "split" in table.columns:
        table = table[table["split"] == "train"]
    if len(table) == 0:
        raise ValueError("match_real: the real table has no train rows; check the prepare stage's labels.parquet")
    findings = findings_of(labels)
    missing = [n for n in findings if n not in table.columns]
    if missing:
        raise ValueError(
            f"match_real: labels.parquet has no column for configured label(s) {missing}; "
            "re-run prepare with these labels or remove them from config 'labels'"
        )
    mat = table[findings].to_numpy(dtype=np.float64)
    mat = np.where(np.isnan(mat), 0.0, mat)
    present = mat >= 0.5
    if "other_finding" in table.columns:
        # positive only for findings outside the configured labels: not normal, and no configured target
        other_only = (table["other_finding"].to_numpy() == 1.0) & ~present.any(axis=1)
        if other_only.any():
            log.info("match_real: %d train rows positive only for unconfigured findings are left out", int(other_only.sum()))
            present, index = present[~other_only], table.index[~other_only]
        else:
            index = table.index
    else:
        index = table.index
    if len(index) == 0:
        raise ValueError("match_real: every train row is positive only for findings outside config 'labels'")
    keys = ["+".join(f for f, p in zip(findings, row) if p) or NO_FINDING for row in present]
    return pd.Series(keys, index=index)


def _vector(key: str, labels: Sequence[str]) -> list[int]:
    if key == NO_FINDING and NO_FINDING not in labels:
        return [0] * len(labels)
    return parse_combo(key, labels)


def augment_counts(freq: pd.Series, labels: Sequence[str], n: int, min_positives: int) -> dict[str, int]:
    """Counts per combination that give every finding at least ``min_positives`` positive samples, the rest
    of the ``n`` samples in the real mix.

    Findings are served rarest first (real train frequency; ties in label order). A finding short of
    ``min_positives`` gets its deficit spread over the real combinations that contain it, in proportion to
    their real frequency, so every planned combination is one the real data holds (never an impossible
    one); samples planned for one finding count for every finding in their combination. What is left of
    ``n`` follows the real mix (:func:`largest_remainder`). Deterministic: keys are sorted first.
    """
    keys = sorted(freq.index)
    f = freq.loc[keys].to_numpy(np.float64)
    vec = {k: set(k.split("+")) - {NO_FINDING} for k in keys}
    counts = dict.fromkeys(keys, 0)
    findings = findings_of(labels)
    real_pos = {x: sum(c for k, c in zip(keys, f) if x in vec[k]) for x in findings}
    for x in sorted((x for x in findings if real_pos[x] > 0), key=lambda x: (real_pos[x], findings.index(x))):
        have = sum(c for k, c in counts.items() if x in vec[k])
        need = min_positives - have
        if need <= 0:
            continue
        with_x = [k for k in keys if x in vec[k]]
        for k, c in zip(with_x, largest_remainder(freq.loc[with_x].to_numpy(np.float64), need)):
            counts[k] += int(c)
    absent = [x for x in findings if real_pos[x] == 0]
    if absent:
        log.warning("augment: no real train scan shows %s; the plan cannot raise it without inventing a combination", absent)
    used = sum(counts.values())
    if used > n:
        raise ValueError(f"'lco.plan.n_samples' is {n} but raising every finding to 'lco.plan.min_positives' "
                         f"{min_positives} takes {used} samples; raise n_samples or lower min_positives")
    for k, c in zip(keys, largest_remainder(f, n - used) if n > used else np.zeros(len(keys), np.int64)):
        counts[k] += int(c)
    return {k: c for k, c in counts.items() if c > 0}


def _without(freq: pd.Series, drop: Sequence[str]) -> pd.Series:
    """Real combination frequencies with every combination holding a dropped finding left out."""
    keep = [not (set(k.split("+")) & set(drop)) for k in freq.index]
    if not any(keep):
        raise ValueError(f"every real combination holds one of {list(drop)}: nothing is left to plan")
    return freq[keep]


def unverifiable_findings(checker_metrics: str | os.PathLike, labels: Sequence[str], min_sensitivity: float) -> dict[str, float | None]:
    """Findings the checker calls on fewer than ``min_sensitivity`` of the real test scans that show them
    (``test.exact_match.per_label`` of its metrics.json), with that sensitivity (None: no such scan)."""
    import json

    try:
        per = json.loads(Path(checker_metrics).read_text())["test"]["exact_match"]["per_label"]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{checker_metrics}: no test.exact_match.per_label ({exc!r}); retrain the checker "
                         "(snakemake --forcerun train_classifier)") from None
    out = {}
    for name in findings_of(labels):
        tpr = (per.get(name) or {}).get("tpr")
        if tpr is None or tpr < min_sensitivity:
            out[name] = tpr
    return out


def plan_counts(cfg: PlanConfig, labels: Sequence[str], real_table: pd.DataFrame | None, drop: Sequence[str] = ()) -> dict[str, int]:
    """Number of samples per combination key (``Cardiomegaly+Effusion``, ``No_Finding``) for the plan.

    ``drop``: findings no sample may hold (those the checker cannot verify); the rest of the plan takes
    their share.
    """
    labels = check_labels(labels, where="labels")
    if cfg.mode == "match_real":
        if real_table is None:
            raise ValueError("match_real needs the real labels table (prepare stage's labels.parquet)")
        freq = _without(_combos_from_real(real_table, labels).value_counts(), drop)
        keys = sorted(freq.index)  # sorted so equal remainders break ties the same way everywhere
        counts = largest_remainder(freq.loc[keys].to_numpy(), cfg.n_samples, keep_all=cfg.keep_rare)
        return {k: int(c) for k, c in zip(keys, counts) if c > 0}
    if cfg.mode == "augment":
        if real_table is None:
            raise ValueError("augment needs the real labels table (prepare stage's labels.parquet)")
        kept = [n for n in labels if n not in drop]
        return augment_counts(_without(_combos_from_real(real_table, labels).value_counts(), drop), kept, cfg.n_samples,
                              cfg.min_positives)
    if cfg.mode == "balanced":
        kept = [n for n in labels if n not in drop]
        base, extra = divmod(cfg.n_samples, len(kept))
        return {name: base + (1 if j < extra else 0) for j, name in enumerate(kept) if base + (j < extra) > 0}
    if not cfg.quotas:
        raise ValueError("'lco.plan.quotas' is empty; quotas mode needs counts like {'Effusion+Cardiomegaly': 500}")
    out: dict[str, int] = {}
    origin: dict[str, str] = {}
    for key, count in cfg.quotas.items():
        try:
            vec = _vector(str(key), labels)
        except ValueError as exc:
            raise ValueError(f"'lco.plan.quotas.{key}': {exc}") from None
        canon = combo_key(vec, labels)
        bad = [n for n, v in zip(labels, vec) if v and n in drop]
        if bad:
            raise ValueError(f"'lco.plan.quotas.{key}': asks for {bad}, which the checker cannot verify "
                             "(lco.plan.min_checker_sensitivity); drop the quota or lower that key")
        if canon in out:
            raise ValueError(f"'lco.plan.quotas.{key}': same combination as 'lco.plan.quotas.{origin[canon]}'; merge them")
        out[canon], origin[canon] = int(count), str(key)
    total = sum(out.values())
    if total != cfg.n_samples:
        raise ValueError(
            f"'lco.plan.n_samples' is {cfg.n_samples} but 'lco.plan.quotas' sum to {total}; "
            f"set n_samples: {total} (the workflow derives its shard list from n_samples)"
        )
    return out


def make_plan(cfg: Mapping[str, Any], labels: Sequence[str], real_table: pd.DataFrame | None, seed: int,
              drop: Sequence[str] = (), pairs: Any = None) -> pd.DataFrame:
    """Build the plan table: sample_id, shard, index, seed and one int8 column per label.

    ``cfg`` is the ``lco`` config section (or a :class:`PlanConfig`); ``real_table`` is the prepared
    dataset's label table (only its train split is used, in ``match_real`` and ``augment`` modes);
    ``drop`` the findings no sample may hold. With ``pairs`` (a :class:`~.pairs.PairsConfig` whose share is
    above 0) the first bases of the shuffled plan get one variant per edited finding each (columns
    ``pair_id``, ``base_sample_id``, ``edit``; :func:`pair_layout`); the other targets fill the rest of
    ``n_samples``.
    """
    pc = PlanConfig.from_section(cfg)
    labels = check_labels(labels, where="labels")
    g = pairs.groups(pc.n_samples) if pairs is not None else 0
    k = len(pairs.findings) if g else 0
    if g and pc.mode == "quotas":
        raise ValueError("archive.pairs: plan mode quotas counts every sample itself; use match_real, balanced or augment with pairs")
    base_pc = dataclasses.replace(pc, n_samples=pc.n_samples - g * k) if g else pc
    counts = plan_counts(base_pc, labels, real_table, drop)
    keys = sorted(counts)
    vectors = np.array([_vector(k_, labels) for k_ in keys], dtype=np.int8).reshape(len(keys), len(labels))
    which = np.repeat(np.arange(len(keys)), [counts[k_] for k_ in keys])
    rng = np.random.default_rng(derive_seed(seed, _TAG_SHUFFLE))
    which = which[rng.permutation(len(which))]
    targets = vectors[which]
    edits: list[str] = [""] * len(targets)
    if g:
        targets, edits, group = lay_out_pairs(targets, labels, pairs, g, pc.shard_size)
    n = len(targets)
    pos = np.arange(n, dtype=np.int64)
    plan = pd.DataFrame(
        {
            "sample_id": [f"s{i:07d}" for i in range(n)],
            "shard": pos // pc.shard_size,
            "index": pos % pc.shard_size,
            "seed": sample_seeds(seed, n),
        }
    )
    for j, name in enumerate(labels):
        plan[name] = targets[:, j].astype(np.int8)
    if g:
        base_id = {int(grp): sid for sid, grp, e in zip(plan["sample_id"], group, edits) if grp >= 0 and e == ""}
        plan["pair_id"] = group
        plan["base_sample_id"] = [base_id[int(grp)] if grp >= 0 and e else "" for grp, e in zip(group, edits)]
        plan["edit"] = edits
        log.info("plan pairs: %d base(s) with %d variant(s) each (%s), %d of %d samples", g, k, ", ".join(pairs.findings), g * (k + 1), n)
    log.info("plan (%s): %d samples, %d combinations, %d shard(s)", pc.mode, n, len(keys), int(plan["shard"].max()) + 1)
    return plan


def write_plan(plan: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the plan as Parquet, atomically."""
    with atomic_path(path) as tmp:
        plan.to_parquet(tmp, index=False)


def read_plan(path: str | os.PathLike, labels: Sequence[str]) -> pd.DataFrame:
    """Read a plan and check it has the columns this config needs (error names the file and what to do)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing: run the plan rule first (snakemake plan)")
    plan = pd.read_parquet(path)
    need = ["sample_id", "shard", "index", "seed", *labels]
    missing = [c for c in need if c not in plan.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the plan was made with other labels, rerun the plan rule")
    return plan


def build_plan(labels_path: str | os.PathLike, cfg: Mapping[str, Any], labels: Sequence[str], seed: int, out_path: str | os.PathLike,
               checker_metrics: str | os.PathLike | None = None, pairs: Any = None) -> pd.DataFrame:
    """Workflow entry point: read the prepared dataset's labels, make the plan, write it atomically.

    With ``lco.plan.min_checker_sensitivity`` > 0 and the checker's ``metrics.json``, findings the checker
    sees on fewer real test scans than that are left out of the plan, with a warning (the card repeats it):
    planning what nobody can verify only makes samples whose labels no second judge can confirm.
    """
    from ..data.store import PreparedDataset

    real = PreparedDataset(os.path.dirname(os.fspath(labels_path)) or ".").table
    floor = PlanConfig.from_section(cfg).min_checker_sensitivity
    drop: dict[str, float | None] = {}
    if floor > 0:
        if checker_metrics is None:
            raise ValueError("lco.plan.min_checker_sensitivity needs the checker's metrics.json")
        drop = unverifiable_findings(checker_metrics, labels, floor)
        for name, tpr in drop.items():
            seen = "no real test scan shows it" if tpr is None else f"the checker calls it on {100 * tpr:.0f} % of the real test scans that show it"
            log.warning("plan: %s left out: %s, below lco.plan.min_checker_sensitivity %g", name, seen, floor)
    if pairs is not None:
        gone = [f for f in pairs.findings if f in drop]
        if gone and pairs.share > 0:
            raise ValueError(f"archive.pairs.findings: {', '.join(gone)} left out of the plan (lco.plan.min_checker_sensitivity); "
                             "a pair must not edit a finding nobody can verify: remove it from archive.pairs.findings")
    plan = make_plan(cfg, labels, real, seed, drop=list(drop), pairs=pairs)
    write_plan(plan, out_path)
    return plan

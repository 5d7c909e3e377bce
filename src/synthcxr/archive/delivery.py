"""Planned against released: what a release delivers of its plan, per finding and per combination, and the
floor (``archive.min_delivery``) below which no release is made.

An archive is wanted for the findings a recipient lacks real scans of, and those are exactly the targets
label optimisation fails on most. A release that quietly leaves them out looks complete; this module makes
the shortfall part of the contract: ``archive.json`` (key ``delivery``), the dataset card and the release
log state it, a shortfall is a warning, and one below the floor stops the release with a message that
names what is short and what to try.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("synthcxr")

#: Combinations planned fewer times than this are reported but never warned about on their own: one
#: failure of a combination planned twice is half of it, and says little.
MIN_PLANNED_COMBINATION = 3

#: What to try when a finding is short, in the order that usually pays.
REMEDIES = (
    "check the checker's sensitivity on real scans of it (results/classifier/check/metrics.json): a finding "
    "the classifiers cannot see at this resolution cannot be confirmed",
    "raise lco.steps / lco.retries / lco.init_candidates, or lower lco.margin",
    "train the GAN to show rare findings more often (pggan.finding_floor) or longer (pggan.total_kimg)",
    "plan fewer of it (lco.plan quotas) or drop it from labels",
    "lower archive.min_delivery to release what was reached",
)


class DeliveryError(RuntimeError):
    """The release would deliver less of some finding than ``archive.min_delivery`` allows."""


def finding_mix_tv(planned: Mapping[str, int], released: Mapping[str, int]) -> float | None:
    """Total variation distance between the planned and the released finding mix (each normalised to 1).

    A sample counts once for every finding in its target, as in the per-finding counts.
    """
    names = list(planned)
    p = np.array([planned[n] for n in names], float)
    r = np.array([released.get(n, 0) for n in names], float)
    if p.sum() == 0 or r.sum() == 0:
        return None
    return round(float(0.5 * np.abs(p / p.sum() - r / r.sum()).sum()), 6)


def delivery_table(
    targets: pd.DataFrame, names: Sequence[str], released: np.ndarray, failed: np.ndarray,
    with_pair: np.ndarray | None = None,
) -> dict[str, Any]:
    """Planned, released, failed (LCO) and withheld (audits) per finding and per label combination.

    ``targets`` holds one row per planned sample with a 0/1 column per label and ``combination``;
    ``released`` and ``failed`` are boolean masks over its rows (withheld = neither). ``with_pair`` (releases
    with paired counterfactuals) marks the rows withheld only because another member of their pair was not
    released; they are counted as ``withheld_with_pair``, apart from what the audits withheld.
    """
    released, failed = np.asarray(released, bool), np.asarray(failed, bool)
    withheld = ~released & ~failed
    paired = None if with_pair is None else np.asarray(with_pair, bool) & withheld
    if paired is not None:
        withheld &= ~paired

    def row(m: np.ndarray) -> dict[str, Any]:
        planned, got = int(m.sum()), int((m & released).sum())
        out = {"planned": planned, "released": got, "failed": int((m & failed).sum()), "withheld": int((m & withheld).sum()),
               "share": round(got / planned, 6) if planned else None}
        if paired is not None:
            out["withheld_with_pair"] = int((m & paired).sum())
        return out

    per_finding = {n: row(targets[n].to_numpy() == 1) for n in names}
    combos = targets["combination"].astype(str).to_numpy()
    per_combination = {c: row(combos == c) for c in sorted(set(combos))}
    return {
        "planned": int(len(targets)),
        "released": int(released.sum()),
        "share": round(float(released.mean()), 6) if len(targets) else None,
        "finding_mix_tv": finding_mix_tv({n: v["planned"] for n, v in per_finding.items()},
                                         {n: v["released"] for n, v in per_finding.items()}),
        "per_finding": per_finding,
        "per_combination": per_combination,
    }


def _fmt(name: str, row: Mapping[str, Any]) -> str:
    pair = f", {row['withheld_with_pair']} withheld with their pair" if row.get("withheld_with_pair") else ""
    return (f"{name} {row['released']} of {row['planned']} ({100 * row['share']:.0f} %; {row['failed']} failed LCO, "
            f"{row['withheld']} withheld by audits{pair})")


def shortfalls(delivery: Mapping[str, Any], min_delivery: float) -> tuple[list[str], list[str]]:
    """``(below the floor, short but above it)``: one line per finding, then per combination planned at least
    :data:`MIN_PLANNED_COMBINATION` times (combinations only warn: the floor is about findings)."""
    below, short = [], []
    for n, row in delivery["per_finding"].items():
        if not row["planned"] or row["released"] == row["planned"]:
            continue
        (below if row["share"] < min_delivery else short).append(_fmt(n, row))
    for c, row in delivery["per_combination"].items():
        if row["planned"] >= MIN_PLANNED_COMBINATION and row["released"] < row["planned"]:
            short.append("combination " + _fmt(c, row))
    return below, short


def enforce_delivery(delivery: Mapping[str, Any], min_delivery: float, where: str) -> list[str]:
    """Raise :class:`DeliveryError` when a finding is delivered below ``min_delivery`` of its plan; log every
    other shortfall as a warning and return those lines."""
    below, short = shortfalls(delivery, min_delivery)
    if below:
        raise DeliveryError(
            f"{where}: archive.min_delivery is {min_delivery:g} of each finding's planned count, but the release would "
            f"deliver {'; '.join(below)}. Nothing was released. To try: " + "; ".join(REMEDIES) + "."
        )
    for line in short:
        log.warning("DELIVERY SHORT: %s", line)
    return short


def summary_line(delivery: Mapping[str, Any]) -> str:
    """One line: released of planned overall and per finding (the release log ends with it)."""
    if delivery["share"] is None:
        return "nothing was planned"
    per = ", ".join(f"{n} {r['released']}/{r['planned']}" for n, r in delivery["per_finding"].items() if r["planned"])
    return (f"delivered {delivery['released']} of {delivery['planned']} planned samples ({100 * delivery['share']:.1f} %); "
            f"per finding: {per}")


PLAN_MODES = {
    "match_real": "the real training split's mix of label combinations",
    "balanced": "an equal number of samples per label",
    "quotas": "explicit counts per label combination",
    "augment": "every finding raised to at least {min_positives} samples (real combinations only), the rest as the real mix",
}


def card_section(delivery: Mapping[str, Any], plan: Mapping[str, Any] | None = None) -> list[str]:
    """Markdown lines for the dataset card: the plan's mode, then planned against released, per finding and
    per combination."""
    def pct(row):
        return "-" if row["share"] is None else f"{100 * row['share']:.0f} %"

    lines = ["## Delivery: planned against released", ""]
    if plan and plan.get("mode") in PLAN_MODES:
        what = PLAN_MODES[plan["mode"]].format(min_positives=plan.get("min_positives"))
        lines += [f"Label plan: `{plan['mode']}` ({what}; `lco.plan` in `archive.json`'s config).", ""]
    lines += [f"{delivery['released']} of {delivery['planned']} planned samples were released. A sample counts for "
              "every finding in its label combination. *Failed*: label optimisation did not reach the target at the "
              "acceptance rule; *withheld*: an audit held it back.", ""]
    tv = delivery.get("finding_mix_tv")
    if tv is not None:
        lines += [f"Total variation between the planned and the released finding mix: {tv:.3f}.", ""]
    unplanned = [n for n, r in delivery["per_finding"].items() if not r["planned"]]
    floor = float((plan or {}).get("min_checker_sensitivity") or 0)
    if unplanned and floor > 0:
        lines += [f"**Not planned:** {', '.join(unplanned)}. The plan leaves out every finding the independent checker "
                  f"calls on fewer than {100 * floor:g} % of the real test scans that show it "
                  "(`lco.plan.min_checker_sensitivity`; the plan log gives each rate): no second judge could confirm "
                  "such labels. This release holds no sample of them.", ""]
    elif unplanned:
        lines += [f"**Not planned:** {', '.join(unplanned)} (the label plan asked for none).", ""]
    short = [n for n, r in delivery["per_finding"].items() if r["planned"] and r["released"] < r["planned"]]
    if short:
        lines += [f"**Short of plan:** {', '.join(short)}. A model trained on this release sees fewer of these "
                  "than planned; absent findings are absent.", ""]
    paired = any("withheld_with_pair" in r for r in delivery["per_finding"].values())
    lines += ["| finding | planned | released | delivered | failed | withheld |" + (" withheld with pair |" if paired else ""),
              "|---|---|---|---|---|---|" + ("---|" if paired else "")]
    lines += [f"| {n} | {r['planned']} | {r['released']} | {pct(r)} | {r['failed']} | {r['withheld']} |"
              + (f" {r.get('withheld_with_pair', 0)} |" if paired else "") for n, r in delivery["per_finding"].items()]
    lines += ["", "| label combination | planned | released | delivered |", "|---|---|---|---|"]
    combos = sorted(delivery["per_combination"].items(), key=lambda kv: (-kv[1]["planned"], kv[0]))
    lines += [f"| {c} | {r['planned']} | {r['released']} | {pct(r)} |" for c, r in combos]
    return [*lines, ""]

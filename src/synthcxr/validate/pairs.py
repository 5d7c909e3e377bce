"""Validation of paired counterfactuals (pairs.json): did each variant change only its finding, and is it
still the same synthetic patient as its base?

- **Flip.** The independent checker, at its operating points, calls the edited finding on the variant and
  not on the base (``+F``), or the reverse (``-F``); **unchanged**: it makes the same call on base and
  variant for every other finding.
- **Same patient.** The re-identification verifier scores base against variant (best cosine over shifts
  of up to ``align`` px, as the audit scores), beside its scores for real follow-up pairs (two studies of one
  held-out patient) and for held-out pairs of different patients. Both are reported as the share called
  "same patient" at the audit threshold and at the verifier's equal-error threshold on those held-out pairs.
- **Where the pixels changed.** Mean absolute difference per pair, and a gallery of base, variant and
  difference image. On the phantom, which knows where it draws each finding, also the share of each
  pair's pixel change that falls inside the edited finding's region (:func:`region_shares`; the region
  holds ``REGION_MASS`` of the change that drawing the finding makes to phantom studies), beside the
  region's share of the image, which is what a change spread evenly would put inside it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..archive.reader import open_archive
from ..classifier.evaluate import read_thresholds
from ..data.store import PreparedDataset
from ..labels import NO_FINDING
from ..utils.atomic import write_json
from ..utils.runtime import resolve_device, setup_logging
from . import figures
from .oracle import load_for_labels, model_probs
from .verifier import best_scores, eligible_patients, embed_views

log = logging.getLogger("synthcxr")


def flip_table(base_calls: np.ndarray, var_calls: np.ndarray, edits: Sequence[str], names: Sequence[str]) -> pd.DataFrame:
    """Per pair: ``flipped`` (the checker sees the edit) and ``others_unchanged`` (every other finding keeps its call)."""
    findings = [n for n in names if n != NO_FINDING]
    cols = {n: j for j, n in enumerate(names)}
    flipped, unchanged = [], []
    for b, v, e in zip(base_calls, var_calls, edits):
        f, add = e[1:], e[0] == "+"
        j = cols[f]
        flipped.append(bool(v[j] and not b[j]) if add else bool(b[j] and not v[j]))
        unchanged.append(all(b[cols[o]] == v[cols[o]] for o in findings if o != f))
    return pd.DataFrame({"flipped": flipped, "others_unchanged": unchanged})


def equal_error_threshold(same: np.ndarray, different: np.ndarray) -> float:
    """The cut at which the share of same-patient pairs below it equals the share of other pairs above it."""
    cuts = np.unique(np.concatenate([same, different]))
    miss = np.array([(same <= t).mean() for t in cuts])
    false = np.array([(different > t).mean() for t in cuts])
    return float(cuts[int(np.argmin(np.abs(miss - false)))])


def followup_scores(model: torch.nn.Module, prep: PreparedDataset, res: int, align: int, device: torch.device,
                    cap: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores of real follow-up pairs (first two studies of a held-out patient) and of as many pairs of
    different held-out patients (each first study against the next patient's second)."""
    table = prep.table[prep.table["split"].isin(["val", "test"])]
    patients = eligible_patients(table)
    keys = np.random.default_rng(seed).permutation(sorted(patients))[:cap]
    if len(keys) < 2:
        raise ValueError(f"{prep.labels_path}: fewer than two held-out patients with two studies; no follow-up pairs to compare with")
    first = np.array([patients[k][0] for k in keys])
    second = np.array([patients[k][1] for k in keys])
    a = embed_views(model, prep.read_images(res, first), 0, device)[0]  # the reference: unshifted
    b = embed_views(model, prep.read_images(res, second), align, device)
    same = best_scores(b, a)
    diff = best_scores(torch.roll(b, 1, dims=1), a)
    return same, diff


#: Share of a finding's mean pixel change (phantom atlas) that its region holds.
REGION_MASS = 0.9


def region_shares(base: np.ndarray, var: np.ndarray, edits: Sequence[str], atlas: Mapping[str, np.ndarray],
                  mass: float = REGION_MASS) -> dict[str, Any]:
    """Per edit: the share of each pair's ``|variant - base|`` inside the finding's region (median, mean), the
    region's share of the image, and their ratio (1: no more inside than an even spread would put there)."""
    from ..data.phantom.atlas import region

    change = np.abs(var.astype(np.float64) - base.astype(np.float64))
    total = change.sum(axis=(1, 2))
    edits = np.asarray(edits, dtype=str)
    masks = {f: region(atlas[f], mass) for f in sorted({e[1:] for e in edits})}
    inside = np.full(len(edits), np.nan)
    for j, e in enumerate(edits):
        if total[j] > 0:
            inside[j] = change[j][masks[e[1:]]].sum() / total[j]
    out: dict[str, Any] = {"mass": mass, "per_edit": {}}
    for e in sorted(set(edits)):
        got = inside[edits == e]
        area = float(masks[e[1:]].mean())
        med = float(np.nanmedian(got)) if np.isfinite(got).any() else None
        out["per_edit"][e] = {"n": int(len(got)), "region_area": area, "inside_median": med,
                              "inside_mean": None if med is None else float(np.nanmean(got)),
                              "enrichment": None if med is None else med / area}
    ok = np.isfinite(inside)
    out["inside_median"] = float(np.median(inside[ok])) if ok.any() else None
    return out


def run_pairs(archive_dir: str | os.PathLike, prepared_dir: str | os.PathLike, checker_path: str | os.PathLike,
              checker_thresholds: str | os.PathLike, verifier_path: str | os.PathLike | None, out_json: str | os.PathLike,
              out_gallery: str | os.PathLike, device: str = "auto", gallery: int = 8, align: int = 1,
              phantom: Mapping[str, Any] | None = None, log_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """Stage entry point: pairs.json and the gallery for a release's paired counterfactuals; ``align`` is the
    audit's shift tolerance (``validate.reid.align``); without ``verifier_path`` the same-patient part is left out;
    ``phantom`` (the ``dataset.phantom`` section, when the phantom is the dataset) adds the finding-region check."""
    setup_logging(log_file)
    dev = resolve_device(device)
    arc = open_archive(archive_dir, sealed=False)
    pairs = arc.pairs()
    names = list(arc.label_names)
    result: dict[str, Any] = {"n_pairs": int(pairs["pair_id"].nunique()) if len(pairs) else 0, "n_variants": int(len(pairs))}
    counts = arc.info.get("counts", {})
    result["planned"] = {k: counts.get(k) for k in ("n_pairs_planned", "n_pairs_released", "n_variants_planned", "n_variants_released")}
    if not len(pairs):
        write_json(out_json, result)
        figures.counterfactual_gallery([], out_gallery)
        return result
    base = np.stack([arc.read(s) for s in pairs["base_sample_id"]])
    var = np.stack([arc.read(s) for s in pairs["sample_id"]])
    C = load_for_labels(checker_path, names, dev)
    cut = np.array([read_thresholds(checker_thresholds)[n] for n in names], dtype=np.float32)
    ft = flip_table(model_probs(C, base, names, dev, 128) >= cut, model_probs(C, var, names, dev, 128) >= cut, pairs["edit"].tolist(), names)
    diff = np.abs(var.astype(np.int16) - base.astype(np.int16))
    per_edit = {e: {"n": int(len(g)), "flipped": float(ft.loc[g.index, "flipped"].mean()),
                    "others_unchanged": float(ft.loc[g.index, "others_unchanged"].mean())} for e, g in pairs.groupby("edit")}
    result["checker"] = {"flipped": float(ft["flipped"].mean()), "others_unchanged": float(ft["others_unchanged"].mean()),
                         "flipped_and_unchanged": float((ft["flipped"] & ft["others_unchanged"]).mean()), "per_edit": per_edit}
    man = arc.manifest.set_index("sample_id").loc[pairs["sample_id"]]
    if {"g_evals", "grad_steps"} <= set(man.columns):  # a variant's own optimisation, from its base's latent
        result["cost_per_variant"] = {"forwards": float(man["g_evals"].mean()), "backwards": float(man["grad_steps"].mean())}
    for col in ("latent_dist", "embed_dist"):  # the proximity LCO reached (embed_dist: only with archive.pairs.embed_weight)
        vals = man[col].to_numpy(np.float64) if col in man.columns else np.zeros(0)
        if np.isfinite(vals).any():
            result[f"{col}_median"] = float(np.nanmedian(vals))
    result["pixels"] = {"mean_abs_diff": float(diff.mean()), "per_pair_mean_abs_diff_median": float(np.median(diff.mean(axis=(1, 2))))}
    if phantom is not None:
        from ..data.phantom import PhantomConfig
        from ..data.phantom.atlas import finding_atlas

        edited = sorted({e[1:] for e in pairs["edit"]})
        atlas = finding_atlas(PhantomConfig.from_section(phantom), edited, int(base.shape[-1]))
        result["region"] = region_shares(base, var, pairs["edit"].tolist(), atlas)
    if verifier_path is not None:
        from .reid import load_verifier

        model, meta = load_verifier(verifier_path, dev)
        res = int(model.arch["res"])
        scores = best_scores(embed_views(model, var, align, dev), embed_views(model, base, 0, dev)[0])
        same, different = followup_scores(model, PreparedDataset(prepared_dir), res, align, dev)
        audit, eer = float(meta["threshold"]), equal_error_threshold(same, different)
        result["verifier"] = {
            "audit_threshold": audit, "equal_error_threshold": eer,
            "pairs": {"n": int(len(scores)), "median_score": float(np.median(scores)),
                      "same_at_audit": float((scores > audit).mean()), "same_at_eer": float((scores > eer).mean())},
            "real_followups": {"n": int(len(same)), "median_score": float(np.median(same)),
                               "same_at_audit": float((same > audit).mean()), "same_at_eer": float((same > eer).mean())},
            "real_different_patients": {"n": int(len(different)), "median_score": float(np.median(different)),
                                        "same_at_audit": float((different > audit).mean()), "same_at_eer": float((different > eer).mean())},
        }
    write_json(out_json, result)
    order = np.argsort(-diff.mean(axis=(1, 2)))[:gallery]
    figures.counterfactual_gallery([(base[i], var[i], pairs["edit"].iloc[i]) for i in order], out_gallery)
    c = result["checker"]
    msg = (f"pairs: {result['n_variants']} variant(s) of {result['n_pairs']} base(s); checker sees the edit on {c['flipped']:.1%}, "
           f"every other finding unchanged on {c['others_unchanged']:.1%}")
    if "verifier" in result:
        v = result["verifier"]
        msg += (f"; verifier calls a pair one patient on {v['pairs']['same_at_audit']:.1%} at the audit threshold "
                f"({v['real_followups']['same_at_audit']:.1%} of real follow-ups)")
    log.info(msg)
    print(msg)
    return result


def card_section(info: Mapping[str, Any], result: Mapping[str, Any] | None) -> str | None:
    """The dataset card's section on paired counterfactuals (None when the release holds none)."""
    c = info.get("counts", {})
    if not c.get("n_pairs_planned"):
        return None
    lines = [
        "### Paired counterfactuals",
        "",
        f"{c['n_pairs_released']} of {c['n_pairs_planned']} planned pairs are released, with {c['n_variants_released']} of "
        f"{c['n_variants_planned']} variants. A pair is a base sample (a synthetic patient) and variants that each add or "
        "remove one finding (`edit`, e.g. `+Effusion`), optimised from the base's latent with a proximity term. Every shard "
        "format and the manifest carry `pair_id`, `base_sample_id` and `edit`; `synthcxr.archive.open(path).pairs()` lists "
        "each variant with its base. A pair is released whole: a gate that withholds one member withholds the pair.",
        "",
    ]
    if result and "checker" in result:
        ch = result["checker"]
        lines += [f"- the independent checker sees the edit on {100 * ch['flipped']:.1f} % of the variants and every other "
                  f"finding unchanged on {100 * ch['others_unchanged']:.1f} %"]
    if result and "verifier" in result:
        v = result["verifier"]
        lines += [f"- the re-identification verifier calls base and variant one patient on {100 * v['pairs']['same_at_audit']:.1f} % "
                  f"of pairs at the audit threshold ({100 * v['real_followups']['same_at_audit']:.1f} % of real follow-up studies of "
                  f"one patient) and on {100 * v['pairs']['same_at_eer']:.1f} % at its equal-error threshold "
                  f"({100 * v['real_followups']['same_at_eer']:.1f} %)"]
    if result and result.get("region"):
        per = result["region"]["per_edit"]
        lines += ["- share of each pair's pixel change inside the edited finding's region on the phantom (median; the "
                  "region's share of the image in brackets): " + ", ".join(
                      f"{e} {100 * r['inside_median']:.0f} % ({100 * r['region_area']:.0f} %)" for e, r in per.items()
                      if r["inside_median"] is not None)]
    return "\n".join(lines + [""])

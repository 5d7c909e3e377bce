"""Paired counterfactuals: from an optimised base latent (the synthetic "patient"), variants that add or
remove exactly one finding each, optimised from the base with a proximity term so everything else stays.

A variant's target is its base's with one finding flipped (No_Finding follows: on once no finding is
left, off once one is added). It starts at the base latent and runs one attempt of the batched
optimiser (:func:`~.stream.optimise_stream`), up to ``lco.steps`` updates whatever ``lco.patience`` says, with an
:class:`~.stream.Anchor`: the loss adds
``latent_weight * |z - z_base|^2 / d`` and, given a patient-verifier embedding, ``embed_weight * (1 - cos)``
between the variant's and the base's embeddings. The accept rule is the one every sample meets.

A variant the proximity term holds short of its target gets up to ``relax_rounds`` further attempts, each
continuing from where the last stopped with both proximity weights scaled by ``relax_factor`` once more:
only the variants that need it trade closeness for their edit, and ``attempts`` records how far each went
(attempt ``k`` ran at ``relax_factor ** (k - 1)`` of the weights). With a feature offset (``lco.feature_res``)
a variant keeps its base's offset and moves only the latent.

A pair still short (its base or a variant unmet) draws a new base for the same target, seeded by
:func:`~.seeds.rebase_seed`, for up to ``archive.pairs.rebase_rounds`` rounds (:func:`optimise_pairs`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from .accept import LabelSpace
from .config import LCOConfig
from .memory import plan_chunks
from .optimize import optimise_latents
from .pair_plan import PairsConfig
from .realism import RealismGate
from .seeds import rebase_seed
from .starts import latent_length, module_device
from .stream import Anchor, Results, optimise_stream

log = logging.getLogger("synthcxr")


@torch.no_grad()
def _embed_all(G: torch.nn.Module, embed: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([embed(G(z[s : s + chunk]).float()) for s in range(0, len(z), chunk)]) if len(z) else z.new_zeros(0, 0)


def optimise_variants(
    G: torch.nn.Module,
    C: torch.nn.Module,
    space: LabelSpace,
    base_z: np.ndarray,
    variants: pd.DataFrame,
    cfg: LCOConfig,
    latent_weight: float,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    embed_weight: float = 0.0,
    gate: RealismGate | None = None,
    relax_rounds: int = 0,
    relax_factor: float = 0.5,
) -> pd.DataFrame:
    """Optimise every row of ``variants`` (:func:`variant_targets`) from ``base_z[base_row]`` (with a realism
    ``gate``, a variant is met only within its distance too, as any sample), then the unmet ones again for
    up to ``relax_rounds`` rounds at ``relax_factor`` times the previous round's proximity weights.

    Returns ``variants`` with z, prob_<label>, steps (of the last attempt), g_evals and grad_steps (over all),
    attempts (1 + the relax rounds it took), success, reason and the
    proximity reached: ``latent_dist`` (``|z - z_base| / sqrt(d)`` over the latent part, a feature offset aside) and, with ``embed``, ``embed_dist``
    (``1 - cos`` of the two images' embeddings).
    """
    labels = cfg.labels
    targets = variants[[f"target_{n}" for n in labels]].to_numpy(np.float32)
    base_rows = variants["base_row"].to_numpy(np.int64)
    n, d = len(targets), int(G.latent_dim)
    G.eval()
    C.eval()
    device = module_device(G, cfg.device)
    chunks = plan_chunks(G, C, device, cfg.batch_size, cfg.memory_mb, cfg.amp)
    start = torch.as_tensor(np.asarray(base_z, dtype=np.float32)[base_rows], device=device)
    e_base = _embed_all(G, embed, start, chunks.score_chunk) if embed is not None else None
    # no fresh draws: every start is the base, feature offset (lco.feature_res) included
    res = Results.empty(np.zeros(n, dtype=np.int64), latent_length(G, cfg.feature_res), len(labels))
    # A variant starts at its base or not at all: one attempt, no top-up, and no patience, which cuts a stalled
    # attempt short only to fund a fresh start that a variant never gets (it would forfeit steps, not move them).
    # The feature offset (lco.feature_res) stays the base's: the proximity terms price latent moves, so a free
    # offset would carry the edit as a local feature patch that steers the classifier and nothing else (on the
    # quick demo the checker then saw 4 of 14 +Cardiomegaly edits); the variant edits the patient's latent.
    one_try = dataclasses.replace(cfg, retries=0, topup_rounds=0, patience=None, feature_lr=0.0)
    combo = np.unique(targets, axis=0, return_inverse=True)[1].reshape(-1) if n else np.zeros(0, np.int64)
    todo = np.arange(n)
    for rnd in range(int(relax_rounds) + 1):
        if not len(todo):
            break
        scale = float(relax_factor) ** rnd
        anchor = Anchor(start, float(latent_weight) * scale, embed, e_base, float(embed_weight) * scale)
        # round 0 starts at the base; a relaxed round continues from where the last one stopped
        work = [(int(i), 0, start[i] if rnd == 0 else torch.as_tensor(res.z[i], device=device)) for i in todo]
        optimise_stream(G, C, space, targets, res.seed, one_try, device, work, res, combo, np.zeros(n, bool),
                        chunks.step_batch, chunks.score_chunk, anchor=anchor, gate=gate)
        res.attempts[todo] = rnd + 1
        todo = todo[~res.success[todo]]
    out = variants.copy()
    out["z"] = list(res.z)
    for j, name in enumerate(labels):
        out[f"prob_{name}"] = res.probs[:, j]
    out["steps"], out["g_evals"], out["grad_steps"], out["success"] = res.steps, res.g_evals, res.grad_steps, res.success
    out["attempts"] = res.attempts
    out["reason"] = [res.reason(i, targets[i], space, cfg.steps, gate) for i in range(n)]
    zt = torch.as_tensor(res.z, device=device)
    out["latent_dist"] = ((zt[:, :d] - start[:, :d]).pow(2).sum(1) / d).sqrt().cpu().numpy() if n else np.zeros(0)
    if embed is not None:
        e = _embed_all(G, embed, zt, chunks.score_chunk)
        out["embed_dist"] = (1.0 - (e * e_base).sum(1)).cpu().numpy()
        out["g_evals"] = out["g_evals"] + 2.0  # the base's and the variant's embedding
    return out


def _variant_rows(var: pd.DataFrame, base_i: np.ndarray, res: pd.DataFrame, G: Any, C: Any, space: LabelSpace,
                  lc: LCOConfig, pairs: PairsConfig, embed: Any = None, gate: RealismGate | None = None) -> pd.DataFrame:
    """The variant rows ``var`` optimised from their bases, row ``base_i`` of ``res`` each: one result row per
    variant, in order; a variant whose base was not met stays unmet, at its base's latent."""
    base_ok = res["success"].to_numpy()[base_i]
    variants = pd.DataFrame({"base_row": base_i, "edit": var["edit"].to_numpy()})
    for n in lc.labels:
        variants[f"target_{n}"] = var[n].to_numpy(np.int8)
    base_z = np.stack(res["z"].to_numpy()) if len(res) else np.zeros((0, int(G.latent_dim)), np.float32)
    done = optimise_variants(G, C, space, base_z, variants[base_ok].reset_index(drop=True), lc, pairs.latent_weight,
                             embed=embed, embed_weight=pairs.embed_weight, gate=gate, relax_rounds=pairs.relax_rounds,
                             relax_factor=pairs.relax_factor)
    ok = np.flatnonzero(base_ok)  # variants optimised: done's rows, in order

    def scattered(col: str, missing: Any, dtype: Any) -> np.ndarray:
        arr = np.full(len(var), missing, dtype=dtype)
        arr[ok] = done[col].to_numpy()
        return arr

    z = list(base_z[base_i])  # a variant whose base failed keeps the base's latent, unmet
    for j, i in enumerate(ok):
        z[i] = done["z"].iloc[j]
    vres = pd.DataFrame({"seed": var["seed"].to_numpy(np.int64), "attempts": scattered("attempts", 0, np.int64), "z": z})
    for n in lc.labels:
        vres[f"target_{n}"] = var[n].to_numpy(np.int8)
    for n in lc.labels:
        vres[f"prob_{n}"] = scattered(f"prob_{n}", np.nan, np.float32)
    vres["steps"], vres["g_evals"] = scattered("steps", 0, np.int64), scattered("g_evals", 0.0, np.float64)
    vres["grad_steps"], vres["success"] = scattered("grad_steps", 0, np.int64), scattered("success", False, bool)
    vres["reason"] = scattered("reason", "", object)
    vres.loc[~base_ok, "reason"] = [f"its base {b} was not met" for b in var.loc[~base_ok, "base_sample_id"]]
    vres["latent_dist"] = scattered("latent_dist", np.nan, np.float32)
    vres["embed_dist"] = scattered("embed_dist", np.nan, np.float32) if embed is not None else np.float32(np.nan)
    return vres


_COSTS = ("g_evals", "grad_steps")


def _take(dst: pd.DataFrame, rows: np.ndarray, src: pd.DataFrame, src_rows: np.ndarray, adopt: np.ndarray) -> None:
    """Rows ``rows`` of ``dst`` pay for rows ``src_rows`` of ``src`` (their costs add) and, where ``adopt``,
    become them."""
    for col in _COSTS:
        dst.loc[rows, col] = dst.loc[rows, col].to_numpy() + src[col].to_numpy()[src_rows]
    to, frm = rows[adopt], src_rows[adopt]
    if not len(to):
        return
    for col in dst.columns:
        if col in _COSTS or col not in src.columns:
            continue
        if col == "z":  # one array per row
            z = list(dst["z"])
            for r, s in zip(to, frm):
                z[r] = src["z"].iloc[s]
            dst["z"] = z
        else:
            dst.loc[to, col] = src[col].to_numpy()[frm]


def _rebase(single: pd.DataFrame, var: pd.DataFrame, base_i: np.ndarray, res: pd.DataFrame, vres: pd.DataFrame, G: Any,
            C: Any, space: LabelSpace, lc: LCOConfig, pairs: PairsConfig, embed: Any, gate: RealismGate | None,
            pool_seed: int | None) -> np.ndarray:
    """``archive.pairs.rebase_rounds``: a pair left short (its base unmet, or a variant) draws a new base for the
    same target from the next rebase seed, and its variants from it; the pair takes the new members when more
    of them are met (base and variants counted alike), else keeps its own, bytes and all. Every round's
    evaluations are charged to the pair's rows, taken or not. ``res`` and ``vres`` change in place; returns which
    variants are now on a new base."""
    moved = np.zeros(len(var), dtype=bool)
    size = 1 + np.bincount(base_i, minlength=len(res))  # members per base row: the base and its variants
    for rnd in range(1, pairs.rebase_rounds + 1):
        met = res["success"].to_numpy() + np.bincount(base_i, weights=vres["success"].to_numpy(), minlength=len(res))
        short = np.flatnonzero((size > 1) & (met < size))  # base rows of the pairs left short
        if not len(short):
            break
        seeds = np.array([rebase_seed(int(s), rnd) for s in single["seed"].to_numpy()[short]], dtype=np.int64)
        new = optimise_latents(G, C, space, single[lc.labels].to_numpy()[short], seeds, lc, classifier_labels=list(C.label_names),
                               pool_seed=None if pool_seed is None else rebase_seed(pool_seed, rnd), gate=gate)
        sub = np.flatnonzero(np.isin(base_i, short))
        sub_base = np.searchsorted(short, base_i[sub])  # each retried variant's row in new
        new_v = _variant_rows(var.iloc[sub].reset_index(drop=True), sub_base, new, G, C, space, lc, pairs, embed, gate)
        new_met = new["success"].to_numpy() + np.bincount(sub_base, weights=new_v["success"].to_numpy(), minlength=len(short))
        adopt = new_met > met[short]
        _take(res, short, new, np.arange(len(short)), adopt)
        _take(vres, sub, new_v, np.arange(len(sub)), adopt[sub_base])
        moved[sub[adopt[sub_base]]] = True
        log.info("lco pairs: rebase round %d: %d pair(s) short drew a new base, %d of them took it", rnd, len(short), int(adopt.sum()))
    return moved


def optimise_pairs(rows: pd.DataFrame, single: pd.DataFrame, res: pd.DataFrame, G: Any, C: Any, space: LabelSpace,
                   lc: LCOConfig, pairs: PairsConfig | None, embed: Any = None, gate: RealismGate | None = None,
                   pool_seed: int | None = None) -> pd.DataFrame:
    """A shard's plan ``rows``, whose non-variant rows ``single`` LCO met or not in ``res``: ``res`` with the
    variants optimised from their bases, in plan order, and the pair columns;
    ``embed`` (images -> unit embeddings) adds the embedding proximity term at ``pairs.embed_weight``; pairs left
    short draw new bases for up to ``pairs.rebase_rounds`` rounds (:func:`_rebase`)."""
    if pairs is None:
        raise ValueError("the plan holds paired counterfactuals (an 'edit' column): pass the archive.pairs settings")
    res = res.reset_index(drop=True)
    where = {sid: i for i, sid in enumerate(single["sample_id"])}
    var = rows[rows["edit"] != ""].reset_index(drop=True)
    base_i = np.array([where[b] for b in var["base_sample_id"]], dtype=np.int64)
    vres = _variant_rows(var, base_i, res, G, C, space, lc, pairs, embed, gate)
    moved = _rebase(single.reset_index(drop=True), var, base_i, res, vres, G, C, space, lc, pairs, embed, gate, pool_seed)
    res["latent_dist"] = res["embed_dist"] = np.float32(np.nan)
    out = pd.concat([res, vres], ignore_index=True)
    order = {sid: i for i, sid in enumerate(rows["sample_id"])}
    ids = list(single["sample_id"]) + list(var["sample_id"])
    out = out.iloc[np.argsort([order[s] for s in ids], kind="stable")].reset_index(drop=True)
    out["pair_id"] = rows["pair_id"].to_numpy(np.int64)
    out["base_sample_id"] = rows["base_sample_id"].astype(str).to_numpy()
    out["edit"] = rows["edit"].astype(str).to_numpy()
    kept = vres["success"].to_numpy() & ~moved
    met_at = np.bincount(vres.loc[kept, "attempts"].to_numpy(np.int64), minlength=pairs.relax_rounds + 2)[1:]
    optimised = np.isfinite(vres["latent_dist"].to_numpy(np.float64))
    log.info("lco pairs: %d of %d variant(s) met (%d on their first base, met at attempt 1, 2, ...: %s; %d on a new base); "
             "%d variant(s) with a base not met; mean latent distance %.3f, mean embedding distance %s",
             int(vres["success"].sum()), len(var), int(kept.sum()), ", ".join(map(str, met_at)),
             int((vres["success"].to_numpy() & moved).sum()), int((~optimised).sum()),
             float(np.nanmean(vres["latent_dist"])) if optimised.any() else float("nan"),
             f"{float(np.nanmean(vres['embed_dist'])):.3f}" if optimised.any() and embed is not None else "(not used)")
    return out

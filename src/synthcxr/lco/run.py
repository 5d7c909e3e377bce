"""The per-shard LCO job: plan rows of one shard -> optimised latents Parquet.

One job per shard keeps each unit of work small, restartable and parallel on a cluster; the plan fixes
targets and seeds up front, so shards never need to talk to each other.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..classifier.evaluate import read_thresholds  # thresholds.json belongs to the classifier stage
from ..utils.runtime import fixed_threads, resolve_device, seed_everything, setup_logging
from .accept import LabelSpace, resolve_label_space
from .config import LCOConfig
from .latents import write_latents
from .margins import read_margins
from .optimize import optimise_latents
from .pair_plan import PairsConfig
from .pairs import optimise_variants
from .plan import pool_seed, read_plan, rebase_seed
from .realism import RealismGate, load_gate
from .starts import module_device

log = logging.getLogger("synthcxr")


def run_shard(
    plan_path: str | os.PathLike,
    shard: int | str,
    generator_path: str | os.PathLike,
    classifier_path: str | os.PathLike,
    thresholds_path: str | os.PathLike,
    cfg: Mapping[str, Any],
    out_path: str | os.PathLike,
    log_file: str | os.PathLike | None = None,
    margins_path: str | os.PathLike | None = None,
    pairs: PairsConfig | None = None,
    verifier_path: str | os.PathLike | None = None,
    realism_path: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Optimise the latents of one shard of the plan and write ``latents/shard-XXXXX.parquet``.

    ``cfg`` is the ``lco`` section with the global keys (``synthcxr.config.section(config, 'lco')``);
    ``margins_path`` the lco_margins rule's ``margins.json`` (default: ``lco.margin`` for every label and side);
    ``verifier_path`` the steering patient verifier (rule train_pair_verifier), read when ``pairs.embed_weight`` > 0;
    ``realism_path`` the lco_margins rule's ``realism.npz``, which ``lco.realism_quantile`` needs.
    """
    if log_file is not None:
        setup_logging(log_file)
    from ..classifier import load_classifier
    from ..pggan import load_generator

    lc = LCOConfig.from_section(cfg)
    shard = int(shard)
    plan = read_plan(plan_path, lc.labels)
    rows = plan[plan["shard"] == shard].sort_values("index").reset_index(drop=True)
    if len(rows) == 0:
        have = sorted(int(s) for s in plan["shard"].unique())
        raise ValueError(f"{plan_path}: shard {shard} has no rows (shards present: {have[0]}..{have[-1]}); rerun the plan rule")
    # The thread count comes from config, not from the scheduler: a shard's latents must not depend on --cores.
    fixed_threads(lc.threads)
    seed_everything(lc.seed + shard)
    device = resolve_device(lc.device)
    G = load_generator(generator_path, device)
    C = load_classifier(classifier_path, device)
    space = resolve_label_space(lc.labels, C.label_names, read_thresholds(thresholds_path), where=os.fspath(thresholds_path))
    space = space.with_margins(lc.margin if margins_path is None else read_margins(margins_path, lc.labels))
    gate = None
    if lc.realism_quantile is not None:
        if realism_path is None:
            raise ValueError("lco.realism_quantile is set: pass realism_path, the lco_margins rule's realism.npz")
        gate = load_gate(realism_path)
        if len(gate.mean) != C.n_features:
            raise ValueError(f"{realism_path}: fitted to {len(gate.mean)} classifier features, but {classifier_path} has {C.n_features}; "
                             "rerun the lco_margins rule")
    embed = None
    if pairs is not None and pairs.embed_weight > 0 and verifier_path is not None:
        from ..validate.reid import load_verifier  # verifiers belong to the re-identification stage

        embed, _ = load_verifier(verifier_path, device)
        embed.requires_grad_(False)
    return optimise_shard(rows, shard, G, C, space, lc, out_path, pool_seed=pool_seed(lc.seed, shard), pairs=pairs, embed=embed, gate=gate)


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
            pool_seed_: int | None) -> np.ndarray:
    """``archive.pairs.rebase_rounds``: a pair left short (its base unmet, or a variant) draws a new base for the
    same target from the next rebase seed, and its variants from it; the pair takes the new members when more
    of them are met (base and variants counted alike), else keeps its own, bytes and all. Every round's
    evaluations are charged to the pair's rows, taken or not. ``res`` and ``vres`` change in place; returns which
    variants are now on a new base."""
    moved = np.zeros(len(var), dtype=bool)
    for rnd in range(1, pairs.rebase_rounds + 1):
        met_v = vres["success"].to_numpy()
        groups = np.unique(base_i)
        score = res["success"].to_numpy()[groups].astype(np.int64) + np.array([met_v[base_i == b].sum() for b in groups], dtype=np.int64)
        short = groups[score < 1 + np.bincount(base_i, minlength=len(res))[groups]]
        if not len(short):
            break
        seeds = np.array([rebase_seed(int(s), rnd) for s in single["seed"].to_numpy()[short]], dtype=np.int64)
        new = optimise_latents(G, C, space, single[lc.labels].to_numpy()[short], seeds, lc, classifier_labels=list(C.label_names),
                               pool_seed=None if pool_seed_ is None else rebase_seed(pool_seed_, rnd), gate=gate)
        sub = np.flatnonzero(np.isin(base_i, short))
        new_v = _variant_rows(var.iloc[sub].reset_index(drop=True), np.searchsorted(short, base_i[sub]), new, G, C, space,
                              lc, pairs, embed, gate)
        new_met = new["success"].to_numpy().astype(np.int64) + np.array(
            [new_v["success"].to_numpy()[base_i[sub] == b].sum() for b in short], dtype=np.int64)
        adopt = new_met > score[np.searchsorted(groups, short)]
        _take(res, short, new, np.arange(len(short)), adopt)
        _take(vres, sub, new_v, np.arange(len(sub)), adopt[np.searchsorted(short, base_i[sub])])
        moved[sub[adopt[np.searchsorted(short, base_i[sub])]]] = True
        log.info("lco pairs: rebase round %d: %d pair(s) short drew a new base, %d of them took it", rnd, len(short), int(adopt.sum()))
    return moved


def _with_variants(rows: pd.DataFrame, single: pd.DataFrame, res: pd.DataFrame, G: Any, C: Any, space: LabelSpace,
                   lc: LCOConfig, pairs: PairsConfig | None, embed: Any = None, gate: RealismGate | None = None,
                   pool_seed_: int | None = None) -> pd.DataFrame:
    """``res`` (the non-variant rows) with the shard's variants optimised from their bases, in plan order;
    ``embed`` (images -> unit embeddings) adds the embedding proximity term at ``pairs.embed_weight``; pairs left
    short draw new bases for up to ``pairs.rebase_rounds`` rounds (:func:`_rebase`)."""
    if pairs is None:
        raise ValueError("the plan holds paired counterfactuals (an 'edit' column): pass the archive.pairs settings")
    res = res.reset_index(drop=True)
    where = {sid: i for i, sid in enumerate(single["sample_id"])}
    var = rows[rows["edit"] != ""].reset_index(drop=True)
    base_i = np.array([where[b] for b in var["base_sample_id"]], dtype=np.int64)
    vres = _variant_rows(var, base_i, res, G, C, space, lc, pairs, embed, gate)
    moved = _rebase(single.reset_index(drop=True), var, base_i, res, vres, G, C, space, lc, pairs, embed, gate, pool_seed_)
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


def optimise_shard(
    rows: pd.DataFrame,
    shard: int,
    G: Any,
    C: Any,
    thresholds: Mapping[str, float] | LabelSpace,
    cfg: LCOConfig,
    out_path: str | os.PathLike,
    pool_seed: int | None = None,
    pairs: PairsConfig | None = None,
    embed: Any = None,
    gate: RealismGate | None = None,
) -> pd.DataFrame:
    """Optimise the given plan rows (one shard) with loaded models and write the latents shard.

    ``pool_seed`` seeds the shard's prior pool in pool mode (the lco rule derives it from the config
    seed and the shard number, so a rerun of one shard reproduces its latents). Rows of paired
    counterfactuals (the plan's ``edit`` column) are optimised after the rest, each variant from its
    base's latent with ``pairs.latent_weight`` (:func:`~.pairs.optimise_variants`); a variant whose base
    failed fails too. ``embed`` (images -> unit embeddings: the steering patient verifier) adds the embedding
    proximity term at ``pairs.embed_weight``, which then needs it. A realism ``gate`` (:mod:`.realism`) holds
    every sample, variants included, to its distance as well as to the labels' cuts.
    """
    lc = cfg
    embed = embed if pairs is not None and pairs.embed_weight > 0 else None  # no term, no embedding
    device = module_device(G, lc.device)
    log.info("lco shard %d: %d samples on %s (mode %s, latent_dim %d, %d steps, %d retries, amp %s)", shard, len(rows), device, lc.mode, G.latent_dim, lc.steps, lc.retries, lc.amp)
    t0 = time.perf_counter()
    paired = "edit" in rows.columns and bool((rows["edit"] != "").any())
    if paired and not isinstance(thresholds, LabelSpace):
        thresholds = resolve_label_space(lc.labels, list(C.label_names), thresholds).with_margins(lc.margin)
    if paired and pairs is not None and pairs.embed_weight > 0 and embed is None:
        raise ValueError("archive.pairs.embed_weight > 0 needs the steering patient verifier: pass embed "
                         "(run_shard: verifier_path, the train_pair_verifier rule's verifier.pt)")
    single = rows[rows["edit"] == ""] if paired else rows
    res = optimise_latents(
        G, C, thresholds, single[lc.labels].to_numpy(), single["seed"].to_numpy(), lc, classifier_labels=list(C.label_names), pool_seed=pool_seed,
        gate=gate,
    )
    pool, chunks, unreal = res.attrs.get("pool"), res.attrs.get("chunks"), res.attrs.get("unreal", 0)
    if paired:
        res = _with_variants(rows, single, res, G, C, thresholds, lc, pairs, embed, gate, pool_seed)
    res.insert(0, "index", rows["index"].to_numpy(dtype=np.int64))
    res.insert(0, "shard", np.full(len(rows), shard, dtype=np.int64))
    res.insert(0, "sample_id", rows["sample_id"].astype(str).to_numpy())
    elapsed = time.perf_counter() - t0
    meta = {
        "latent_dim": int(G.latent_dim),
        "labels": lc.labels,
        "steps": lc.steps,
        "lr": lc.lr,
        "prior_weight": lc.prior_weight,
        "retries": lc.retries,
        "topup_rounds": lc.topup_rounds,
        "objective": lc.objective,
        "margin": lc.margin,
        "margins": None if not isinstance(thresholds, LabelSpace) else {
            n: {"below": float(thresholds.margins[0, j]), "above": float(thresholds.margins[1, j])} for j, n in enumerate(thresholds.labels)
        },
        "mode": lc.mode,
        "amp": lc.amp,
        "pool": None if pool is None else {"size": pool.size, "blocks": pool.blocks, "accepted": pool.accepted, "started": pool.started, "strong": pool.strong, "seed": pool_seed},
        "chunks": None if chunks is None else {"score_chunk": chunks.score_chunk, "step_batch": chunks.step_batch},
        "device": str(device),
        "cpu_threads": int(torch.get_num_threads()),
    }
    if lc.feature_res is not None:  # latents longer than latent_dim carry this block's feature offset
        meta["features"] = {"res": lc.feature_res, "weight": lc.feature_weight, "lr": lc.feature_lr, "radius": lc.feature_radius}
    if gate is not None:  # what the realism gate was, and how many targets met every label but not it
        meta["realism"] = {**gate.summary(), "unmet_by_gate": int(unreal)}
        log.info("lco shard %d: realism gate at distance %.2f; %d target(s) met every label's cut but not the gate", shard, gate.threshold, unreal)
    if paired:  # the proximity weights the variants were optimised with (only in shards holding pairs)
        meta["pairs"] = {"latent_weight": pairs.latent_weight, "embed_weight": pairs.embed_weight,
                         "relax_rounds": pairs.relax_rounds, "relax_factor": pairs.relax_factor,
                         "rebase_rounds": pairs.rebase_rounds}
    res.attrs.clear()
    write_latents(res, lc.labels, out_path, meta)
    log.info(
        "lco shard %d: success %.3f (%d/%d), mean steps %.1f, mean g_evals %.1f, %.1f s",
        shard, res["success"].mean(), int(res["success"].sum()), len(res), res["steps"].mean(), res["g_evals"].mean(), elapsed,
    )
    return res

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
from .pairs import optimise_pairs
from .plan import read_plan
from .realism import RealismGate, load_gate
from .seeds import pool_seed
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
        res = optimise_pairs(rows, single, res, G, C, thresholds, lc, pairs, embed, gate, pool_seed)
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

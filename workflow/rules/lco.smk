# Stage 4: latent class optimisation. `plan` fixes every sample's target labels, shard and seed up
# front; `lco` then optimises the latents of one shard per job, so shards run in parallel and a rerun
# of one shard reproduces it exactly.


# With paired counterfactuals (archive.pairs.share > 0) the plan and LCO also read archive.pairs; without,
# their params are their lco keys alone, as they were before pairs existed.
PAIRS_PARAMS = {"archive_pairs": config["archive"]["pairs"]} if config["archive"]["pairs"]["share"] > 0 else {}
LCO_PARAMS = {**stage("lco"), **PAIRS_PARAMS}
# The plan reads only lco.plan, lco.shard_size and which pairs to lay out: an edit of an optimiser key or of
# a proximity weight reruns LCO, not the plan.
PLAN_PARAMS = {**stage("lco", ["plan", "shard_size"]),
               **({"archive_pairs": {k: config["archive"]["pairs"][k] for k in ("share", "findings")}} if PAIRS_PARAMS else {})}
# With lco.realism_quantile, lco_margins also fits the realism gate (real scans' steering features) that LCO reads.
REALISM_ON = config["lco"]["realism_quantile"] is not None


rule plan:
    input:
        labels=f"{PREP}/labels.parquet",
        # only when the plan leaves out what the checker cannot verify
        checker=[f"{CLF}/{config['classifier']['checker']['name']}/metrics.json"]
        if config["lco"]["plan"]["min_checker_sensitivity"] > 0
        else [],
    output:
        plan=f"{ARCH}/plan.parquet",
    params:
        cfg=PLAN_PARAMS,
    log:
        f"{ALOGS}/plan.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/plan.py"


# The logits a latent must clear each threshold by, per label and side (lco.margin, or calibrated on
# the steering classifier's real val scans with lco.margin_quantile).
rule lco_margins:
    input:
        classifier=f"{CLF}/{config['classifier']['name']}/model.pt",
        thresholds=f"{CLF}/{config['classifier']['name']}/thresholds.json",
        images=f"{PREP}/images.h5",
        labels=f"{PREP}/labels.parquet",
    output:
        margins=f"{WORK}/margins.json",
        **({"realism": f"{WORK}/realism.npz"} if REALISM_ON else {}),
    params:
        cfg=stage("lco", ["margin", "margin_quantile", "margin_real_pass"] + (["realism_quantile", "realism_weight"] if REALISM_ON else [])),
    log:
        f"{ALOGS}/lco_margins.log",
    threads: 2
    conda:
        CONDA_ENV
    script:
        "../scripts/lco_margins.py"


rule lco:
    input:
        plan=f"{ARCH}/plan.parquet",
        generator=f"{PGGAN}/generator.pt",
        classifier=f"{CLF}/{config['classifier']['name']}/model.pt",
        thresholds=f"{CLF}/{config['classifier']['name']}/thresholds.json",
        margins=f"{WORK}/margins.json",
        realism=[f"{WORK}/realism.npz"] if REALISM_ON else [],
        # only when pair variants keep near their base in a patient verifier's embedding (not the audit's)
        verifier=[f"{REID}/steer/verifier.pt"]
        if PAIRS_ON and config["archive"]["pairs"]["embed_weight"] > 0
        else [],
    output:
        latents=f"{WORK}/latents/shard-{{shard}}.parquet",
    params:
        cfg=LCO_PARAMS,
    log:
        f"{ALOGS}/lco/shard-{{shard}}.log",
    wildcard_constraints:
        shard=r"\d{5}",
    # lco.threads, not the scheduler's --cores, sets the CPU thread count: a shard's bytes never depend on it.
    threads: config["lco"]["threads"]
    conda:
        CONDA_ENV
    script:
        "../scripts/lco.py"

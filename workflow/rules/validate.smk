# Stage 6: validation of the archive against the real data. Figures are wrapped in report() so
# `snakemake --report results/report.html` collects them with the captions in workflow/report/.
VAL_CLASSIFIER = f"{CLF}/{config['classifier']['name']}"
# The checker's model.pt is an input only when the quality metrics use its features (validate.features: checker).
VAL_CHECKER = (
    f"{CLF}/{config['classifier']['checker']['name']}/model.pt" if config["validate"]["features"] == "checker" else []
)


rule validate_memorization:
    """Nearest real training image of every rendered sample (features and pixels); runs before
    finalize_archive, which drops flagged samples when validate.memorization.gate is true."""
    input:
        shards=expand(f"{WORK}/shards/shard-{{shard}}.{{fmt}}", shard=SHARDS, fmt=WORK_FORMATS),
        latents=expand(f"{WORK}/latents/shard-{{shard}}.parquet", shard=SHARDS),
        images=f"{PREP}/images.h5",
        labels=f"{PREP}/labels.parquet",
        checker=VAL_CHECKER,
    output:
        table=f"{VAL}/memorization.parquet",
        summary=f"{VAL}/memorization.json",
        gallery=report(f"{VAL}/memorization_gallery.png", caption="../report/memorization.rst", category="Memorisation"),
    params:
        cfg=stage("validate", ["memorization", "features", "inception_weights", "resize", "feature_res"]),
    log:
        f"{ALOGS}/validate_memorization.log",
    threads: 2
    conda:
        CONDA_ENV
    script:
        "../scripts/validate_memorization.py"


# The re-identification audit: a patient-verification network trained on the real training patients
# (results/reid/{dataset}/), then every rendered sample matched against them; gated like memorisation.
REID_CFG = config["validate"]["reid"]
REID_ON = bool(REID_CFG.get("enabled", True))
REID = f"results/reid/{DATASET}"
# Keys that do not change the verifier (gate, gallery, enabled; the label list) are left out so editing them
# never retrains it. stage() sorts keys: Snakemake compares params as text.
_REID_STAGE = stage("validate", ["reid"])
REID_TRAIN_PARAMS = {
    "reid": {k: v for k, v in _REID_STAGE["reid"].items() if k not in ("gate", "gallery", "enabled")},
    "device": _REID_STAGE["device"],
    "seed": _REID_STAGE["seed"],
}
# The audit reads everything but the gate (which only finalize_archive reads) and the switch.
REID_AUDIT_PARAMS = {**_REID_STAGE, "reid": {k: v for k, v in _REID_STAGE["reid"].items() if k not in ("gate", "enabled")}}


rule train_reid_verifier:
    """Patient-verification network on real training pairs; held-out AUC and the audit threshold."""
    input:
        images=f"{PREP}/images.h5",
        labels=f"{PREP}/labels.parquet",
    output:
        model=f"{REID}/verifier.pt",
        metrics=f"{REID}/verifier.json",
    params:
        cfg=REID_TRAIN_PARAMS,
    log:
        f"{LOGS}/train_reid_verifier-{DATASET}.log",
    threads: 2
    conda:
        CONDA_ENV
    script:
        "../scripts/train_reid_verifier.py"


rule validate_reid:
    """Best-matching training patient of every rendered sample; runs before finalize_archive, which withholds
    matched samples when validate.reid.gate is true."""
    input:
        shards=expand(f"{WORK}/shards/shard-{{shard}}.{{fmt}}", shard=SHARDS, fmt=WORK_FORMATS),
        latents=expand(f"{WORK}/latents/shard-{{shard}}.parquet", shard=SHARDS),
        images=f"{PREP}/images.h5",
        labels=f"{PREP}/labels.parquet",
        verifier=rules.train_reid_verifier.output.model,
        verifier_metrics=rules.train_reid_verifier.output.metrics,
    output:
        table=f"{VAL}/reid.parquet",
        summary=f"{VAL}/reid.json",
        gallery=report(f"{VAL}/reid_gallery.png", caption="../report/reid.rst", category="Privacy"),
    params:
        cfg=REID_AUDIT_PARAMS,
    log:
        f"{ALOGS}/validate_reid.log",
    threads: 2
    conda:
        CONDA_ENV
    script:
        "../scripts/validate_reid.py"


rule validate_fid:
    """FID/KID/precision-recall of the release, real-vs-real baseline, FID over snapshots."""
    input:
        manifest=f"{REL}/manifest.parquet",
        info=f"{REL}/archive.json",
        images=f"{PREP}/images.h5",
        labels=f"{PREP}/labels.parquet",
        checker=VAL_CHECKER,
        generator=f"{PGGAN}/generator.pt",
    output:
        fid=f"{VAL}/fid.json",
        curve=f"{VAL}/fid_curve.json",
        png=report(f"{VAL}/fid_curve.png", caption="../report/fid.rst", category="Fidelity"),
    params:
        cfg=stage("validate", ["features", "inception_weights", "max_real", "kid_subsets", "kid_subset_size", "pr_k",
                               "resize", "feature_res", "fid_n_points"]),
    log:
        f"{ALOGS}/validate_fid.log",
    threads: 2
    conda:
        CONDA_ENV
    script:
        "../scripts/validate_fid.py"


rule validate_tstr:
    """Real, synthetic, real + synthetic and synthetic-pretrain -> real-finetune arms at each real fraction,
    validate.tstr_seeds seeds each, trained fresh with the classifier recipe and equal optimisation steps,
    scored on the real test split."""
    input:
        manifest=f"{REL}/manifest.parquet",
        info=f"{REL}/archive.json",
        images=f"{PREP}/images.h5",
        labels=f"{PREP}/labels.parquet",
    output:
        tstr=f"{VAL}/tstr.json",
        bars=report(f"{VAL}/auroc_bars.png", caption="../report/tstr.rst", category="Utility (TSTR)"),
        fractions=report(f"{VAL}/auroc_fractions.png", caption="../report/tstr.rst", category="Utility (TSTR)"),
        runs=directory(f"{VAL}/tstr_runs"),
    params:
        cfg=stage("classifier"),
        seeds=config["validate"]["tstr_seeds"],
        epochs=config["validate"]["tstr_epochs"],
        fractions=config["validate"]["tstr_real_fractions"],
        arms=config["validate"]["tstr_arms"],
        synthetic_share=config["validate"]["tstr_synthetic_share"],
    log:
        f"{ALOGS}/validate_tstr.log",
    threads: 2
    conda:
        CONDA_ENV
    script:
        "../scripts/validate_tstr.py"


rule validate_diversity:
    """Per-finding prevalence and co-occurrence, archive vs real train split; sample grids per label."""
    input:
        manifest=f"{REL}/manifest.parquet",
        info=f"{REL}/archive.json",
        images=f"{PREP}/images.h5",
        labels=f"{PREP}/labels.parquet",
    output:
        prevalence=report(f"{VAL}/prevalence.png", caption="../report/diversity.rst", category="Diversity"),
        cooccurrence=report(f"{VAL}/cooccurrence.png", caption="../report/diversity.rst", category="Diversity"),
        grids=report(f"{VAL}/sample_grids.png", caption="../report/grids.rst", category="Samples"),
        summary=f"{VAL}/diversity.json",
    params:
        cfg=stage("validate", []),  # only seed and labels
    log:
        f"{ALOGS}/validate_diversity.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/validate_diversity.py"


rule validate_lco:
    """Re-render every LCO latent and score it with the independently trained checker classifier."""
    input:
        latents=expand(f"{WORK}/latents/shard-{{shard}}.parquet", shard=SHARDS),
        generator=f"{PGGAN}/generator.pt",
        classifier=f"{CLF}/{config['classifier']['name']}/model.pt",  # steering: times an LCO update
        checker=f"{CLF}/{config['classifier']['checker']['name']}/model.pt",
        thresholds=f"{CLF}/{config['classifier']['checker']['name']}/thresholds.json",
        checker_metrics=f"{CLF}/{config['classifier']['checker']['name']}/metrics.json",
    output:
        agreement=f"{VAL}/lco_agreement.json",
    params:
        device=config["device"],
        batch_size=config["lco"]["batch_size"],
        prior_samples=config["validate"]["lco_prior_samples"],
        seed=config["seed"],
    log:
        f"{ALOGS}/validate_lco.log",
    threads: 2
    conda:
        CONDA_ENV
    script:
        "../scripts/validate_lco.py"


rule validate:
    """Every validation output (run with `snakemake validate`)."""
    input:
        rules.validate_fid.output,
        rules.validate_tstr.output,
        rules.validate_memorization.output,
        rules.validate_diversity.output,
        rules.validate_lco.output,
        rules.validate_reid.output if REID_ON else [],
        rules.validate_oracle.output if ORACLE_ON else [],


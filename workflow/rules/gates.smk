# Stage 6: the gates. Before the release is built, every rendered sample is audited against the real
# training scans: memorisation (nearest training image) and re-identification (a patient verifier);
# finalize_archive withholds what a gate flags (validate.memorization.gate, validate.reid.gate).
from synthcxr.validate.settings import MemorizationConfig

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
        cfg=stage("validate", ["memorization", *keys_for(MemorizationConfig, "validate")]),
    log:
        f"{ALOGS}/validate_memorization.log",
    threads: 2
    conda:
        CONDA_ENV
    script:
        "../scripts/validate_memorization.py"


# The re-identification audit: a patient-verification network trained on the real training patients
# ({REID}), then every rendered sample matched against them; gated like memorisation.
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


rule train_pair_verifier:
    """The patient verifier that keeps pair variants near their base (archive.pairs.embed_weight > 0): trained
    like the audit's but from the next seed, so the audit and validate_pairs never grade what LCO optimised."""
    input:
        images=f"{PREP}/images.h5",
        labels=f"{PREP}/labels.parquet",
    output:
        model=f"{REID}/steer/verifier.pt",
        metrics=f"{REID}/steer/verifier.json",
    params:
        cfg={**REID_TRAIN_PARAMS, "seed": REID_TRAIN_PARAMS["seed"] + 1},
    log:
        f"{LOGS}/train_pair_verifier-{DATASET}.log",
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

# Stage 8: validation of the release against the real data (the oracle, phantom only, in oracle.smk; the
# reader kit in reader_study.smk). Figures are wrapped in report() so `snakemake --report
# results/report.html` collects them with the captions in workflow/report/.
from synthcxr.validate.settings import FidConfig


rule validate_fid:
    """The distribution metrics of validate.metrics (FID, KID, precision/recall/density/coverage, FID_inf) of
    the release and of held-out real scans against the train scans, FID over snapshots; metrics.jsonl has a
    line per evaluation."""
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
        jsonl=f"{VAL}/metrics.jsonl",
        png=report(f"{VAL}/fid_curve.png", caption="../report/fid.rst", category="Fidelity"),
    params:
        cfg=stage("validate", keys_for(FidConfig, "validate")),
        # real images' features, keyed by dataset, extractor and options: shared by every archive's run
        cache=f"results/validate/feature-cache/{DATASET}",
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


if PAIRS_ON:

    rule validate_pairs:
        """Paired counterfactuals: the checker sees each edit and nothing else change; the verifier calls base and
        variant one patient as often as real follow-ups; pixel changes and a gallery."""
        input:
            manifest=f"{REL}/manifest.parquet",
            info=f"{REL}/archive.json",
            images=f"{PREP}/images.h5",
            checker=f"{CLF}/{config['classifier']['checker']['name']}/model.pt",
            thresholds=f"{CLF}/{config['classifier']['checker']['name']}/thresholds.json",
            verifier=[f"results/reid/{DATASET}/verifier.pt"] if REID_ON else [],
        output:
            pairs=f"{VAL}/pairs.json",
            gallery=report(f"{VAL}/pairs_gallery.png", caption="../report/pairs.rst", category="Paired counterfactuals"),
        params:
            device=config["device"],
            align=config["validate"]["reid"]["align"],
            phantom=config["dataset"]["phantom"] if config["dataset"]["format"] == "phantom" else None,  # region check
        log:
            f"{ALOGS}/validate_pairs.log",
        threads: 2
        conda:
            CONDA_ENV
        script:
            "../scripts/validate_pairs.py"


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
        rules.validate_pairs.output if PAIRS_ON else [],


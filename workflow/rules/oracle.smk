# Stage 8 (phantom only): ground-truth oracle: a classifier of the phantom's drawn findings, trained on a
# separate clean cohort rendered at the archive's resolution, judges the released samples beside the
# checker (results/validate/{archive}/oracle.json). Other formats have no oracle: the card says so.
from synthcxr.validate.oracle import oracle_run_settings, oracle_settings

# ORACLE_ON (common.smk): only format phantom has one
ORACLE_PREP = f"results/prepared/{DATASET}-oracle"
ORACLE_MODEL = f"results/oracle/{DATASET}"
ORACLE_RES = config["pggan"]["resolution"]

if ORACLE_ON:

    rule prepare_oracle:
        """Render the oracle's cohort: the dataset's look, clean labels, independent findings and devices."""
        output:
            images=f"{ORACLE_PREP}/images.h5",
            labels=f"{ORACLE_PREP}/labels.parquet",
            quarantine=f"{ORACLE_PREP}/quarantine.csv",
            summary=f"{ORACLE_PREP}/prepare.json",
        params:
            cfg=stage("dataset"),  # prepare.py builds the oracle cohort's section from these three
            oracle=oracle_settings(config),
            res=ORACLE_RES,
        log:
            f"{LOGS}/prepare-{DATASET}-oracle.log",
        threads: max(1, config["dataset"]["workers"])
        conda:
            CONDA_ENV
        script:
            "../scripts/prepare.py"

    rule train_oracle:
        """The classifier recipe on the oracle cohort's drawn findings; scored on its own clean test split."""
        input:
            images=f"{ORACLE_PREP}/images.h5",
            labels=f"{ORACLE_PREP}/labels.parquet",
        output:
            model=f"{ORACLE_MODEL}/model.pt",
            metrics=f"{ORACLE_MODEL}/metrics.json",
            thresholds=f"{ORACLE_MODEL}/thresholds.json",
            roc=f"{ORACLE_MODEL}/roc.png",
        params:
            run=oracle_run_settings(stage("classifier"), config, ORACLE_RES),
        log:
            f"{LOGS}/train_oracle-{DATASET}.log",
        threads: 2
        conda:
            CONDA_ENV
        script:
            "../scripts/train_classifier.py"

    rule validate_oracle:
        """Oracle and checker agreement per finding on the release, the oracle on real test scans' drawn
        findings, the share of synthetic labels that are true."""
        input:
            manifest=f"{REL}/manifest.parquet",
            info=f"{REL}/archive.json",
            images=f"{PREP}/images.h5",
            labels=f"{PREP}/labels.parquet",
            oracle=f"{ORACLE_MODEL}/model.pt",
            oracle_metrics=f"{ORACLE_MODEL}/metrics.json",
            oracle_thresholds=f"{ORACLE_MODEL}/thresholds.json",
            checker=f"{CLF}/{config['classifier']['checker']['name']}/model.pt",
            checker_thresholds=f"{CLF}/{config['classifier']['checker']['name']}/thresholds.json",
            steering=f"{CLF}/{config['classifier']['name']}/model.pt",
        output:
            oracle=f"{VAL}/oracle.json",
            png=report(f"{VAL}/oracle.png", caption="../report/oracle.rst", category="Oracle"),
        params:
            phantom=config["dataset"]["phantom"],
            salt=config["dataset"]["patient_salt"],
            labels=config["labels"],
            device=config["device"],
        log:
            f"{ALOGS}/validate_oracle.log",
        threads: 2
        conda:
            CONDA_ENV
        script:
            "../scripts/validate_oracle.py"

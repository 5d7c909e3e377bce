# Stage 1: the configured dataset (built-in phantom or a real collection) -> images.h5 pyramid,
# labels.parquet with patient-level splits, quarantine.csv and prepare.json in results/prepared/{name}/.
from synthcxr.data.settings import PrepareConfig

# The phantom's keys matter only when the phantom is the dataset: editing them never re-prepares a real one.
PREPARE_KEYS = [k for k in keys_for(PrepareConfig, "dataset") if k != "phantom" or config["dataset"]["format"] == "phantom"]


rule prepare:
    output:
        images=f"{PREP}/images.h5",
        labels=f"{PREP}/labels.parquet",
        quarantine=f"{PREP}/quarantine.csv",
        summary=f"{PREP}/prepare.json",
    params:
        cfg=stage("dataset", PREPARE_KEYS),
    log:
        f"{LOGS}/prepare-{DATASET}.log",
    benchmark:
        f"{LOGS}/benchmarks/prepare-{DATASET}.tsv"
    threads: max(1, config["dataset"]["workers"])
    conda:
        CONDA_ENV
    script:
        "../scripts/prepare.py"

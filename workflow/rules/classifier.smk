# Stage 3: multi-label pathology classifier on the prepared train split, selected on val, scored on
# test. The {clf} wildcard names a run: classifier.name (the model LCO steers and metrics use) or
# classifier.checker.name (an independently seeded second model that audits LCO's results).
# run_settings raises naming both valid names when {clf} is neither.
from synthcxr.classifier.runs import run_settings


rule train_classifier:
    input:
        images=f"{PREP}/images.h5",
        labels=f"{PREP}/labels.parquet",
    output:
        model=f"{CLF}/{{clf}}/model.pt",
        metrics=f"{CLF}/{{clf}}/metrics.json",
        thresholds=f"{CLF}/{{clf}}/thresholds.json",
        roc=report(f"{CLF}/{{clf}}/roc.png", category="Classifier", subcategory="{clf}"),
    params:
        cfg=stage("classifier"),
        run=lambda wildcards: run_settings(stage("classifier"), wildcards.clf),
    log:
        f"{LOGS}/train_classifier_{{clf}}.log",
    wildcard_constraints:
        clf="[A-Za-z0-9_.-]+",
    threads: 2
    conda:
        CONDA_ENV
    script:
        "../scripts/train_classifier.py"

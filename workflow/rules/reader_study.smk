# Stage 8: reader study kit: blinded, shuffled real + generated scans for radiologists, with the answer key
# kept outside the folder that is handed to readers. Scoring runs later: synthcxr reader-study score.
rule reader_study:
    input:
        labels=f"{PREP}/labels.parquet",
        images=f"{PREP}/images.h5",
        manifest=f"{REL}/manifest.parquet",
        info=f"{REL}/archive.json",
    output:
        kit=directory(f"{VAL}/reader_kit"),
        key=f"{VAL}/answer_key/key.csv",
        design=f"{VAL}/answer_key/design.json",
    params:
        cfg=stage("reader_study"),
    log:
        f"{ALOGS}/reader_study.log",
    benchmark:
        f"{LOGS}/benchmarks/reader_study-{ARCHIVE}.tsv"
    conda:
        CONDA_ENV
    script:
        "../scripts/reader_study.py"

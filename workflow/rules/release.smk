# Stage 9: once validation has read the release, check it against its manifest and seal it: its card
# (README.md) and SHA256SUMS, written last.
rule release:
    """Check the release against its manifest, write its dataset card (README.md) and SHA256SUMS last."""
    input:
        rules.finalize_archive.output,
        info=f"{REL}/archive.json",
        fid=f"{VAL}/fid.json",
        tstr=f"{VAL}/tstr.json",
        memorization=f"{VAL}/memorization.parquet",
        lco_agreement=f"{VAL}/lco_agreement.json",
        reid=[f"{VAL}/reid.json"] if REID_ON else [],
        oracle=[f"{VAL}/oracle.json"] if ORACLE_ON else [],
        pairs=[f"{VAL}/pairs.json"] if PAIRS_ON else [],
    output:
        card=f"{REL}/README.md",
        sums=f"{REL}/SHA256SUMS",
    log:
        f"{ALOGS}/release.log",
    # shards checked and files hashed in parallel
    threads: ARCHIVE_WORKERS
    resources:
        cpus_per_task=ARCHIVE_WORKERS,
    conda:
        CONDA_ENV
    script:
        "../scripts/release.py"

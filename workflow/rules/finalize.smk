# Stage 7: the release's data: only the samples that passed every gate, in byte-sized shards, with
# manifest, latents and archive.json (release/).
RELEASE_CFG = stage("archive", [k for k in config["archive"] if k != "workers"])
MEMORIZATION_GATE = bool(config["validate"]["memorization"]["gate"])
REID_GATE = bool(config["validate"]["reid"]["enabled"] and config["validate"]["reid"]["gate"])


rule finalize_archive:
    """The release's data: only released samples, in byte-sized shards, with manifest, latents and archive.json.

    The number of release shards depends on what passes the gates, so the shard files (release/h5/,
    release/parquet/) are not declared: this job clears and rewrites them, and archive.json lists them."""
    input:
        shards=expand(f"{WORK}/shards/shard-{{shard}}.{{fmt}}", shard=SHARDS, fmt=WORK_FORMATS),
        latents=expand(f"{WORK}/latents/shard-{{shard}}.parquet", shard=SHARDS),
        generator=f"{PGGAN}/generator.pt",
        classifier=f"{CLF}/{config['classifier']['name']}/model.pt",
        memorization=[f"{VAL}/memorization.parquet"] if MEMORIZATION_GATE else [],
        reid=[f"{VAL}/reid.parquet"] if REID_GATE else [],
    output:
        manifest=f"{REL}/manifest.parquet",
        latents=f"{REL}/latents.parquet",
        info=f"{REL}/archive.json",
        delivery=report(f"{VAL}/delivery.png", caption="../report/delivery.rst", category="Delivery"),
    params:
        cfg=RELEASE_CFG,
        shard_size=config["lco"]["shard_size"],
    log:
        f"{ALOGS}/finalize_archive.log",
    # one release shard per worker process
    threads: ARCHIVE_WORKERS
    resources:
        cpus_per_task=ARCHIVE_WORKERS,
    conda:
        CONDA_ENV
    script:
        "../scripts/finalize_archive.py"

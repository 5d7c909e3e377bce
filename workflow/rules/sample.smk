# Mass sampling and the release: render optimised latents into working shards (work/shards/), build the
# release from the samples that passed every gate (release/), and seal it with its card and checksums
# once validation has read it.
from synthcxr.archive.layout import work_formats  # noqa: E402

# The sample rule renders working shards (HDF5 and/or Parquet); the release's formats are built from them.
WORK_FORMATS = work_formats(config["archive"]["formats"])
# Keys that change rendered bytes: only these rerun sampling (shard sizes, license or adding WebDataset do not).
SAMPLE_CFG = {**stage("archive", ["batch_size", "compression", "png_level", "threads"]), "formats": WORK_FORMATS}
SAMPLE_CFG = {k: SAMPLE_CFG[k] for k in sorted(SAMPLE_CFG)}
# archive.workers sets the CPU workers of sample, finalize and release; their outputs never depend on it.
RELEASE_CFG = stage("archive", [k for k in config["archive"] if k != "workers"])
ARCHIVE_WORKERS = config["archive"]["workers"]
MEMORIZATION_GATE = bool(config["validate"]["memorization"].get("gate", True))
REID_GATE = bool(config["validate"]["reid"].get("enabled", True) and config["validate"]["reid"].get("gate", True))


wildcard_constraints:
    shard=r"\d{5}",


rule sample:
    """Render one latents shard with the EMA generator into working HDF5 and/or Parquet shards."""
    input:
        latents=f"{WORK}/latents/shard-{{shard}}.parquet",
        generator=f"{PGGAN}/generator.pt",
    output:
        **{fmt: f"{WORK}/shards/shard-{{shard}}.{fmt}" for fmt in WORK_FORMATS},
    params:
        cfg=SAMPLE_CFG,
    log:
        f"{ALOGS}/sample/shard-{{shard}}.log",
    # archive.threads, not the scheduler's --cores, sets the generator's CPU threads (rendered bytes never
    # depend on --cores); the job's threads beyond that encode PNG and HDF5 chunks (archive.workers).
    threads: max(config["archive"]["threads"], ARCHIVE_WORKERS)
    resources:
        cpus_per_task=max(config["archive"]["threads"], ARCHIVE_WORKERS),
    conda:
        CONDA_ENV
    script:
        "../scripts/sample.py"


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


rule release:
    """Check the release against its manifest, write its dataset card (README.md) and SHA256SUMS last."""
    input:
        rules.finalize_archive.output,
        info=f"{REL}/archive.json",
        fid=f"{VAL}/fid.json",
        tstr=f"{VAL}/tstr.json",
        memorization=f"{VAL}/memorization.parquet",
        lco_agreement=f"{VAL}/lco_agreement.json",
        reid=[f"{VAL}/reid.json"] if config["validate"]["reid"].get("enabled", True) else [],
        oracle=[f"{VAL}/oracle.json"] if ORACLE_ON else [],
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

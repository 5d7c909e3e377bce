# Mass sampling: render optimised latents into archive shards, then finalise and document the archive.
ARCHIVE_FORMATS = config["archive"]["formats"]
MEMORIZATION_GATE = bool(config["validate"]["memorization"].get("gate", True))


wildcard_constraints:
    shard=r"\d{5}",


rule sample:
    """Render one latents shard with the EMA generator into HDF5 and/or Parquet shard files."""
    input:
        latents=f"{ARCH}/latents/shard-{{shard}}.parquet",
        generator=f"{PGGAN}/generator.pt",
    output:
        **{fmt: f"{ARCH}/shards/shard-{{shard}}.{fmt}" for fmt in ARCHIVE_FORMATS},
    params:
        cfg=stage("archive"),
    log:
        f"{ALOGS}/sample/shard-{{shard}}.log",
    threads: 2
    conda:
        CONDA_ENV
    script:
        "../scripts/sample.py"


rule finalize_archive:
    """Manifest of released samples, archive.json (provenance, counts) and SHA256SUMS."""
    input:
        shards=expand(f"{ARCH}/shards/shard-{{shard}}.{{fmt}}", shard=SHARDS, fmt=ARCHIVE_FORMATS),
        latents=expand(f"{ARCH}/latents/shard-{{shard}}.parquet", shard=SHARDS),
        generator=f"{PGGAN}/generator.pt",
        classifier=f"{CLF}/{config['classifier']['name']}/model.pt",
        memorization=[f"{VAL}/memorization.parquet"] if MEMORIZATION_GATE else [],
    output:
        manifest=f"{ARCH}/manifest.parquet",
        sums=f"{ARCH}/SHA256SUMS",
        info=f"{ARCH}/archive.json",
    params:
        cfg=stage("archive"),
        shard_size=config["lco"]["shard_size"],
    log:
        f"{ALOGS}/finalize_archive.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/finalize_archive.py"


rule dataset_card:
    """DATASET_CARD.md from archive.json and the validation results."""
    input:
        info=f"{ARCH}/archive.json",
        fid=f"{VAL}/fid.json",
        tstr=f"{VAL}/tstr.json",
        memorization=f"{VAL}/memorization.parquet",
        lco_agreement=f"{VAL}/lco_agreement.json",
    output:
        f"{ARCH}/DATASET_CARD.md",
    log:
        f"{ALOGS}/dataset_card.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/dataset_card.py"

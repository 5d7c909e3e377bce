# Stage 5: mass sampling: render each shard's optimised latents into working shards (work/shards/).
from synthcxr.archive.layout import work_formats  # noqa: E402

# The sample rule renders working shards (HDF5 and/or Parquet); the release's formats are built from them.
WORK_FORMATS = work_formats(config["archive"]["formats"])
# Keys that change rendered bytes: only these rerun sampling (shard sizes, license or adding WebDataset do not).
SAMPLE_CFG = {**stage("archive", ["batch_size", "compression", "png_level", "threads"]), "formats": WORK_FORMATS}
SAMPLE_CFG = {k: SAMPLE_CFG[k] for k in sorted(SAMPLE_CFG)}
# archive.workers sets the CPU workers of sample, finalize and release; their outputs never depend on it.
ARCHIVE_WORKERS = config["archive"]["workers"]


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

# Stage 2: Progressive GAN on the prepared train split. Only generator.pt is declared as output:
# checkpoint.pt, log.jsonl, fakes/ and snapshots/ live beside it and survive a failed job, so a
# rerun resumes from the last checkpoint instead of starting over. A job that stops early at its time
# budget (pggan.job_minutes, the SLURM allocation) is resubmitted up to pggan.allocations - 1 times.
# pggan.nodes > 1: one task per node of one allocation; the script itself starts torchrun on each with
# srun (the `mpi` resource tells the SLURM executor not to wrap it in a one-task step). The GPUs per node
# come from the profile (gres); tasks_per_gpu 0 keeps the executor from tying tasks to GPUs.
PGGAN_NODES = int(config["pggan"]["nodes"])
PGGAN_NODE_RESOURCES = (
    {"nodes": PGGAN_NODES, "tasks": PGGAN_NODES, "mpi": "srun", "tasks_per_gpu": 0} if PGGAN_NODES > 1 else {}
)


rule train_pggan:
    input:
        images=f"{PREP}/images.h5",
        labels=f"{PREP}/labels.parquet",
    output:
        generator=f"{PGGAN}/generator.pt",
    params:
        cfg=stage("pggan"),
    log:
        f"{LOGS}/train_pggan-{RUN}.log",
    benchmark:
        f"{LOGS}/benchmarks/train_pggan-{RUN}.tsv"
    threads: 2
    resources:
        **PGGAN_NODE_RESOURCES,
    # The longest job, on every path to the release: it starts first when job slots are scarce (--jobs).
    priority: 10
    # Resubmission is the scheduler's: the job step run inside an allocation must not retry within it.
    retries: config["pggan"]["allocations"] - 1 if workflow.is_main_process else 0
    conda:
        CONDA_ENV
    script:
        "../scripts/train_pggan.py"

# synthcxr: real chest X-rays -> PGGAN + latent class optimisation -> labelled synthetic archive.
# Logic lives in the synthcxr package; rules wire files to it. See README.md for the DAG.
import os

from snakemake.utils import min_version

min_version("9.0")


# The demo config is the base; --configfile FILE is merged over it.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# One file per stage, in DAG order.
include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"  # 1
include: "workflow/rules/pggan.smk"  # 2
include: "workflow/rules/classifier.smk"  # 3
include: "workflow/rules/lco.smk"  # 4
include: "workflow/rules/sample.smk"  # 5
include: "workflow/rules/gates.smk"  # 6
include: "workflow/rules/finalize.smk"  # 7
include: "workflow/rules/oracle.smk"  # 8 (phantom only)
include: "workflow/rules/validate.smk"  # 8
include: "workflow/rules/reader_study.smk"  # 8
include: "workflow/rules/release.smk"  # 9


rule all:
    input:
        f"{REL}/SHA256SUMS",
        f"{REL}/README.md",
        f"{VAL}/fid.json",
        f"{VAL}/tstr.json",
        f"{VAL}/memorization.parquet",
        f"{VAL}/diversity.json",
        f"{VAL}/lco_agreement.json",
        f"{VAL}/answer_key/key.csv",
    default_target: True

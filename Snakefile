# synthcxr: real chest X-rays -> PGGAN + latent class optimisation -> labelled synthetic archive.
# Logic lives in the synthcxr package; rules wire files to it. See README.md for the DAG.
import os

from snakemake.utils import min_version

min_version("9.0")


# The demo config is the base; --configfile FILE is merged over it.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/pggan.smk"
include: "workflow/rules/classifier.smk"
include: "workflow/rules/oracle.smk"
include: "workflow/rules/lco.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/reader_study.smk"


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

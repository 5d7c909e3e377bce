"""Rule dataset_card: DATASET_CARD.md from archive.json and the validation results."""

from synthcxr.archive.card import write_card
from synthcxr.utils.runtime import setup_logging

setup_logging(snakemake.log[0])
write_card(
    snakemake.input.info,
    snakemake.output[0],
    fid=snakemake.input.fid,
    tstr=snakemake.input.tstr,
    memorization=snakemake.input.memorization,
    lco_agreement=snakemake.input.lco_agreement,
)

"""The command each ``torchrun`` process runs: ``python -m synthcxr.pggan.worker`` trains its rank's share."""

from __future__ import annotations

import json

from .config import PGGANConfig
from .preempt import PREEMPTED_EXIT, Preempted
from .train import train_pggan


def main(argv: list[str] | None = None) -> None:
    """Command line used by each ``torchrun`` process: ``python -m synthcxr.pggan.worker``."""
    import argparse

    ap = argparse.ArgumentParser(description="Train a Progressive GAN (one process per GPU under torchrun).")
    ap.add_argument("--config-json", required=True, help="JSON file holding the pggan config section")
    ap.add_argument("--data", required=True, help="prepared dataset folder (images.h5 + labels.parquet)")
    ap.add_argument("--out", required=True, help="run folder (checkpoint.pt, generator.pt, ...)")
    # torchrun parses the whole command line first and would take "--log" as an abbreviation of its own
    # options (--log-dir, --logs-specs): the launcher passes --log-file
    ap.add_argument("--log-file", "--log", dest="log", default=None, help="log file (rank 0 writes it)")
    a = ap.parse_args(argv)
    with open(a.config_json) as fh:
        cfg = json.load(fh)
    try:
        train_pggan(PGGANConfig.from_section(cfg), a.data, a.out, a.log)
    except Preempted:
        raise SystemExit(PREEMPTED_EXIT) from None


if __name__ == "__main__":
    main()

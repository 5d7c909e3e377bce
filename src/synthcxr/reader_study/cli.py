"""``synthcxr reader-study build|score``: the organiser's two steps, outside Snakemake.

``build`` makes a kit from a prepared dataset and an archive (or a folder of generated PNGs);
``score`` reads the answer key and the CSVs readers send back and writes the summary and plot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..utils.runtime import setup_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthcxr reader-study", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build a blinded kit (reader_kit/) and its answer key")
    b.add_argument("--prepared", required=True, help="prepared dataset folder (images.h5 + labels.parquet)")
    gen = b.add_mutually_exclusive_group(required=True)
    gen.add_argument("--archive", help="release folder of a synthetic archive (holds manifest.parquet)")
    gen.add_argument("--pngs", help="folder of generated grayscale PNGs (file stem = source id)")
    b.add_argument("--out", required=True, help="study folder; reader_kit/ and answer_key/ are created inside")
    b.add_argument("--config", help="workflow config YAML; its reader_study section and labels give the defaults")
    b.add_argument("--n-real", type=int, help="real images (overrides config)")
    b.add_argument("--n-fake", type=int, help="generated images (overrides config)")
    b.add_argument("--seed", type=int, help="selection and shuffle seed (overrides config)")
    b.add_argument("--labels", nargs="*", help="finding checkboxes shown to readers (overrides config)")

    s = sub.add_parser("score", help="score answer CSVs exported from the reader page")
    s.add_argument("--key", required=True, help="answer_key/key.csv")
    s.add_argument("answers", nargs="+", help="answer CSV files, one or more per reader")
    s.add_argument("--out", default="reader_study_scores", help="output folder (default: %(default)s)")
    s.add_argument("--margin", type=float, default=None,
                   help="TOST equivalence margin around 0.5 (default: the kit's design.json, else 0.1)")
    return p


def cli(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    from .answers import ReaderStudyInputError

    try:
        if args.command == "build":
            return _build(args)
        return _score(args)
    except (ReaderStudyInputError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"synthcxr reader-study {args.command}: {exc}", file=sys.stderr)
        return 1


def _build(args: argparse.Namespace) -> int:
    from ..config import load_config, section
    from .kit import ReaderStudyConfig, build_study
    from .sources import archive_source, png_folder_source

    sec: dict = {}
    if args.config:
        sec = section(load_config(args.config), "reader_study")
    for name in ("n_real", "n_fake", "seed", "labels"):
        value = getattr(args, name)
        if value is not None:
            sec[name] = value
    sec.setdefault("labels", [])  # no --config and no --labels: a kit without findings boxes
    cfg = ReaderStudyConfig.from_section(sec)
    source = archive_source(args.archive) if args.archive else png_folder_source(args.pngs)
    out = Path(args.out)
    key = build_study(args.prepared, source, out / "reader_kit", out / "answer_key" / "key.csv", cfg)
    print(f"kit: {out / 'reader_kit'} ({len(key)} images); answer key: {out / 'answer_key' / 'key.csv'}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from .score import format_summary, score_files

    summary = score_files(args.key, args.answers, args.out, args.margin)
    print(format_summary(summary), end="")
    print(f"written: {Path(args.out) / 'summary.txt'}, summary.json, per_reader.csv, accuracy.png")
    return 0

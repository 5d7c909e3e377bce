"""How many cluster jobs a PGGAN schedule needs: its images per resolution at given image rates.

``synthcxr pggan-allocations --configfile CONFIG --img-per-s R`` prints the schedule's images and hours per
resolution and the number of allocations (``pggan.allocations``) it needs for a job length. Rates come from
``--img-per-s`` (one rate for every resolution: a stated figure, or the final resolution's, which bounds
the time from above since smaller resolutions train faster) and, with ``--log``, from a run's
``log.jsonl``: the median ``img/s`` measured at each resolution it reached, which win over the stated rate.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import REPO_ROOT, ConfigError, deep_merge, read_config_file, validate_config
from .config import PGGANConfig
from .schedule import Schedule

PROFILE = REPO_ROOT / "profiles" / "slurm" / "config.yaml"


@dataclass(frozen=True)
class ResolutionRow:
    res: int
    nimg: int
    img_per_s: float
    source: str  # "measured", "given", or "from N px" (a larger resolution's measured rate)

    @property
    def hours(self) -> float:
        return self.nimg / self.img_per_s / 3600.0


def measured_rates(log_path: str | Path) -> dict[int, float]:
    """Median ``img/s`` per resolution over the rows of a training ``log.jsonl`` (the first step's row aside)."""
    per_res: dict[int, list[float]] = {}
    for n, line in enumerate(Path(log_path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rate, res = float(row["img/s"]), int(row["res"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{log_path}:{n}: not a training log row with 'res' and 'img/s' ({exc})") from None
        if rate > 0 and not row.get("first_step"):  # the first step's rate includes warm-up
            per_res.setdefault(res, []).append(rate)
    return {res: statistics.median(v) for res, v in sorted(per_res.items())}


def schedule_rows(sched: Schedule, img_per_s: float | None, measured: dict[int, float] | None = None) -> list[ResolutionRow]:
    """One row per resolution: its images and the rate used.

    A measured rate wins; a resolution the log has no row for (a phase shorter than ``log_kimg``) takes
    ``img_per_s`` if given, else the measured rate of the next larger resolution, which is slower and so
    bounds its time from above.
    """
    measured = measured or {}
    rows = []
    for res, nimg in sched.nimg_per_res().items():
        if res in measured:
            rows.append(ResolutionRow(res, nimg, measured[res], "measured"))
        elif img_per_s is not None:
            rows.append(ResolutionRow(res, nimg, float(img_per_s), "given"))
        else:
            nearest = min((r for r in measured if r > res), default=None)
            if nearest is None:
                raise ValueError(f"no rate for {res} px: the log has none at or above it; give --img-per-s")
            rows.append(ResolutionRow(res, nimg, measured[nearest], f"from {nearest} px"))
    return rows


def allocations_needed(train_hours: float, job_minutes: float, stop_margin_minutes: float) -> int:
    """Jobs of ``job_minutes`` that hold ``train_hours`` of training when each stops ``stop_margin_minutes`` early."""
    usable = job_minutes - stop_margin_minutes
    if usable <= 0:
        raise ValueError(f"a job of {job_minutes:g} min leaves no training time after a {stop_margin_minutes:g} min stop margin")
    return max(1, math.ceil(train_hours * 60.0 / usable - 1e-9))


def load_merged(configfiles: list[str]) -> dict:
    """config/config.yaml with each file merged over it in order, as Snakemake's ``--configfile`` does."""
    cfg: dict = {}
    for path in [REPO_ROOT / "config" / "config.yaml", *configfiles]:
        cfg = deep_merge(cfg, read_config_file(path))
    return validate_config(cfg)


def profile_job_minutes() -> float:
    """train_pggan's runtime (minutes) in the SLURM profile, the job length a user gets by default."""
    profile = yaml.safe_load(PROFILE.read_text())
    return float(profile["set-resources"]["train_pggan"]["runtime"])


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="synthcxr pggan-allocations", description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", action="append", default=[], help="config merged over config/config.yaml (repeatable)")
    ap.add_argument("--img-per-s", type=float, help="training rate of one job (all its GPUs), images per second")
    ap.add_argument("--log", help="a run's log.jsonl: its measured rate per resolution overrides --img-per-s")
    ap.add_argument("--job-minutes", type=float, default=None,
                    help="minutes per job (default: pggan.job_minutes, else train_pggan's runtime in profiles/slurm)")
    args = ap.parse_args(argv)
    if args.img_per_s is not None and args.img_per_s <= 0:
        ap.error("--img-per-s must be > 0")
    if args.img_per_s is None and not args.log:
        ap.error("give --img-per-s, --log, or both")
    try:
        config = load_merged(args.configfile)
        pcfg = PGGANConfig.from_section(config["pggan"])
        sched = pcfg.schedule()
        rows = schedule_rows(sched, args.img_per_s, measured_rates(args.log) if args.log else None)
        job_minutes = args.job_minutes or pcfg.job_minutes or profile_job_minutes()
        hours = sum(r.hours for r in rows)
        need = allocations_needed(hours, job_minutes, pcfg.stop_margin_minutes)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"synthcxr pggan-allocations: {exc}", file=sys.stderr)
        return 2
    print(f"{'res':>5} {'kimg':>9} {'img/s':>9} {'hours':>8}  rate")
    for r in rows:
        print(f"{r.res:>5} {r.nimg / 1000:>9g} {r.img_per_s:>9.1f} {r.hours:>8.1f}  {r.source}")
    print(f"total: {sched.total_nimg / 1000:g} kimg, {hours:.1f} h of training")
    print(f"jobs of {job_minutes:g} min stopping {pcfg.stop_margin_minutes:g} min early: "
          f"{need} allocation(s) needed; pggan.allocations is {pcfg.allocations}"
          + ("" if pcfg.allocations >= need else f" -- raise it to at least {need}"))
    return 0 if pcfg.allocations >= need else 1

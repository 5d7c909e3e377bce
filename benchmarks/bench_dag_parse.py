"""How long Snakemake takes to build this workflow's DAG: the cost every `snakemake -n`, every rerun and every
SLURM job (each job parses the Snakefile again) pays before any rule runs.

    python benchmarks/bench_dag_parse.py                        # this checkout, tiny config, 7 repeats
    python benchmarks/bench_dag_parse.py --baseline 9077fe1     # against another commit, A and B interleaved

Each repeat runs ``snakemake -n --quiet rules`` in an empty folder (nothing to resolve on disk, so the time is
the parse, the config validation and the imports the rules make) once per checkout, in alternating order. A
baseline is checked out into a temporary git worktree and run with its own ``src`` first on PYTHONPATH (the
workflow refuses a package from another checkout). Prints min and median wall seconds per checkout, whether
torch was loaded while parsing, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# snakemake's own entry point, with a note on stderr saying whether the parse loaded torch
PROBE = ("import sys, atexit; atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules, file=sys.stderr)); "
         "from snakemake.cli import main; sys.argv = ['snakemake'] + sys.argv[1:]; main()")


def parse_once(root: Path, config: Path, work: Path) -> tuple[float, bool]:
    """Wall seconds of one ``snakemake -n`` of ``root``'s Snakefile, and whether torch was imported."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-c", PROBE, "-s", str(root / "Snakefile"), "-d", str(work), "--configfile", str(config),
           "-n", "--quiet", "rules", "--cores", "1"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=600)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed in {root}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return dt, "torch loaded: True" in proc.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="git commit to compare against (checked out into a temporary worktree)")
    ap.add_argument("--config", type=Path, default=REPO / "tests" / "e2e" / "tiny.yaml", help="config file merged over the default")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        tmp = Path(tmp)
        roots = {"this checkout": REPO}
        if args.baseline:
            wt = tmp / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(wt), args.baseline], check=True)
            roots = {f"baseline {args.baseline}": wt, **roots}
        try:
            times: dict[str, list[float]] = {k: [] for k in roots}
            torch_seen: dict[str, bool] = {}
            names = list(roots)
            for r in range(args.repeats):
                for name in names if r % 2 == 0 else names[::-1]:  # interleaved, alternating order
                    work = tmp / f"work-{r}"
                    work.mkdir(exist_ok=True)
                    dt, loaded = parse_once(roots[name], args.config, work)
                    times[name].append(dt)
                    torch_seen[name] = loaded
                    shutil.rmtree(work / ".snakemake", ignore_errors=True)
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / "baseline")], check=False)
    print(f"snakemake -n of the DAG ({args.config.name}), {args.repeats} repeats, A and B interleaved:")
    print(f"  {'checkout':<28} {'min s':>7} {'median s':>9}  torch loaded")
    for name, ts in times.items():
        print(f"  {name:<28} {min(ts):7.2f} {statistics.median(ts):9.2f}  {torch_seen[name]}")
    if len(times) == 2:
        (a, ta), (b, tb) = times.items()
        print(f"median ratio {b} / {a}: {statistics.median(tb) / statistics.median(ta):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

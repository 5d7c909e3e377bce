"""Generator evaluations per accepted sample: latent class optimisation vs rejection sampling.

    python benchmarks/bench_lco_vs_rejection.py
    python benchmarks/bench_lco_vs_rejection.py --generator results/pggan/demo/generator.pt \
        --classifier results/classifier/real/model.pt --labels-table results/prepared/phantom/labels.parquet

Needs the trained demo models (``snakemake train_pggan train_classifier`` or ``make demo``). Picks a
common combination (the most frequent in the real train split) and a rare one (the most frequent among
those below ``--rare-below`` prevalence, 2 % by default, preferring several findings), unless given
with ``--common``/``--rare``. For each it runs LCO with the config's settings on ``--n`` targets and
rejection sampling with up to ``--max-draws`` prior latents, both counting generator forward
evaluations, and prints evaluations per accepted sample and their ratio (all from this one run). With
the independent checker classifier present (``--checker``), it also prints the share of each method's
accepted samples that the checker agrees show the combination: cheap samples are only worth having if
they are not just fooling the steering classifier.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from synthcxr.config import load_config, section
from synthcxr.labels import NO_FINDING, combo_key, parse_combo
from synthcxr.lco.evaluate import checker_agrees
from synthcxr.lco.optimize import LCOConfig, LabelSpace, optimise_latents, resolve_label_space
from synthcxr.lco.plan import sample_seeds
from synthcxr.lco.rejection import rejection_sample
from synthcxr.classifier.evaluate import read_thresholds
from synthcxr.utils.runtime import resolve_device, setup_logging


def train_prevalence(table_path: str, labels: list[str]) -> pd.Series:
    """Share of train images per combination key (NaN as absent, as in the label plan)."""
    t = pd.read_parquet(table_path)
    t = t[t["split"] == "train"] if "split" in t.columns else t
    findings = [n for n in labels if n != NO_FINDING]
    mat = t[findings].fillna(0).to_numpy() >= 0.5
    keys = ["+".join(f for f, p in zip(findings, r) if p) or NO_FINDING for r in mat]
    return pd.Series(keys).value_counts(normalize=True)


def pick_combinations(prev: pd.Series, rare_below: float) -> tuple[str, str]:
    common = str(prev.index[0])
    rare = prev[prev < rare_below]
    if rare.empty:
        raise SystemExit(f"no combination below {rare_below:.1%} prevalence in the train split; pass --rare")
    n_findings = pd.Series([k.count("+") + 1 for k in rare.index], index=rare.index)
    multi = rare[n_findings >= 2]
    return common, str((multi if not multi.empty else rare).index[0])


def checker_agreement(G: torch.nn.Module, checker: torch.nn.Module, space: LabelSpace, z: np.ndarray, target: np.ndarray) -> float:
    """Share of latents whose image the checker calls exactly ``target`` (NaN when there are none)."""
    if len(z) == 0:
        return float("nan")
    return float(checker_agrees(G, checker, space, z, np.tile(target, (len(z), 1)), batch_size=256).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--generator", default="results/pggan/demo/generator.pt")
    ap.add_argument("--classifier", default="results/classifier/real/model.pt")
    ap.add_argument("--thresholds", default=None, help="default: thresholds.json beside --classifier")
    ap.add_argument("--checker", default="results/classifier/check/model.pt", help="independent classifier; skipped when absent")
    ap.add_argument("--labels-table", default="results/prepared/phantom/labels.parquet")
    ap.add_argument("--common", default=None, help="combination key, e.g. No_Finding")
    ap.add_argument("--rare", default=None, help="combination key, e.g. Cardiomegaly+Effusion")
    ap.add_argument("--rare-below", type=float, default=0.02)
    ap.add_argument("--n", type=int, default=32, help="LCO targets per combination")
    ap.add_argument("--max-draws", type=int, default=20000, help="rejection sampling budget per combination")
    ap.add_argument("--steps", type=int, default=None, help="override lco.steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    missing = [p for p in (args.generator, args.classifier) if not Path(p).exists()]
    if missing:
        print(
            "bench_lco_vs_rejection needs trained demo models, missing: " + ", ".join(missing) + "\n"
            "  train them first: snakemake --cores 2 train_pggan results/classifier/real/model.pt "
            "(or make demo), or pass --generator/--classifier",
            file=sys.stderr,
        )
        return 2
    setup_logging()
    from synthcxr.classifier import load_classifier
    from synthcxr.pggan import load_generator

    cfg = load_config(args.config)
    lco_cfg = section(cfg, "lco")
    if args.steps is not None:
        lco_cfg["steps"] = args.steps
    lc = LCOConfig.from_section(lco_cfg)
    labels = lc.labels
    device = resolve_device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    G = load_generator(args.generator, device)
    C = load_classifier(args.classifier, device)
    thr_path = args.thresholds or str(Path(args.classifier).with_name("thresholds.json"))
    space = resolve_label_space(labels, C.label_names, read_thresholds(thr_path), where=thr_path)

    checker, ck_space = None, None
    if args.checker and Path(args.checker).exists():
        checker = load_classifier(args.checker, device)
        ck_thr = str(Path(args.checker).with_name("thresholds.json"))
        ck_space = resolve_label_space(labels, checker.label_names, read_thresholds(ck_thr), where=ck_thr)

    prev = train_prevalence(args.labels_table, labels) if Path(args.labels_table).exists() else None
    if args.common is None or args.rare is None:
        if prev is None:
            print(f"{args.labels_table} missing: pass --common and --rare combination keys", file=sys.stderr)
            return 2
        common, rare = pick_combinations(prev, args.rare_below)
        common, rare = args.common or common, args.rare or rare
    else:
        common, rare = args.common, args.rare

    print(f"device {device}; G latent_dim {G.latent_dim}, {G.resolution} px; LCO steps {lc.steps}, lr {lc.lr}, "
          f"prior_weight {lc.prior_weight}, retries {lc.retries}, margin {lc.margin}, init_candidates {lc.init_candidates}; "
          f"thresholds {thr_path}; checker {args.checker if checker is not None else 'none'}")
    header = (f"{'combination':<40}{'prev':>8}{'LCO ok':>9}{'LCO ev/acc':>12}{'rej acc':>10}{'rej ev/acc':>12}{'ratio':>9}"
              f"{'LCO chk':>9}{'rej chk':>9}{'LCO s':>8}{'rej s':>8}")
    print(header)
    print("-" * len(header))
    for key in (common, rare):
        vec = np.asarray(parse_combo(key, labels), dtype=np.float32)
        key = combo_key(vec, labels)
        t0 = time.perf_counter()
        res = optimise_latents(G, C, space, np.tile(vec, (args.n, 1)), sample_seeds(args.seed, args.n), lc)
        t_lco = time.perf_counter() - t0
        ok = int(res["success"].sum())
        lco_cost = res["g_evals"].sum() / ok if ok else float("inf")
        t0 = time.perf_counter()
        rej = rejection_sample(G, C, space, vec, args.max_draws, lc.batch_size * 4, seed=args.seed + 1, max_accept=args.n)
        t_rej = time.perf_counter() - t0
        ratio = rej.evals_per_accept / lco_cost if ok and rej.n_accepted else float("nan")
        rej_note = f"{rej.evals_per_accept:>12.1f}" if rej.n_accepted else f"{'>' + str(rej.g_evals):>12}"
        p = f"{prev.get(key, 0.0):.2%}" if prev is not None else "?"
        chk_lco = chk_rej = float("nan")
        if checker is not None:
            z_ok = np.stack(res["z"][res["success"]].to_list()) if ok else np.zeros((0, G.latent_dim), np.float32)
            chk_lco = checker_agreement(G, checker, ck_space, z_ok, vec)
            chk_rej = checker_agreement(G, checker, ck_space, rej.z.numpy(), vec)
        print(f"{key:<40}{p:>8}{ok / args.n:>9.3f}{lco_cost:>12.1f}{rej.n_accepted:>10d}{rej_note}{ratio:>9.1f}"
              f"{chk_lco:>9.3f}{chk_rej:>9.3f}{t_lco:>8.1f}{t_rej:>8.1f}")
    print("ev/acc = generator forward evaluations per accepted sample; ratio = rejection / LCO "
          "(rejection with 0 accepted: its cost is above the budget shown, ratio nan); "
          "chk = share of accepted samples the independent checker agrees with")
    return 0


if __name__ == "__main__":
    sys.exit(main())

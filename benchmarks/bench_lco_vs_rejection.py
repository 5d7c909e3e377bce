"""LCO (amortised prior pool) vs rejection sampling at the same acceptance rule, and LCO's two modes over a plan.

    python benchmarks/bench_lco_vs_rejection.py --configfile config/demo-quick.yaml \
        --generator results/pggan/quick/generator.pt
    python benchmarks/bench_lco_vs_rejection.py --plan results/archive/demo/work/plan.parquet

Needs trained models (``make demo`` or ``snakemake train_pggan train_classifier``). Everything below is
measured in this one run, on one device:

1. **Cost of a backward.** A no-grad forward of C(G(z)) and an LCO step (forward with the graph, then
   backward to z) at the LCO batch size, interleaved ``--repeats`` times; ``r`` = median step / median
   forward. Costs are then in *forward-equivalents* (FE): forwards + (r - 1) x backward passes.
2. **Per combination** (``--n`` targets each): LCO in pool mode on a pool of its own, and rejection
   sampling with the same acceptance rule (every threshold cleared by ``lco.margin`` logits), its cost
   counted exactly as the draws up to the ``--n``-th accept. Combinations: the commonest under the GAN,
   one rarer single finding, and ``--ultra`` combinations the GAN draws in <= 1 % of random latents (as measured on
   ``--prior`` random latents with the steering classifier and the margin rule), the plan's most
   requested ones when ``--plan`` is given.
   Printed: FE and seconds per accepted sample for both, their ratio, and the share of accepted samples
   the independent checker agrees show the combination.
3. **Over a plan** (``--plan``, e.g. the demo's): every shard optimised in ``per_sample`` mode (the
   method before pooling) and in ``pool`` mode, cost per successful sample in FE and seconds, and the
   checker's agreement with the successful ones.

Rejection that accepts fewer than ``--n`` within ``--max-draws`` prints draws per accept so far ("~"),
or with no accept at all the 95 % lower bound ``max_draws / 3`` (rule of three, ">").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest

from synthcxr.classifier.evaluate import read_thresholds
from synthcxr.config import deep_merge, load_config, read_config_file, section
from synthcxr.labels import NO_FINDING, combo_key
from synthcxr.lco.accept import LabelSpace, accept_rule, resolve_label_space
from synthcxr.lco.config import LCOConfig
from synthcxr.lco.cost import backward_ratio as lco_backward_ratio
from synthcxr.lco.cost import forward_equivalents
from synthcxr.lco.evaluate import checker_agrees, real_exact_match
from synthcxr.lco.optimize import optimise_latents
from synthcxr.lco.plan import read_plan
from synthcxr.lco.rejection import rejection_sample
from synthcxr.lco.seeds import pool_seed, sample_seeds
from synthcxr.lco.starts import score_latents
from synthcxr.utils.runtime import resolve_device, setup_logging


def backward_ratio(G, C, idx, batch: int, d: int, device, repeats: int) -> float:
    """r = median LCO step time / median no-grad forward time, from interleaved runs at ``batch``."""
    t = lco_backward_ratio(G, C, idx, batch, device, repeats)
    print(f"no-grad forward  batch {batch}: min {t['forward_min_s'] * 1e3:.1f} ms, median {t['forward_median_s'] * 1e3:.1f} ms")
    print(f"LCO step (f+b)   batch {batch}: min {t['update_min_s'] * 1e3:.1f} ms, median {t['update_median_s'] * 1e3:.1f} ms")
    return t["ratio"]


def gan_prevalence(G, C, space: LabelSpace, n: int, margin: float, seed: int, chunk: int) -> pd.Series:
    """Share of ``n`` random latents whose image clears each exact combination by ``margin`` (steering C)."""
    used = space.used
    idx = torch.as_tensor(np.asarray(space.clf_index)[used], dtype=torch.long, device=next(G.parameters()).device)
    z = torch.randn(n, int(G.latent_dim), generator=torch.Generator().manual_seed(seed))
    p = torch.sigmoid(score_latents(G, C, z, idx, chunk)).cpu().numpy()
    names = [space.labels[j] for j in np.flatnonzero(used)]
    findings = [j for j, nm in enumerate(names) if nm != NO_FINDING]
    # each latent's combination: the findings it shows, No_Finding exactly when it shows none
    vec = np.zeros(p.shape)
    vec[:, findings] = p[:, findings] >= space.thresholds[used][findings]
    if NO_FINDING in names:
        vec[:, names.index(NO_FINDING)] = ~vec[:, findings].any(1)
    ok = accept_rule(p, vec, space.thresholds[used], margin)
    keys = ["+".join(names[k] for k in findings if row[k]) or NO_FINDING for row in vec[ok]]
    return pd.Series(keys, dtype=object).value_counts().astype(float).sort_values(ascending=False) / n


def plan_combinations(plan_path: str, labels: list[str]) -> pd.Series:
    """Share of each combination key among a plan's targets."""
    plan = read_plan(plan_path, labels)
    keys = [combo_key(r, labels) for r in plan[labels].to_numpy()]
    return pd.Series(keys).value_counts(normalize=True)


def pick_combinations(prev: pd.Series, wanted: pd.Series, ultra: int) -> list[str]:
    """The GAN's commonest combination, a rarer single finding, and ``ultra`` multi-finding ones drawn in <= 1 %.

    Candidates are the plan's combinations when a plan is given (what users ask for, including ones the
    GAN never draws past the margin), most requested first, else the ones seen among the random latents.
    """
    picks = [str(prev.index[0])] if len(prev) else []
    pool = list(wanted.index) if len(wanted) else list(prev.index)
    rate = {k: float(prev.get(k, 0.0)) for k in pool}
    single = [k for k in pool if "+" not in k and k not in picks and rate[k] < rate.get(picks[0], 1.0)] if picks else []
    picks += single[:1]
    multi = [k for k in pool if "+" in k and rate[k] <= 0.01 and k not in picks]
    return picks + multi[:ultra]


def vector(key: str, labels: list[str]) -> np.ndarray:
    parts = set(key.split("+"))
    return np.array([1.0 if n in parts else 0.0 for n in labels], dtype=np.float32)


def fe_cost(res: pd.DataFrame, r: float) -> float:
    return forward_equivalents(res["g_evals"].to_numpy(), res["grad_steps"].to_numpy(), r)


def share(k: int, n: int) -> float:
    return k / n if n else float("nan")


def agreement(G, checker, ck_space, z: np.ndarray, targets: np.ndarray) -> float:
    return share(*agree_count(G, checker, ck_space, z, targets))


def agree_count(G, checker, ck_space, z: np.ndarray, targets: np.ndarray) -> tuple[int, int]:
    """(samples the checker agrees show their target, samples); (0, 0) without a checker or samples."""
    if checker is None or len(z) == 0:
        return 0, 0
    return int(checker_agrees(G, checker, ck_space, z, targets, batch_size=256).sum()), len(z)


def real_counts(metrics_path: Path) -> dict[str, tuple[int, int]]:
    """Per combination key, (test scans the checker reads exactly right, test scans), from its metrics.json
    (empty when it is missing or predates the per-combination record)."""
    if not metrics_path.exists():
        return {}
    try:
        per = real_exact_match(metrics_path).get("per_combination", {})
    except ValueError:
        return {}
    return {k: (round(v["rate"] * v["n"]), int(v["n"])) for k, v in per.items() if v.get("n")}


def rate_ci(k: int, n: int) -> str:
    """``k/n (rate, Wilson 95 % interval)``; ``-`` for no samples."""
    if not n:
        return "-"
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return f"{k}/{n} ({k / n:.1%}, {ci.low:.1%}-{ci.high:.1%})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--configfile", action="append", default=[], help="config overlays merged in order (e.g. config/demo-quick.yaml)")
    ap.add_argument("--generator", default="results/pggan/demo/generator.pt")
    ap.add_argument("--classifier", default="results/classifier/real/model.pt")
    ap.add_argument("--checker", default="results/classifier/check/model.pt", help="independent classifier; skipped when absent")
    ap.add_argument("--plan", default=None, help="plan.parquet: also compare per_sample and pool mode over every shard of it")
    ap.add_argument("--no-plan-run", action="store_true", help="with --plan: take the combinations from it but skip the plan-wide run")
    ap.add_argument("--skip-combos", action="store_true", help="only the backward ratio and the plan-wide run")
    ap.add_argument("--n", type=int, default=64, help="targets per combination")
    ap.add_argument("--prior", type=int, default=20000, help="random latents for the GAN's prevalence of each combination")
    ap.add_argument("--ultra", type=int, default=3, help="combinations drawn in <= 1%% of random latents")
    ap.add_argument("--max-draws", type=int, default=100000, help="rejection sampling budget per combination")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    missing = [p for p in (args.generator, args.classifier) if not Path(p).exists()]
    if missing:
        print("bench_lco_vs_rejection needs trained models, missing: " + ", ".join(missing) + "\n"
              "  train them first (make demo, or snakemake train_pggan results/classifier/real/model.pt), or pass --generator/--classifier",
              file=sys.stderr)
        return 2
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    from synthcxr.classifier import load_classifier
    from synthcxr.pggan import load_generator

    overrides: dict = {}
    for extra in args.configfile:
        overrides = deep_merge(overrides, read_config_file(extra))
    cfg = load_config(args.config, overrides or None)
    lco_cfg = section(cfg, "lco")
    lc = LCOConfig.from_section(lco_cfg)
    labels = lc.labels
    device = resolve_device(args.device)
    G = load_generator(args.generator, device)
    C = load_classifier(args.classifier, device)
    thr_path = str(Path(args.classifier).with_name("thresholds.json"))
    space = resolve_label_space(labels, C.label_names, read_thresholds(thr_path), where=thr_path).with_margins(lc.margin)
    checker = ck_space = None
    if args.checker and Path(args.checker).exists():
        checker = load_classifier(args.checker, device)
        ck_thr = str(Path(args.checker).with_name("thresholds.json"))
        ck_space = resolve_label_space(labels, checker.label_names, read_thresholds(ck_thr), where=ck_thr)
    idx = torch.as_tensor(np.asarray(space.clf_index)[space.used], dtype=torch.long, device=device)

    print(f"device {device}, torch threads {torch.get_num_threads()}; G {args.generator} ({G.resolution} px, latent {G.latent_dim}); "
          f"margin {lc.margin}, steps {lc.steps}, lr {lc.lr}, retries {lc.retries}, pool_factor {lc.pool_factor}, pool_block {lc.pool_block}, "
          f"init_candidates {lc.init_candidates}; checker {args.checker if checker is not None else 'none'}")
    r = backward_ratio(G, C, idx, lc.batch_size, int(G.latent_dim), device, args.repeats)
    print(f"r = step / forward = {r:.2f} (an LCO update costs {r:.2f} forward-equivalents)\n")

    prev = gan_prevalence(G, C, space, args.prior if not args.skip_combos else 1, lc.margin, args.seed + 7, 256)
    wanted = plan_combinations(args.plan, labels) if args.plan else pd.Series(dtype=float)
    combos = [] if args.skip_combos else pick_combinations(prev, wanted, args.ultra)
    header = (f"{'combination':<36}{'P(GAN)':>8}{'LCO ok':>8}{'LCO FE':>9}{'rej FE':>10}{'FE ratio':>9}"
              f"{'LCO s':>9}{'rej s':>9}{'s ratio':>8}{'LCO chk':>8}{'rej chk':>8}")
    print(f"per combination: {args.n} targets each; FE and s per accepted sample; ratio = rejection / LCO")
    print(header)
    print("-" * len(header))
    counts = []
    for i, key in enumerate(combos):
        vec = vector(key, labels)
        key = combo_key(vec, labels)
        tgt = np.tile(vec, (args.n, 1))
        t0 = time.perf_counter()
        res = optimise_latents(G, C, space, tgt, sample_seeds(args.seed + i, args.n), lc, pool_seed=args.seed + 1000 + i)
        t_lco = time.perf_counter() - t0
        ok = res["success"].to_numpy()
        lco_fe = fe_cost(res, r) / max(ok.sum(), 1)
        t0 = time.perf_counter()
        rej = rejection_sample(G, C, space, vec, args.max_draws, 1024, seed=args.seed + 2000 + i, max_accept=args.n, margin=lc.margin)
        t_rej = time.perf_counter() - t0
        done = rej.n_accepted >= args.n
        # short of --n accepts: the draws per accept so far, or with none the rule-of-three 95 % lower bound
        rej_fe = rej.g_evals / rej.n_accepted if rej.n_accepted else rej.g_evals / 3.0
        # wall clock: LCO as run; rejection's exact draws at the measured seconds per no-grad latent
        rej_s = rej_fe * t_rej / max(rej.computed, 1)  # its measured seconds per draw x its exact draws per accept
        lco_s = t_lco / max(ok.sum(), 1)
        z_ok = np.stack(res["z"][ok].to_list()) if ok.any() else np.zeros((0, G.latent_dim), np.float32)
        cl = agree_count(G, checker, ck_space, z_ok, tgt[ok])
        cr = agree_count(G, checker, ck_space, rej.z.numpy(), np.tile(vec, (rej.n_accepted, 1)))
        counts.append((key, cl, cr))
        chk_l, chk_r = share(*cl), share(*cr)
        mark = "" if done else ("~" if rej.n_accepted else ">")
        if ok.any():
            lco_col, fe_ratio, s_ratio = format(lco_fe, ".1f"), mark + format(rej_fe / lco_fe, ".1f"), mark + format(rej_s / lco_s, ".1f")
        else:  # no accepted sample: the FE it spent, and no ratio
            lco_col, fe_ratio, s_ratio = f"({fe_cost(res, r):.0f})", "-", "-"
        print(f"{key:<36}{prev.get(key, 0.0):>8.2%}{ok.mean():>8.3f}{lco_col:>9}{mark + format(rej_fe, '.1f'):>10}"
              f"{fe_ratio:>9}{lco_s * 1e3:>8.1f}m{mark + format(rej_s * 1e3, '.1f'):>8}m"
              f"{s_ratio:>8}{chk_l:>8.3f}{chk_r:>8.3f}", flush=True)
    print("FE = forward-equivalents (forwards + (r - 1) x backward passes); s in ms per accepted sample "
          "(rejection: its exact draws x its measured seconds per draw); chk = checker agreement; "
          "LCO FE in parentheses: none reached, the FE it spent")
    if counts and checker is not None:
        real = real_counts(Path(args.checker).with_name("metrics.json"))
        print("\nchecker agreement, counts and Wilson 95 % intervals; 'real scans': the checker's exact match on real test "
              "scans of the combination (its metrics.json), how often it reads the combination right at all")
        print(f"{'combination':<36}{'LCO':>32}{'rejection':>32}{'real scans':>32}")
        for key, cl, cr in counts:
            print(f"{key:<36}{rate_ci(*cl):>32}{rate_ci(*cr):>32}{rate_ci(*real.get(key, (0, 0))):>32}")

    if args.plan and not args.no_plan_run:
        plan = read_plan(args.plan, labels)
        print(f"\nover the plan {args.plan}: {len(plan)} samples in {plan['shard'].nunique()} shards")
        head = f"{'mode':<12}{'success':>9}{'FE/ok':>9}{'fwd/ok':>9}{'bwd/ok':>9}{'s/ok':>9}{'checker':>9}"
        print(head)
        print("-" * len(head))
        rows = {}
        for mode in ("per_sample", "pool"):
            lc_m = LCOConfig.from_section({**lco_cfg, "mode": mode})
            outs, t0 = [], time.perf_counter()
            for shard, part in plan.groupby("shard"):
                part = part.sort_values("index")
                outs.append(optimise_latents(G, C, space, part[labels].to_numpy(), part["seed"].to_numpy(), lc_m,
                                             pool_seed=pool_seed(int(cfg["seed"]), int(shard))))
            secs = time.perf_counter() - t0
            res = pd.concat(outs, ignore_index=True)
            ok = res["success"].to_numpy()
            z_ok = np.stack(res["z"][ok].to_list())
            tg = res[[f"target_{n}" for n in labels]].to_numpy()[ok]
            rows[mode] = (fe_cost(res, r) / ok.sum(), secs / ok.sum())
            print(f"{mode:<12}{ok.mean():>9.3f}{rows[mode][0]:>9.1f}{res['g_evals'].sum() / ok.sum():>9.1f}"
                  f"{res['grad_steps'].sum() / ok.sum():>9.1f}{rows[mode][1] * 1e3:>8.1f}m{agreement(G, checker, ck_space, z_ok, tg):>9.3f}", flush=True)
        print(f"pool vs per_sample: {rows['per_sample'][0] / rows['pool'][0]:.1f}x fewer FE, "
              f"{rows['per_sample'][1] / rows['pool'][1]:.1f}x less time per successful sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())

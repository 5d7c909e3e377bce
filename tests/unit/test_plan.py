"""Label plan: counts, frequencies, quotas parsing and errors, sharding and seeds."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from synthcxr.config import ConfigError, load_config
from synthcxr.labels import PHANTOM_LABELS, combo_key
from synthcxr.lco.plan import build_plan, largest_remainder, make_plan, read_plan, write_plan
from synthcxr.lco.seeds import derive_seed

LABELS = ["Cardiomegaly", "Effusion", "Nodule", "No_Finding"]


def _cfg(mode="match_real", n=100, shard_size=32, quotas=None, keep_rare=True):
    return {"plan": {"mode": mode, "n_samples": n, "quotas": quotas or {}, "keep_rare": keep_rare}, "shard_size": shard_size}


def _real_table(n=2000, seed=0) -> pd.DataFrame:
    """Correlated labels with a rare triple, NaNs, and rows in val/test that must be ignored."""
    rng = np.random.default_rng(seed)
    card = rng.random(n) < 0.3
    eff = np.where(card, rng.random(n) < 0.5, rng.random(n) < 0.1)
    nod = rng.random(n) < 0.05
    t = pd.DataFrame({"split": rng.choice(["train", "val", "test"], n, p=[0.7, 0.15, 0.15])})
    t["Cardiomegaly"] = card.astype(float)
    t["Effusion"] = eff.astype(float)
    t["Nodule"] = nod.astype(float)
    t.loc[rng.random(n) < 0.05, "Effusion"] = np.nan
    t["No_Finding"] = 0.0  # deliberately wrong: the plan must derive No_Finding from the findings
    return t


def _reference_freq(table: pd.DataFrame) -> pd.Series:
    """Independent reference: combination frequencies of the train split, NaN as absent."""
    tr = table[table["split"] == "train"]
    f = tr[["Cardiomegaly", "Effusion", "Nodule"]].fillna(0).astype(int)
    keys = f.apply(lambda r: "+".join(c for c in f.columns if r[c]) or "No_Finding", axis=1)
    return keys.value_counts(normalize=True)


def _plan_counts(plan: pd.DataFrame, labels=LABELS) -> pd.Series:
    return pd.Series([combo_key(v, labels) for v in plan[labels].to_numpy()]).value_counts()


def test_largest_remainder_hand_cases():
    assert largest_remainder(np.array([5, 3, 2]), 7).tolist() == [4, 2, 1]  # 3.5 2.1 1.4 -> remainder to .5
    assert largest_remainder(np.array([1, 1, 1]), 2).tolist() == [1, 1, 0]  # ties -> lower index
    assert largest_remainder(np.array([97, 2, 1]), 10).tolist() == [10, 0, 0]
    assert largest_remainder(np.array([97, 2, 1]), 10, keep_all=True).tolist() == [8, 1, 1]
    # not enough samples for every combination: keep_all cannot apply
    assert largest_remainder(np.array([97, 2, 1]), 2, keep_all=True).tolist() == [2, 0, 0]


def test_largest_remainder_properties_random():
    rng = np.random.default_rng(1)
    for _ in range(200):
        w = rng.random(rng.integers(1, 30)) ** 3
        n = int(rng.integers(1, 500))
        c = largest_remainder(w, n)
        ideal = n * w / w.sum()
        assert c.sum() == n
        assert np.all(np.abs(c - ideal) < 1)


def test_match_real_frequencies_within_rounding():
    table = _real_table()
    n = 1000
    plan = make_plan(_cfg(n=n, keep_rare=False), LABELS, table, seed=5)
    assert len(plan) == n
    ref = _reference_freq(table)
    got = _plan_counts(plan).reindex(ref.index, fill_value=0)
    assert set(_plan_counts(plan).index) <= set(ref.index)
    assert np.all(np.abs(got.to_numpy() - n * ref.to_numpy()) < 1.0)


def test_match_real_keeps_rare_combinations_and_exact_total():
    table = _real_table()
    ref = _reference_freq(table)
    n = 60  # small enough that some combinations have an ideal share < 0.5
    assert (n * ref < 0.5).any()
    plan = make_plan(_cfg(n=n, keep_rare=True), LABELS, table, seed=5)
    got = _plan_counts(plan)
    assert len(plan) == n
    assert set(got.index) == set(ref.index)  # every observed train combination survives
    big = ref[n * ref >= 2].index
    assert np.all(np.abs(got[big].to_numpy() - n * ref[big].to_numpy()) < 2.0)


def test_match_real_no_finding_derived_nan_absent_and_train_only():
    t = pd.DataFrame(
        {
            "split": ["train", "train", "train", "test", "val"],
            "Cardiomegaly": [1.0, 0.0, np.nan, 1.0, 1.0],
            "Effusion": [np.nan, 0.0, 0.0, 1.0, 1.0],
            "Nodule": [0.0, 0.0, 1.0, 1.0, 1.0],
            "No_Finding": [np.nan, np.nan, np.nan, 0.0, 0.0],
        }
    )
    plan = make_plan(_cfg(n=6), LABELS, t, seed=0)
    counts = _plan_counts(plan).to_dict()
    assert counts == {"Cardiomegaly": 2, "No_Finding": 2, "Nodule": 2}
    nf = plan["No_Finding"].to_numpy()
    assert np.array_equal(nf, (plan[["Cardiomegaly", "Effusion", "Nodule"]].sum(axis=1) == 0).astype(np.int8))


def test_match_real_missing_label_column_is_a_clear_error():
    t = _real_table().drop(columns=["Nodule"])
    with pytest.raises(ValueError, match="Nodule"):
        make_plan(_cfg(), LABELS, t, seed=0)


def test_balanced_counts_single_finding_targets():
    plan = make_plan(_cfg("balanced", n=10), LABELS, None, seed=3)
    vec = plan[LABELS].to_numpy()
    assert np.all(vec.sum(1) == 1)  # one primary label, No_Finding included
    counts = vec.sum(0).tolist()
    assert counts == [3, 3, 2, 2]  # remainder 10 % 4 = 2 -> first two labels in configured order
    assert plan[LABELS].dtypes.eq(np.int8).all()


def test_quotas_counts_and_parsing():
    q = {"Effusion+Cardiomegaly": 7, "No_Finding": 4, "Nodule": 2}
    plan = make_plan(_cfg("quotas", n=13, quotas=q), LABELS, None, seed=3)
    assert _plan_counts(plan).to_dict() == {"Cardiomegaly+Effusion": 7, "No_Finding": 4, "Nodule": 2}


@pytest.mark.parametrize(
    "quotas, n, match",
    [
        ({"Effusion+Pneumonia": 3}, 3, r"lco\.plan\.quotas\.Effusion\+Pneumonia"),
        ({"Effusion+Cardiomegaly": 3, "Cardiomegaly+Effusion": 2}, 5, "same combination"),
        ({"No_Finding+Effusion": 3}, 3, r"lco\.plan\.quotas\.No_Finding\+Effusion"),
        ({"Effusion": 3, "Nodule": 3}, 7, r"lco\.plan\.n_samples.*sum to 6"),
        ({}, 3, "quotas' is empty"),
        ({"Effusion": 0}, 0 + 1, r"lco\.plan\.quotas\.Effusion.*less than the minimum of 1"),
    ],
)
def test_quotas_errors_name_the_key(quotas, n, match):
    with pytest.raises(ValueError, match=match):
        make_plan(_cfg("quotas", n=n, quotas=quotas), LABELS, None, seed=0)


def test_sharding_ids_and_seeds():
    plan = make_plan(_cfg("balanced", n=300, shard_size=100), LABELS, None, seed=11)
    pos = np.arange(300)
    assert plan["shard"].tolist() == (pos // 100).tolist()
    assert plan["index"].tolist() == (pos % 100).tolist()
    assert plan["sample_id"].is_unique and plan["sample_id"].iloc[123] == "s0000123"
    assert plan["seed"].dtype == np.int64 and plan["seed"].is_unique and (plan["seed"] >= 0).all()
    # shards mix combinations: every shard holds every label in roughly equal numbers
    per_shard = plan.groupby("shard")[LABELS].sum()
    assert (per_shard.to_numpy() >= 10).all()
    # deterministic; seeds and order do not depend on the shard size; another seed reorders
    again = make_plan(_cfg("balanced", n=300, shard_size=7), LABELS, None, seed=11)
    assert again["seed"].equals(plan["seed"]) and again[LABELS].equals(plan[LABELS])
    other = make_plan(_cfg("balanced", n=300, shard_size=100), LABELS, None, seed=12)
    assert not other[LABELS].equals(plan[LABELS])
    assert not set(other["seed"]) & set(plan["seed"])


def test_derive_seed_is_order_sensitive_and_63_bit():
    seeds = {derive_seed(a, b) for a, b in itertools.product(range(30), range(30))}
    assert len(seeds) == 900 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, 2) != derive_seed(2, 1)


def test_write_read_plan_roundtrip_and_errors(tmp_path):
    plan = make_plan(_cfg("balanced", n=20), LABELS, None, seed=1)
    p = tmp_path / "a" / "plan.parquet"
    write_plan(plan, p)
    back = read_plan(p, LABELS)
    pd.testing.assert_frame_equal(back, plan)
    assert not list(p.parent.glob(".tmp-*"))
    with pytest.raises(ValueError, match="Mass"):
        read_plan(p, [*LABELS[:-1], "Mass"])
    with pytest.raises(FileNotFoundError, match="plan rule"):
        read_plan(tmp_path / "missing.parquet", LABELS)


def test_build_plan_from_prepared_folder(tiny_prepared, tmp_path):
    out = tmp_path / "plan.parquet"
    plan = build_plan(f"{tiny_prepared}/labels.parquet", _cfg(n=50, shard_size=16), list(PHANTOM_LABELS), 4, out)
    assert out.exists() and len(plan) == 50 and plan["shard"].max() == 3
    real = pd.read_parquet(f"{tiny_prepared}/labels.parquet")
    train_keys = {combo_key(v, PHANTOM_LABELS) for v in real[real["split"] == "train"][list(PHANTOM_LABELS)].to_numpy()}
    assert set(_plan_counts(plan, list(PHANTOM_LABELS)).index) <= train_keys


def test_schema_accepts_keep_rare_and_rejects_unknown_plan_key():
    cfg = load_config("config/config.yaml", {"lco": {"plan": {"keep_rare": False}}})
    assert cfg["lco"]["plan"]["keep_rare"] is False
    with pytest.raises(ConfigError, match="lco.plan"):
        load_config("config/config.yaml", {"lco": {"plan": {"keep_rarely": True}}})


def test_augment_raises_every_finding_to_min_positives_from_real_combinations_only():
    table = _real_table()
    real_keys = set(_reference_freq(table).index)
    cfg = {"plan": {"mode": "augment", "n_samples": 200, "min_positives": 40}, "shard_size": 64}
    plan = make_plan(cfg, LABELS, table, seed=1)
    counts = _plan_counts(plan)
    assert len(plan) == 200 and set(counts.index) <= real_keys  # never a combination the real data lacks
    positives = plan[["Cardiomegaly", "Effusion", "Nodule"]].sum()
    assert (positives >= 40).all(), positives.to_dict()
    # Nodule (~5 % of real scans) would get ~10 of 200 in match_real; here it gets its 40, spread over the
    # real combinations that hold it in proportion to their real frequency (hand check: Nodule-only is the
    # commonest of them)
    real = make_plan({**cfg, "plan": {"mode": "match_real", "n_samples": 200}}, LABELS, table, seed=1)
    assert real["Nodule"].sum() < 20 <= 40 <= positives["Nodule"] < 60
    nod = counts[[k for k in counts.index if "Nodule" in k]]
    assert nod.idxmax() == "Nodule"
    # deterministic, and a plan too small for the minimum is an error that says what to change
    pd.testing.assert_frame_equal(plan, make_plan(cfg, LABELS, table, seed=1))
    with pytest.raises(ValueError, match="raise n_samples or lower min_positives"):
        make_plan({**cfg, "plan": {"mode": "augment", "n_samples": 60, "min_positives": 40}}, LABELS, table, seed=1)
    with pytest.raises(ValueError, match="min_positives"):
        make_plan({**cfg, "plan": {"mode": "augment", "n_samples": 60}}, LABELS, table, seed=1)


def test_augment_counts_by_hand():
    from synthcxr.lco.plan import augment_counts

    freq = pd.Series({"No_Finding": 70, "Effusion": 20, "Cardiomegaly+Effusion": 6, "Nodule": 4})
    got = augment_counts(freq, LABELS, 40, min_positives=10)
    # Nodule first (4 real): 10 Nodule; Cardiomegaly (6): 10 of Cardiomegaly+Effusion, which also gives
    # Effusion its 10; the remaining 20 follow the real mix 70/20/6/4 -> 14, 4, 1.2, 0.8 -> 14, 4, 1, 1
    assert got == {"Nodule": 11, "Cardiomegaly+Effusion": 11, "No_Finding": 14, "Effusion": 4}
    assert sum(got.values()) == 40


def _checker_metrics(tmp_path, tpr: dict) -> str:
    import json

    per = {n: {"tpr": v, "n_pos": None if v is None else 10} for n, v in tpr.items()}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"test": {"exact_match": {"per_label": per}}}))
    return str(path)


def test_findings_the_checker_cannot_verify_are_left_out_of_the_plan(tmp_path, caplog):
    import logging

    from synthcxr.lco.plan import unverifiable_findings

    metrics = _checker_metrics(tmp_path, {"Cardiomegaly": 0.95, "Effusion": 0.5, "Nodule": None, "No_Finding": 1.0})
    assert unverifiable_findings(metrics, LABELS, 0.8) == {"Effusion": 0.5, "Nodule": None}
    assert unverifiable_findings(metrics, LABELS, 0.4) == {"Nodule": None}
    table = _real_table()
    plan = make_plan(_cfg(n=300), LABELS, table, seed=2, drop=["Effusion", "Nodule"])
    assert plan["Effusion"].sum() == plan["Nodule"].sum() == 0 and len(plan) == 300
    # what is left keeps its real proportions: Cardiomegaly-only vs No_Finding as in the real train split
    ref = _reference_freq(table)
    counts = _plan_counts(plan)
    assert set(counts.index) == {"Cardiomegaly", "No_Finding"}
    assert counts["Cardiomegaly"] / 300 == pytest.approx(ref["Cardiomegaly"] / (ref["Cardiomegaly"] + ref["No_Finding"]), abs=0.01)
    bal = make_plan(_cfg("balanced", n=10), LABELS, None, seed=3, drop=["Nodule"])
    assert bal["Nodule"].sum() == 0 and bal[["Cardiomegaly", "Effusion", "No_Finding"]].sum().tolist() == [4, 3, 3]
    with pytest.raises(ValueError, match=r"quotas.Nodule': asks for \['Nodule'\]"):
        make_plan(_cfg("quotas", n=5, quotas={"Nodule": 2, "No_Finding": 3}), LABELS, None, seed=3, drop=["Nodule"])
    # through the workflow entry point: the floor from the config, a warning naming each finding and its rate
    prep = tmp_path / "prep"
    prep.mkdir()
    from conftest import write_prepared

    write_prepared(prep, n=240, names=LABELS)
    cfg = {"plan": {"mode": "match_real", "n_samples": 40, "min_checker_sensitivity": 0.8}, "shard_size": 20}
    with caplog.at_level(logging.WARNING, logger="synthcxr"):
        out = build_plan(prep / "labels.parquet", cfg, LABELS, 1, tmp_path / "plan.parquet", checker_metrics=metrics)
    assert out["Effusion"].sum() == out["Nodule"].sum() == 0
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "Effusion left out: the checker calls it on 50 % of the real test scans" in msgs and "Nodule left out: no real test scan" in msgs
    with pytest.raises(ValueError, match="needs the checker's metrics.json"):
        build_plan(prep / "labels.parquet", cfg, LABELS, 1, tmp_path / "p2.parquet")


def _pairs(share, findings, weight=1.0):
    from synthcxr.lco.pair_plan import PairsConfig

    return PairsConfig.from_section({"share": share, "findings": findings, "latent_weight": weight})


def test_pairs_group_a_base_with_one_variant_per_finding_inside_one_shard():
    from synthcxr.lco.pair_plan import edit_target

    real = _real_table()
    cfg = {"plan": {"mode": "match_real", "n_samples": 300}, "shard_size": 32}
    plain = make_plan(cfg, LABELS, real, seed=5)
    assert make_plan(cfg, LABELS, real, seed=5, pairs=_pairs(0.0, [])).equals(plain)  # no pairs: the plan of before
    assert "pair_id" not in plain.columns
    plan = make_plan(cfg, LABELS, real, seed=5, pairs=_pairs(0.3, ["Effusion", "Nodule"]))
    assert len(plan) == 300 and plan["sample_id"].is_unique
    members = plan[plan["pair_id"] >= 0]
    assert plan["pair_id"].max() + 1 == 30 and len(members) == 90  # int(0.3 * 300) // 3 groups of 3
    for gid, grp in members.groupby("pair_id"):
        base = grp[grp["edit"] == ""]
        assert len(base) == 1 and grp["shard"].nunique() == 1  # a pair never spans two shards
        assert len(grp) == 3 and sorted(e[1:] for e in grp["edit"] if e) == ["Effusion", "Nodule"]
        assert set(grp.loc[grp["edit"] != "", "base_sample_id"]) == {base["sample_id"].iloc[0]}
        b = base[LABELS].to_numpy()[0]
        for _, v in grp[grp["edit"] != ""].iterrows():
            want, edit = edit_target(b, LABELS, v["edit"][1:])
            assert edit == v["edit"] and v[LABELS].to_numpy().tolist() == want.tolist()
    assert (plan.loc[plan["pair_id"] < 0, "base_sample_id"] == "").all() and (plan.loc[plan["pair_id"] < 0, "edit"] == "").all()
    assert plan["pair_id"].ge(0).groupby(plan["shard"]).any().sum() >= 8  # pairs spread over the shards
    # deterministic, and the non-pair rows keep the plan's frequencies (match_real on the rest)
    assert make_plan(cfg, LABELS, real, seed=5, pairs=_pairs(0.3, ["Effusion", "Nodule"])).equals(plan)


def test_pairs_that_cannot_be_laid_out_or_name_a_finding_outside_labels_are_errors():
    real = _real_table()
    with pytest.raises(ValueError, match=r"archive\.pairs: .* lco\.shard_size 4"):
        make_plan({"plan": {"mode": "match_real", "n_samples": 40}, "shard_size": 4}, LABELS, real, seed=1,
                  pairs=_pairs(0.9, ["Effusion", "Nodule"]))
    with pytest.raises(ValueError, match="quotas"):
        make_plan({"plan": {"mode": "quotas", "n_samples": 10, "quotas": {"Effusion": 10}}, "shard_size": 8}, LABELS, real,
                  seed=1, pairs=_pairs(0.5, ["Effusion"]))
    from pathlib import Path

    from synthcxr.config import validate_config

    base = load_config(Path(__file__).resolve().parents[2] / "config" / "config.yaml")
    for pairs, match in (({"share": 0.2, "findings": ["Hernia"]}, r"'archive\.pairs\.findings': 'Hernia' is not one of the findings"),
                         ({"share": 0.2, "findings": ["No_Finding"]}, r"'archive\.pairs\.findings': 'No_Finding'"),
                         ({"share": 0.2, "findings": []}, r"'archive\.pairs\.share': pairs need at least one finding")):
        cfg = {**base, "archive": {**base["archive"], "pairs": pairs}}
        with pytest.raises(ConfigError, match=match):
            validate_config(cfg)
    # the embedding proximity needs the patient verifier, which the re-identification audit trains
    no_reid = {**base, "archive": {**base["archive"], "pairs": {"share": 0.2, "findings": ["Effusion"], "embed_weight": 1.0}},
               "validate": {**base["validate"], "reid": {**base["validate"]["reid"], "enabled": False}}}
    with pytest.raises(ConfigError, match=r"'archive\.pairs\.embed_weight': .*validate\.reid\.enabled"):
        validate_config(no_reid)

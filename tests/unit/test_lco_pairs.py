"""Paired counterfactuals: a variant flips exactly one finding of its base and, with the proximity term,
stays closer to the base (in latent space and in an embedding of the image) than without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_lco import LABELS, THR, QuadrantClassifier, TinyGen, _cfg, _probs_of, optimise_latents

from synthcxr.lco.accept import accept_rule, resolve_label_space
from synthcxr.lco.config import LCOConfig
from synthcxr.lco.pair_plan import edit_target, variant_targets
from synthcxr.lco.pairs import optimise_variants


@pytest.fixture(scope="module")
def bases():
    torch.set_num_threads(1)
    G = TinyGen().eval()
    C = QuadrantClassifier().calibrate(G).eval()
    targets = np.array([[0, 0, 0, 1]] * 12 + [[0, 1, 0, 0]] * 12, dtype=np.float32)
    res = optimise_latents(G, C, THR, targets, np.arange(24) + 500, _cfg(steps=80, margin=0.5))
    ok = res["success"].to_numpy()
    assert ok.sum() >= 20
    return G, C, np.stack(res["z"].to_numpy())[ok], targets[ok]


def test_edit_target_flips_one_finding_and_no_finding_follows():
    t, e = edit_target(np.array([0, 0, 0, 1]), LABELS, "Effusion")
    assert e == "+Effusion" and t.tolist() == [0, 1, 0, 0]
    t, e = edit_target(np.array([0, 1, 0, 0]), LABELS, "Effusion")
    assert e == "-Effusion" and t.tolist() == [0, 0, 0, 1]
    t, e = edit_target(np.array([1, 1, 0, 0]), LABELS, "Effusion")
    assert e == "-Effusion" and t.tolist() == [1, 0, 0, 0]
    for bad in ("Hernia", "No_Finding"):
        with pytest.raises(ValueError, match=rf"archive\.pairs\.findings: '{bad}'"):
            edit_target(np.array([0, 0, 0, 1]), LABELS, bad)
    v = variant_targets(np.array([[0, 0, 0, 1], [0, 1, 0, 0]]), LABELS, ["Effusion", "Nodule"])
    assert v["edit"].tolist() == ["+Effusion", "+Nodule", "-Effusion", "+Nodule"] and v["base_row"].tolist() == [0, 0, 1, 1]
    assert v[[f"target_{n}" for n in LABELS]].to_numpy().tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 0]]


def _run(bases, **kw):
    G, C, z, t = bases
    cfg = LCOConfig.from_section(_cfg(steps=80, margin=0.5))
    space = resolve_label_space(LABELS, C.label_names, THR).with_margins(0.5)
    return optimise_variants(G, C, space, z, variant_targets(t, LABELS, ["Effusion"]), cfg, **kw)


def test_the_latent_proximity_term_keeps_variants_nearer_their_base(bases):
    G, C, z, t = bases
    free, near = _run(bases, latent_weight=0.0), _run(bases, latent_weight=1.0)
    both = free["success"].to_numpy() & near["success"].to_numpy()
    assert both.sum() >= 0.6 * len(free)
    assert near["latent_dist"][both].mean() < 0.9 * free["latent_dist"][both].mean()  # 0.43 against 0.51 here
    # every released variant meets the same accept rule as any sample, and its edit is the only change
    for res in (free, near):
        ok = res["success"].to_numpy()
        p = _probs_of(G, C, np.stack(res["z"].to_numpy())[ok])
        tgt = res[[f"target_{n}" for n in LABELS]].to_numpy()[ok]
        assert accept_rule(p, tgt, [THR[n] for n in LABELS], 0.5).all()
        np.testing.assert_allclose(p, res[[f"prob_{n}" for n in LABELS]].to_numpy()[ok], atol=1e-5)
    # one attempt from the base: deterministic, and the same run twice gives the same latents
    again = _run(bases, latent_weight=1.0)
    np.testing.assert_array_equal(np.stack(again["z"].to_numpy()), np.stack(near["z"].to_numpy()))


def test_a_variant_runs_every_step_it_has_whatever_the_patience(bases):
    """Patience ends a stalled attempt early to fund a fresh one; a variant gets no other attempt, so it keeps
    its steps: the same latents with lco.patience 3 as with none, and every unmet variant ran all 80 steps
    (margin 1 and a strong proximity weight leave about half of them unmet, stalled after ~9 steps)."""
    G, C, z, t = bases
    space = resolve_label_space(LABELS, C.label_names, THR).with_margins(1.0)
    runs = [optimise_variants(G, C, space, z, variant_targets(t, LABELS, ["Effusion"]),
                              LCOConfig.from_section(_cfg(steps=80, margin=1.0, patience=p)), 5.0) for p in (3, None)]
    np.testing.assert_array_equal(np.stack(runs[0]["z"].to_numpy()), np.stack(runs[1]["z"].to_numpy()))
    failed = runs[0][~runs[0]["success"]]
    assert len(failed) >= 3 and (failed["steps"] == 80).all()


def test_relax_rounds_deliver_the_variants_the_proximity_term_held_short_and_leave_the_rest(bases):
    """archive.pairs.relax_rounds: a variant met at full proximity weight keeps its latent byte for byte; one
    left short continues from where it stopped at half the weight, then a quarter, and more are met, each
    meeting the accept rule; ``attempts`` says which round met it and the extra rounds' evaluations are counted."""
    G, C, z, t = bases
    space = resolve_label_space(LABELS, C.label_names, THR).with_margins(1.0)
    cfg = LCOConfig.from_section(_cfg(steps=80, margin=1.0))
    vt = variant_targets(t, LABELS, ["Effusion"])
    one = optimise_variants(G, C, space, z, vt, cfg, 5.0)
    more = optimise_variants(G, C, space, z, vt, cfg, 5.0, relax_rounds=2, relax_factor=0.5)
    first = one["success"].to_numpy()
    assert (one["attempts"] == 1).all() and 3 <= (~first).sum()
    zs_one, zs_more = np.stack(one["z"].to_numpy()), np.stack(more["z"].to_numpy())
    np.testing.assert_array_equal(zs_more[first], zs_one[first])
    assert (more["attempts"].to_numpy()[first] == 1).all() and (more["attempts"].to_numpy()[~first] >= 2).all()
    relaxed = more["success"].to_numpy() & ~first
    assert relaxed.sum() >= 0.5 * (~first).sum()
    assert (more["g_evals"].to_numpy()[~first] > one["g_evals"].to_numpy()[~first]).all()
    # a relaxed variant moved on from its first attempt's end, further from its base
    assert (more["latent_dist"].to_numpy()[relaxed] > one["latent_dist"].to_numpy()[relaxed]).all()
    ok = more["success"].to_numpy()
    p = _probs_of(G, C, zs_more[ok])
    assert accept_rule(p, more[[f"target_{n}" for n in LABELS]].to_numpy()[ok], [THR[n] for n in LABELS], 1.0).all()
    still = more[~more["success"]]
    assert all("after 3 attempt(s)" in r for r in still["reason"])
    # relax_factor 0: the relaxed round has no proximity term, so it meets at least as many as a half-weight one
    free = optimise_variants(G, C, space, z, vt, cfg, 5.0, relax_rounds=1, relax_factor=0.0)
    half = optimise_variants(G, C, space, z, vt, cfg, 5.0, relax_rounds=1, relax_factor=0.5)
    assert free["success"].sum() >= half["success"].sum() > one["success"].sum()


def test_the_embedding_proximity_term_keeps_variant_images_nearer_their_base(bases):
    torch.manual_seed(3)
    proj = torch.randn(64, 16)

    def embed(x):
        return torch.nn.functional.normalize(x.flatten(1) @ proj, dim=1)

    free = _run(bases, latent_weight=0.0, embed=embed, embed_weight=0.0)
    near = _run(bases, latent_weight=0.0, embed=embed, embed_weight=5.0)
    both = free["success"].to_numpy() & near["success"].to_numpy()
    assert both.sum() >= 0.5 * len(free)
    assert near["embed_dist"][both].mean() < 0.8 * free["embed_dist"][both].mean()


def test_a_shard_with_pairs_optimises_variants_from_their_bases_and_writes_the_pair_columns(bases, tmp_path):
    """The plan's pairs through optimise_shard: bases first, then each variant from its base's latent; a variant
    whose base failed fails with a reason; the latents shard carries pair_id, base_sample_id, edit, latent_dist."""
    import pandas as pd
    import pyarrow.parquet as pq

    from synthcxr.lco.pair_plan import PairsConfig
    from synthcxr.lco.plan import make_plan
    from synthcxr.lco.run import optimise_shard

    G, C, _, _ = bases
    real = pd.DataFrame({"split": ["train"] * 40, "Cardiomegaly": [0.0] * 40, "Effusion": [1.0] * 10 + [0.0] * 30,
                         "Nodule": [0.0] * 40, "No_Finding": [0.0] * 40})
    pairs = PairsConfig.from_section({"share": 0.5, "findings": ["Effusion"], "latent_weight": 1.0})
    plan = make_plan({"plan": {"mode": "match_real", "n_samples": 24}, "shard_size": 24}, LABELS, real, seed=3, pairs=pairs)
    assert (plan["edit"] != "").sum() == 6
    cfg = LCOConfig.from_section(_cfg(steps=80, margin=0.5, retries=1))
    # one base made impossible to meet: its variant must fail with it
    hard = plan.index[(plan["pair_id"] == 0) & (plan["edit"] == "")][0]
    plan.loc[hard, ["Cardiomegaly", "Effusion", "Nodule", "No_Finding"]] = [1, 1, 1, 1]
    res = optimise_shard(plan, 0, G, C, THR, cfg, tmp_path / "shard-00000.parquet", pairs=pairs)
    assert res["sample_id"].tolist() == plan["sample_id"].tolist()
    var = res[res["edit"] != ""]
    dead = var[var["base_sample_id"] == plan.loc[hard, "sample_id"]]
    assert len(dead) == 1 and not dead["success"].iloc[0] and "was not met" in dead["reason"].iloc[0]
    live = var[var["base_sample_id"] != plan.loc[hard, "sample_id"]]
    assert live["success"].mean() >= 0.6 and (live.loc[live["success"], "latent_dist"] > 0).all()
    assert res.loc[res["edit"] == "", "latent_dist"].isna().all()
    # every met variant's probabilities are its latent's, and meet its edited target
    ok = live[live["success"]]
    p = _probs_of(G, C, np.stack(ok["z"].to_numpy()))
    assert accept_rule(p, ok[[f"target_{n}" for n in LABELS]].to_numpy(), [THR[n] for n in LABELS], 0.5).all()
    t = pq.read_table(tmp_path / "shard-00000.parquet")
    assert {"pair_id", "base_sample_id", "edit", "latent_dist"} <= set(t.column_names)
    assert t.column("edit").to_pylist() == plan["edit"].tolist()


def test_a_shard_kept_near_its_bases_in_the_patient_verifiers_embedding(bases, tmp_path):
    """archive.pairs.embed_weight through optimise_shard with a real (saved and reloaded) patient verifier: the
    latents shard records each variant's 1 - cos to its base, equal to the verifier's own embeddings of the
    written latents, and the term lowers it against the same shard without it."""
    import pandas as pd
    import pyarrow.parquet as pq

    from synthcxr.lco.pair_plan import PairsConfig
    from synthcxr.lco.plan import make_plan
    from synthcxr.lco.run import optimise_shard
    from synthcxr.validate.reid import load_verifier, save_verifier
    from synthcxr.validate.verifier import Verifier

    G, C, _, _ = bases
    torch.manual_seed(11)
    save_verifier(tmp_path / "verifier.pt", Verifier(res=8, width=4, embed_dim=16), {"threshold": 0.9})
    ver, _ = load_verifier(tmp_path / "verifier.pt", torch.device("cpu"))
    ver.requires_grad_(False)
    real = pd.DataFrame({"split": ["train"] * 40, "Cardiomegaly": [0.0] * 40, "Effusion": [1.0] * 10 + [0.0] * 30,
                         "Nodule": [0.0] * 40, "No_Finding": [0.0] * 40})
    cfg = LCOConfig.from_section(_cfg(steps=80, margin=0.5, retries=1))
    out = {}
    for w in (0.0, 300.0):  # a random verifier puts every image within ~0.002 of 1 - cos: the weight matches that scale
        pairs = PairsConfig.from_section({"share": 0.5, "findings": ["Effusion"], "latent_weight": 0.0, "embed_weight": w})
        plan = make_plan({"plan": {"mode": "match_real", "n_samples": 24}, "shard_size": 24}, LABELS, real, seed=3, pairs=pairs)
        optimise_shard(plan, 0, G, C, THR, cfg, tmp_path / f"w{w}.parquet", pairs=pairs, embed=ver if w else None)
        out[w] = pq.read_table(tmp_path / f"w{w}.parquet").to_pandas()
    with pytest.raises(ValueError, match="embed_weight > 0 needs the steering patient verifier"):
        optimise_shard(plan, 0, G, C, THR, cfg, tmp_path / "none.parquet", pairs=pairs)  # the weight without a verifier

    def dist(t: pd.DataFrame) -> np.ndarray:
        """1 - cos between each variant's and its base's verifier embeddings, from the written latents."""
        z = t.set_index("sample_id")["z"]
        var = t[t["edit"] != ""]
        with torch.no_grad():
            e_v = ver(G(torch.as_tensor(np.stack(var["z"].to_numpy()))))
            e_b = ver(G(torch.as_tensor(np.stack(z.loc[var["base_sample_id"]].to_numpy()))))
        return (1.0 - (e_v * e_b).sum(1)).numpy()

    near, free = out[300.0], out[0.0]
    assert near.loc[near["edit"] == "", "embed_dist"].isna().all() and free["embed_dist"].isna().all()
    nv, fv = near[near["edit"] != ""], free[free["edit"] != ""]
    np.testing.assert_allclose(nv["embed_dist"].to_numpy(), dist(near), atol=1e-4)
    both = nv["success"].to_numpy() & fv["success"].to_numpy()
    assert both.sum() >= 3
    assert dist(near)[both].mean() < 0.8 * dist(free)[both].mean()  # 0.29 of it here


def test_rebase_rounds_draw_new_bases_for_pairs_left_short_and_keep_the_rest_byte_for_byte(bases, tmp_path):
    """archive.pairs.rebase_rounds: a pair whose base or a variant went unmet draws a new base for the same target
    (seed ``rebase_seed(plan seed, round)``) and its variants from it, and takes them only when more members are
    met; every other pair keeps its bytes. The extra evaluations are charged to the short pairs' rows, every met
    member meets the accept rule, and a taken variant's latent_dist is measured from its new base."""
    import pandas as pd

    from synthcxr.lco.pair_plan import PairsConfig
    from synthcxr.lco.plan import make_plan
    from synthcxr.lco.run import optimise_shard
    from synthcxr.lco.seeds import attempt_seed, rebase_seed

    G, C, _, _ = bases
    real = pd.DataFrame({"split": ["train"] * 40, "Cardiomegaly": [0.0] * 40, "Effusion": [1.0] * 10 + [0.0] * 30,
                         "Nodule": [0.0] * 40, "No_Finding": [0.0] * 40})
    cfg = LCOConfig.from_section(_cfg(steps=80, margin=0.5, retries=1))
    out = {}
    for rounds in (0, 2):  # a strong latent term and no relaxing leave a third of the variants unmet
        pairs = PairsConfig.from_section({"share": 0.75, "findings": ["Effusion", "Nodule"], "latent_weight": 3.0,
                                          "relax_rounds": 0, "rebase_rounds": rounds})
        plan = make_plan({"plan": {"mode": "match_real", "n_samples": 24}, "shard_size": 24}, LABELS, real, seed=3, pairs=pairs)
        hard = plan.index[(plan["pair_id"] == 0) & (plan["edit"] == "")][0]
        plan.loc[hard, ["Cardiomegaly", "Effusion", "Nodule", "No_Finding"]] = [1, 1, 1, 1]  # a base no seed meets
        out[rounds] = optimise_shard(plan, 0, G, C, THR, cfg, tmp_path / f"r{rounds}.parquet", pairs=pairs)
    one, more = out[0], out[2]
    assert one["sample_id"].tolist() == more["sample_id"].tolist() == plan["sample_id"].tolist()
    members = one["pair_id"] >= 0
    met = one[members].groupby("pair_id")["success"].agg(["sum", "size"])
    short = set(met.index[met["sum"] < met["size"]])
    assert 3 <= len(short) < len(met) and 0 in short
    zs1, zs2 = np.stack(one["z"].to_numpy()), np.stack(more["z"].to_numpy())
    whole = ~one["pair_id"].isin(short).to_numpy()  # single samples and pairs met whole: untouched
    np.testing.assert_array_equal(zs2[whole], zs1[whole])
    np.testing.assert_array_equal(more["g_evals"].to_numpy()[whole], one["g_evals"].to_numpy()[whole])
    in_short = one["pair_id"].isin(short).to_numpy()
    g1, g2 = one["g_evals"].to_numpy(), more["g_evals"].to_numpy()
    assert (g2[in_short] >= g1[in_short]).all() and (g2[in_short & (one["edit"] == "").to_numpy()] > g1[in_short & (one["edit"] == "").to_numpy()]).all()
    # pairs took a new base only to meet more members; some did, and the impossible one stays unmet
    per1 = one[members].groupby("pair_id")["success"].sum()
    per2 = more[members].groupby("pair_id")["success"].sum()
    assert (per2 >= per1).all() and per2.sum() > per1.sum() and per2[0] == 0
    assert "was not met" in more.loc[(more["pair_id"] == 0) & (more["edit"] != ""), "reason"].iloc[0]
    took = [g for g in short if per2[g] > per1[g]]
    for g in took:
        base = more[(more["pair_id"] == g) & (more["edit"] == "")].iloc[0]
        plan_seed = int(plan.loc[plan["sample_id"] == base["sample_id"], "seed"].iloc[0])
        # the seed of its last attempt: a rebase seed, or that seed's retry
        assert int(base["seed"]) in {attempt_seed(rebase_seed(plan_seed, r), int(base["attempts"]) - 1) for r in (1, 2)}
        var = more[(more["pair_id"] == g) & (more["edit"] != "") & more["success"]]
        d = G.latent_dim
        dist = np.sqrt(((np.stack(var["z"].to_numpy())[:, :d] - base["z"][:d]) ** 2).sum(1) / d)
        np.testing.assert_allclose(var["latent_dist"].to_numpy(), dist, rtol=1e-5)
    ok = more["success"].to_numpy()
    p = _probs_of(G, C, zs2[ok])
    assert accept_rule(p, more[[f"target_{n}" for n in LABELS]].to_numpy()[ok], [THR[n] for n in LABELS], 0.5).all()
    np.testing.assert_allclose(p, more[[f"prob_{n}" for n in LABELS]].to_numpy()[ok], atol=1e-5)

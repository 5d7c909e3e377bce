"""Paired counterfactuals in the release: a group (a base and its variants) is released whole, and every
format carries pair_id, base_sample_id and edit, read back by h5py, pyarrow and Hugging Face datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from archive_fixtures import BATCH, LABELS, make_generator, write_shard_latents  # noqa: E402

from synthcxr.archive.finalize import finalize_archive  # noqa: E402
from synthcxr.archive.gates import pair_mask  # noqa: E402
from synthcxr.archive.sample import ArchiveConfig, sample_shard  # noqa: E402
from synthcxr.archive.seal import seal_release  # noqa: E402
from synthcxr.archive.verify import verify_release  # noqa: E402
from synthcxr.pggan.checkpoint import save_generator  # noqa: E402
from synthcxr.utils.hashing import sha256_file  # noqa: E402


def _frame(groups: list[tuple[bool, list[bool]]], singles: int) -> pd.DataFrame:
    """Latent rows: per group a base (its success) and variants (their success); then single samples."""
    rows = []
    for g, (base_ok, var_ok) in enumerate(groups):
        base = f"s{len(rows):07d}"
        rows.append({"sample_id": base, "pair_id": g, "base_sample_id": "", "edit": "", "success": base_ok, "t": [0, 0, 0, 1]})
        for k, ok in enumerate(var_ok):
            rows.append({"sample_id": f"s{len(rows):07d}", "pair_id": g, "base_sample_id": base, "edit": f"+{LABELS[k]}",
                         "success": ok, "t": [int(j == k) for j in range(3)] + [0]})
    for _ in range(singles):
        rows.append({"sample_id": f"s{len(rows):07d}", "pair_id": -1, "base_sample_id": "", "edit": "", "success": True, "t": [0, 1, 0, 0]})
    df = pd.DataFrame(rows)
    out = pd.DataFrame({"sample_id": df["sample_id"], "shard": 0, "index": np.arange(len(df)), "seed": np.arange(len(df)) + 7, "attempts": 1})
    for j, n in enumerate(LABELS):
        out[f"target_{n}"] = [t[j] for t in df["t"]]
    for n in LABELS:
        out[f"prob_{n}"] = np.float32(0.5)
    out["steps"], out["g_evals"], out["grad_steps"] = 3, 3.0, 2
    out["success"] = df["success"].to_numpy()
    out["reason"] = np.where(out["success"], "", "target not met")
    out["pair_id"], out["base_sample_id"], out["edit"] = df["pair_id"], df["base_sample_id"], df["edit"]
    out["latent_dist"] = np.where(df["edit"] != "", 0.3, np.nan).astype(np.float32)
    out["embed_dist"] = np.where(df["edit"] != "", 0.05, np.nan).astype(np.float32)
    return out


def test_pair_mask_releases_whole_groups():
    df = _frame([(True, [True, True]), (True, [True, False]), (False, [True, True]), (True, [False, False]), (True, [True, True])], 2)
    released = df["success"].to_numpy().copy()
    released[df.index[df["sample_id"] == "s0000013"]] = False  # a gate withholds a variant of group 4
    held = pair_mask(df, released)
    got = {g: bool((released & ~held)[df["pair_id"] == g].any()) for g in range(5)}
    # group 1 loses its failed variant only; group 2's base failed; group 3 has no variant left; group 4 was gated
    assert got == {0: True, 1: True, 2: False, 3: False, 4: False}
    assert (released & ~held)[df["pair_id"] == 1].sum() == 2 and not held[df["pair_id"] < 0].any()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    G = make_generator()
    gen = root / "generator.pt"
    save_generator(gen, G, {"kimg": 0})
    cfg = ArchiveConfig.from_section(dict(labels=LABELS, formats=["h5", "parquet", "webdataset"], batch_size=BATCH, name="pairs",
                                          shard_mb=0.002, workers=1))
    df = _frame([(True, [True, True]), (True, [True, False]), (False, [True, True]), (True, [True, True])], 5)
    z = np.random.default_rng(0).standard_normal((len(df), G.latent_dim)).astype(np.float32)
    lp = root / "work" / "latents" / "shard-00000.parquet"
    write_shard_latents(lp, df, z)
    sample_shard(lp, G, {f: root / "work" / "shards" / f"shard-00000.{f}" for f in cfg.work_formats}, cfg, sha256_file(gen))
    mem = root / "memorization.parquet"
    pd.DataFrame({"sample_id": df["sample_id"], "flagged": df["sample_id"] == "s0000011"}).to_parquet(mem)  # group 3: 2nd variant
    info = finalize_archive(root / "work", root / "release", cfg, [lp], gen, None, mem, shard_size=64)
    seal_release(root / "release", memorization=mem)
    return root / "release", info, df


def test_the_release_holds_whole_pairs_and_counts_them(release):
    rel, info, df = release
    man = pd.read_parquet(rel / "manifest.parquet")
    assert set(man["pair_id"][man["pair_id"] >= 0]) == {0, 1}  # group 2: base failed; group 3: a member was flagged
    assert len(man[man["pair_id"] == 1]) == 2 and (man["edit"][man["pair_id"] == 1] != "").sum() == 1
    c = info["counts"]
    assert (c["n_pairs_planned"], c["n_pairs_released"], c["n_variants_planned"], c["n_variants_released"]) == (4, 2, 8, 3)
    assert c["n_withheld_with_pair"] == 4 and c["n_released"] == len(man) == 5 + 3 + 2
    assert all(verify.ok for verify in verify_release(rel))


def test_pair_columns_read_by_h5py_pyarrow_and_datasets(release):
    import datasets

    rel, _, _ = release
    man = pd.read_parquet(rel / "manifest.parquet").set_index("sample_id")
    for p in sorted((rel / "h5").glob("*.h5")):
        with h5py.File(p, "r") as f:
            ids = [s.decode() for s in f["sample_id"][:]]
            assert f["pair_id"][:].tolist() == man.loc[ids, "pair_id"].tolist()
            assert [e.decode() for e in f["edit"][:]] == man.loc[ids, "edit"].tolist()
    t = pq.read_table(sorted((rel / "parquet").glob("*.parquet"))).to_pandas().set_index("sample_id")
    assert t["base_sample_id"].tolist() == man.loc[t.index, "base_sample_id"].tolist()
    ds = datasets.load_dataset("parquet", data_files=[str(p) for p in sorted((rel / "parquet").glob("*.parquet"))], split="train")
    assert ds.features["pair_id"].dtype == "int64" and ds.features["edit"].dtype == "string"
    assert sorted(ds["pair_id"]) == sorted(man["pair_id"].tolist())


def test_verify_refuses_a_pair_that_is_not_whole(release, tmp_path):
    import shutil

    from synthcxr.archive.verify import pair_problems

    rel, _, _ = release
    man = pd.read_parquet(rel / "manifest.parquet")
    assert pair_problems(man) == []
    half = man[~((man["pair_id"] == 1) & (man["edit"] != ""))]
    assert pair_problems(half) == ["pair 1 is not whole: 1 base(s) and 0 variant(s) released"]
    wrong = man.copy()
    wrong.loc[(wrong["pair_id"] == 0) & (wrong["edit"] != ""), "base_sample_id"] = "s9999999"
    assert "names base 's9999999'" in pair_problems(wrong)[0]
    # a release whose manifest lost a variant fails verify
    copy = tmp_path / "release"
    shutil.copytree(rel, copy)
    m = pd.read_parquet(copy / "manifest.parquet")
    m.loc[(m["pair_id"] == 1) & (m["edit"] != ""), "pair_id"] = -1
    m.to_parquet(copy / "manifest.parquet")
    bad = [c for c in verify_release(copy, sealed=False) if not c.ok]
    assert any("has an edit or a base but no pair_id" in c.reason or "not whole" in c.reason for c in bad)


def test_archive_pairs_lists_each_released_variant_with_its_base(release):
    from synthcxr.archive import open as open_archive

    rel, _, _ = release
    arc = open_archive(rel)
    pairs = arc.pairs()
    assert pairs.columns.tolist() == ["pair_id", "base_sample_id", "sample_id", "edit"] and len(pairs) == 3
    for _, p in pairs.iterrows():
        a, b = arc.read(p["base_sample_id"]), arc.read(p["sample_id"])
        assert a.shape == b.shape and not np.array_equal(a, b)
    plain = open_archive(rel).filter(require=["Effusion"])
    assert set(plain.pairs()["sample_id"]) <= set(plain.manifest["sample_id"])


def test_flip_table_and_equal_error_threshold_by_hand():
    from sklearn.metrics import roc_curve

    from synthcxr.validate.pairs import equal_error_threshold, flip_table

    names = LABELS  # Cardiomegaly, Effusion, Nodule, No_Finding
    base = np.array([[0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]], bool)
    var = np.array([[0, 1, 0, 0], [0, 0, 0, 1], [0, 1, 1, 0], [1, 0, 0, 0]], bool)
    t = flip_table(base, var, ["+Effusion", "-Effusion", "+Effusion", "-Cardiomegaly"], names)
    assert t["flipped"].tolist() == [True, True, True, False]
    assert t["others_unchanged"].tolist() == [True, True, False, True]  # pair 3 also gained Nodule
    rng = np.random.default_rng(0)
    same, diff = rng.normal(0.7, 0.1, 400), rng.normal(0.4, 0.1, 400)
    t_eer = equal_error_threshold(same, diff)
    assert abs((same <= t_eer).mean() - (diff > t_eer).mean()) < 0.01
    # sklearn's ROC: at the EER cut the false-positive rate equals the false-negative rate
    fpr, tpr, cuts = roc_curve(np.r_[np.ones(400), np.zeros(400)], np.r_[same, diff])
    k = int(np.argmin(np.abs(fpr - (1 - tpr))))
    assert abs(cuts[k] - t_eer) < 0.02


def test_run_pairs_reports_flips_and_same_patient_rates(release, tmp_path, tiny_prepared):
    import json

    import torch

    from synthcxr.classifier.models import Classifier, default_arch
    from synthcxr.utils.atomic import torch_save, write_json
    from synthcxr.validate.pairs import run_pairs
    from synthcxr.validate.reid import save_verifier
    from synthcxr.validate.verifier import Verifier

    rel, _, _ = release
    torch.manual_seed(0)
    arch = default_arch("small_cnn", len(LABELS), 16, 4)
    clf = Classifier(arch, LABELS, 16)
    torch_save({"arch": arch, "state_dict": clf.state_dict(), "meta": {"label_names": LABELS, "input_res": 16}}, tmp_path / "model.pt")
    write_json(tmp_path / "thresholds.json", {n: 0.5 for n in LABELS})
    save_verifier(tmp_path / "verifier.pt", Verifier(res=16, width=4, embed_dim=8).eval(), {"threshold": 0.9})
    out = run_pairs(rel, tiny_prepared, tmp_path / "model.pt", tmp_path / "thresholds.json", tmp_path / "verifier.pt",
                    tmp_path / "pairs.json", tmp_path / "g.png", device="cpu", align=1,
                    phantom={"n_patients": 60, "max_studies": 2, "seed": 1})
    js = json.loads((tmp_path / "pairs.json").read_text())
    assert js == json.loads(json.dumps(out)) and js["n_variants"] == 3 and js["n_pairs"] == 2
    assert 0 <= js["checker"]["flipped"] <= 1 and set(js["checker"]["per_edit"]) <= {"+Cardiomegaly", "+Effusion"}
    v = js["verifier"]
    for part in ("pairs", "real_followups", "real_different_patients"):
        assert 0 <= v[part]["same_at_audit"] <= 1 and 0 <= v[part]["same_at_eer"] <= 1
    assert v["audit_threshold"] == 0.9 and (tmp_path / "g.png").stat().st_size > 1000
    assert js["cost_per_variant"] == {"forwards": 3.0, "backwards": 2.0} and js["latent_dist_median"] == pytest.approx(0.3)
    assert js["embed_dist_median"] == pytest.approx(0.05)
    from synthcxr.archive.card import render_card
    from synthcxr.archive.verify import read_info

    card = render_card(read_info(rel), pairs=tmp_path / "pairs.json")
    assert "### Paired counterfactuals" in card and "2 of 4 planned pairs are released, with 3 of 8 variants" in card
    assert ".pairs()" in card and "of real follow-up studies" in card
    reg = js["region"]  # the region check runs on the phantom's atlas at the release's resolution
    assert reg["mass"] == 0.9 and set(reg["per_edit"]) == set(js["checker"]["per_edit"])
    for r in reg["per_edit"].values():
        assert 0 < r["region_area"] < 1 and (r["inside_median"] is None or 0 <= r["inside_median"] <= 1)
    assert "inside the edited finding's region" in card

"""The re-identification audit on the phantom: a verifier trained on training patients' follow-ups must tell
patients apart on held-out patients, match a planted (shifted, noisy) training scan to its patient, and match
unseen patients no more often than the configured false-match rate."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_real import dataset_config  # noqa: E402

from synthcxr.archive.gates import release_mask  # noqa: E402
from synthcxr.archive.shard_h5 import H5ShardWriter  # noqa: E402
from synthcxr.data.prepare import prepare  # noqa: E402
from synthcxr.data.store import PreparedDataset  # noqa: E402
from synthcxr.lco.latents import write_latents  # noqa: E402
from synthcxr.validate.reid import (  # noqa: E402
    ReidConfig,
    load_verifier,
    patient_codes,
    run_reid,
    run_train_verifier,
    wilson_upper,
)
from synthcxr.validate.verifier import (  # noqa: E402
    PairSampler,
    Verifier,
    eligible_patients,
    embed_rows,
    pair_loss,
    pair_scores,
    threshold_at,
)

LABELS = ["Cardiomegaly", "Effusion", "No_Finding"]
RES = 32
FMR = 0.05  # the held-out sets here hold a few hundred images: 5 % keeps the check's noise small
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("reid_prep")
    cfg = dataset_config("phantom", None, phantom={"n_patients": 450, "max_studies": 4, "seed": 21}, max_res=RES,
                      split={"train": 0.5, "val": 0.25, "test": 0.25, "seed": 3})
    prepare(cfg, LABELS, out)
    return out


def _cfg(**over) -> ReidConfig:
    reid = {"res": RES, "width": 8, "embed_dim": 64, "steps": 600, "patients_per_batch": 32, "lr": 3e-3,
            "false_match_rate": FMR, "gallery": 3, "max_heldout": 1000, **over}
    return ReidConfig.from_section({"reid": reid, "seed": 4, "device": "cpu", "labels": LABELS})


@pytest.fixture(scope="module")
def verifier(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("reid_model")
    torch.set_num_threads(2)
    metrics = run_train_verifier(_cfg(), phantom, out / "verifier.pt", out / "verifier.json")
    return out / "verifier.pt", out / "verifier.json", metrics


def test_threshold_at_allows_at_most_the_rate_above():
    neg = np.arange(100) / 100.0
    t = threshold_at(neg, 0.05)
    assert t == pytest.approx(0.94) and (neg > t).sum() == 5
    assert (neg > threshold_at(neg, 0.001)).sum() == 0
    ties = np.r_[np.zeros(90), np.ones(10)]
    assert (ties > threshold_at(ties, 0.05)).sum() <= 5  # ties can only make it stricter


@pytest.mark.parametrize("k,n", [(0, 50), (3, 200), (17, 1739), (40, 40)])
def test_wilson_upper_matches_scipy(k, n):
    ref = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson").high
    assert wilson_upper(k, n) == pytest.approx(ref, abs=2e-4)


def test_pair_loss_prefers_separated_patients():
    torch.manual_seed(0)
    model = Verifier(res=8, width=4, embed_dim=8)
    patient = torch.arange(6).repeat_interleave(2)
    base = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    apart = base.repeat_interleave(2, dim=0)  # both studies of a patient at one point
    mixed = apart[torch.randperm(12)]
    with torch.no_grad():
        assert float(pair_loss(model, apart, patient)) < float(pair_loss(model, mixed, patient))


def test_pair_sampler_draws_two_studies_of_distinct_patients(phantom):
    prep = PreparedDataset(phantom)
    patients = eligible_patients(prep.split("train"))
    assert patients and all(len(v) >= 2 for v in patients.values())
    rows, pid = PairSampler(patients, 16, seed=1)()
    keys = patient_codes(prep, rows)
    assert len(set(pid)) == 16 and len(rows) == 32
    for i in range(0, 32, 2):
        assert keys[i] == keys[i + 1] and rows[i] != rows[i + 1]
    assert len(set(keys)) == 16
    assert set(prep.table.set_index("row").loc[rows, "split"]) == {"train"}
    with pytest.raises(ValueError, match="studies"):
        PairSampler({"a": np.array([1, 2])}, 4, 0)


def test_verifier_separates_heldout_patients(verifier, phantom):
    path, metrics_path, metrics = verifier
    ver = metrics["verification"]
    assert ver["auc"] > 0.9, ver  # chance is 0.5
    assert ver["pair_false_match_rate"] <= FMR
    assert json.loads(metrics_path.read_text())["verification"]["auc"] == ver["auc"]
    # the reported AUC is scikit-learn's on the same held-out pairs
    model, meta = load_verifier(path, CPU)
    prep = PreparedDataset(phantom)
    held = prep.table[prep.table["split"].isin(["val", "test"])]
    rows = np.sort(np.concatenate(list(eligible_patients(held).values())))
    scores, same = pair_scores(embed_rows(model, prep, rows, _cfg().verifier, CPU), patient_codes(prep, rows))
    assert roc_auc_score(same, scores) == pytest.approx(ver["auc"], abs=1e-9)
    assert meta["threshold"] == metrics["audit"]["threshold"]


def test_heldout_patients_matched_at_most_at_the_false_match_rate(verifier):
    audit = verifier[2]["audit"]
    assert audit["calibration"]["match_rate"] <= FMR
    check = audit["heldout_check"]  # test split: took no part in choosing the threshold
    n = check["n"]
    assert n > 150
    # a binomial(n, FMR) count exceeds FMR + 3 sd with probability < 0.3 %
    assert check["match_rate"] <= FMR + 3 * math.sqrt(FMR * (1 - FMR) / n), check
    # identity, not copies: a new study of an enrolled unseen patient is its best match far above chance
    follow = audit["followup_reid"]
    assert follow["n"] > 30 and follow["rank1"] > 0.4, follow


def _write_work(folder: Path, images: np.ndarray, ids: list[str], success: list[bool]) -> tuple[Path, Path]:
    n = len(images)
    shard = folder / "shards" / "shard-00000.h5"
    with H5ShardWriter(shard, n, RES, LABELS, compression="gzip") as w:
        w.write(0, images, np.zeros((n, len(LABELS)), np.uint8), np.zeros((n, len(LABELS)), np.float32), ids)
    frame = pd.DataFrame({"sample_id": ids, "shard": 0, "index": np.arange(n), "seed": np.arange(n), "attempts": 1,
                          "z": list(np.zeros((n, 4), np.float32))})
    for j, name in enumerate(LABELS):
        frame[f"target_{name}"] = (np.arange(n) % 2 == 0).astype(int) if j == 0 else int(name == "No_Finding")
        frame[f"prob_{name}"] = 0.5
    frame["steps"], frame["g_evals"], frame["grad_steps"], frame["reason"] = 1, 1.0, 1, ""
    frame["success"] = success
    lat = folder / "latents" / "shard-00000.parquet"
    write_latents(frame, LABELS, lat)
    return shard, lat


def test_audit_matches_planted_training_scans_not_unseen_patients(verifier, phantom, tmp_path):
    path, metrics_path, metrics = verifier
    prep = PreparedDataset(phantom)
    rng = np.random.default_rng(7)
    train_rows = np.sort(rng.choice(prep.split("train")["row"].to_numpy(), 12, replace=False))
    planted = prep.read_images(RES, train_rows).astype(np.int16)
    # augmented copies: a 1 px shift and pixel noise (sd 4 grey levels)
    planted = np.roll(planted, shift=(1, -1), axis=(1, 2)) + rng.normal(0, 4, planted.shape).round().astype(np.int16)
    planted = np.clip(planted, 0, 255).astype(np.uint8)
    test_rows = np.sort(prep.split("test")["row"].to_numpy())
    unseen = prep.read_images(RES, test_rows)
    images = np.concatenate([unseen[:100], planted, unseen[100:]])
    ids = [f"u{i:04d}" for i in range(100)] + [f"p{i:02d}" for i in range(12)] + [f"u{i:04d}" for i in range(100, len(unseen))]
    success = [True] * len(images)
    success[-1] = False
    shard, lat = _write_work(tmp_path / "work", images, ids, success)
    val = tmp_path / "val"
    summary = run_reid(_cfg(), [shard], [lat], phantom, path, metrics_path, val / "reid.parquet", val / "reid.json",
                       val / "reid_gallery.png")
    df = pd.read_parquet(val / "reid.parquet").set_index("sample_id")
    assert list(df.columns) == ["combination", "success", "nn_row", "nn_patient", "score", "matched"]
    p = df.loc[[f"p{i:02d}" for i in range(12)]]
    assert p["matched"].all(), p
    assert (p["nn_patient"].to_numpy() == patient_codes(prep, train_rows)).all()
    u = df[df.index.str.startswith("u")]
    n = len(u)
    assert u["matched"].mean() <= FMR + 3 * math.sqrt(FMR * (1 - FMR) / n)
    assert summary["samples"]["n"] == len(images) and summary["samples"]["n_matched"] == int(df["matched"].sum())
    assert summary["samples"]["successful"]["n"] == len(images) - 1
    per = summary["samples"]["per_combination"]
    assert sum(v["n"] for v in per.values()) == len(images)
    assert json.loads((val / "reid.json").read_text())["verification"]["auc"] == metrics["verification"]["auc"]
    assert (val / "reid_gallery.png").stat().st_size > 1000

    # the gate: matched samples leave the release, failed ones are not counted twice
    full = pd.DataFrame({"sample_id": ids, "success": success})
    released, failed, flagged, matched = release_mask(full, None, val / "reid.parquet")
    assert set(full.loc[matched, "sample_id"]) == set(df.index[df["matched"] & df["success"]])
    assert not (released & matched).any() and not flagged.any() and failed.sum() == 1
    assert released.sum() == len(ids) - 1 - matched.sum()


def test_unaudited_sample_refused(tmp_path):
    pd.DataFrame({"sample_id": ["a"], "matched": [False]}).to_parquet(tmp_path / "reid.parquet")
    full = pd.DataFrame({"sample_id": ["a", "b"], "success": [True, True]})
    with pytest.raises(ValueError, match="re-identification audit"):
        release_mask(full, None, tmp_path / "reid.parquet")
    with pytest.raises(FileNotFoundError, match="validate.reid.gate"):
        release_mask(full, None, tmp_path / "missing.parquet")


def test_load_verifier_refuses_other_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a synthcxr re-identification verifier"):
        load_verifier(tmp_path / "x.pt", CPU)
    with pytest.raises(FileNotFoundError, match="train_reid_verifier"):
        load_verifier(tmp_path / "none.pt", CPU)

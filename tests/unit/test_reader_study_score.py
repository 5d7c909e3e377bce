"""Reader-study scoring against hand-computed numbers, sklearn and scipy references, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from synthcxr.reader_study.cli import cli
from synthcxr.reader_study.answers import ReaderStudyInputError, read_answers, read_key
from synthcxr.reader_study.score import score, score_files
from synthcxr.reader_study.stats import accuracy_stats, cohen_kappa, fleiss_kappa, rating_auc

# Key: 4 real (r1..r4), 4 generated (f1..f4), plus x1 (real) that only readers A and B answer.
KEY = pd.DataFrame(
    {
        "image": ["r1", "r2", "r3", "r4", "f1", "f2", "f3", "f4", "x1"],
        "truth": ["real"] * 4 + ["fake"] * 4 + ["real"],
        "source": [f"src{i}" for i in range(9)],
    }
)
ANSWERS = {
    #        r1      r2      r3      r4      f1      f2      f3      f4      x1
    "A": ["real", "real", "fake", "real", "fake", "fake", "real", "fake", "real"],
    "B": ["real", "fake", "fake", "real", "fake", "real", "real", "fake", "fake"],
    "C": ["fake", "real", "fake", "real", "fake", "fake", "fake", "real", None],
}


def write_csv(path, rows, columns=("reader", "image", "answer", "confidence", "findings", "timestamp")):
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def answer_rows(reader):
    return [
        (reader, img, ans, 3, "", "2024-01-01T00:00:00Z")
        for img, ans in zip(KEY["image"], ANSWERS[reader])
        if ans is not None
    ]


@pytest.fixture()
def files(tmp_path):
    key = tmp_path / "key.csv"
    KEY.to_csv(key, index=False)
    paths = [write_csv(tmp_path / f"{r}.csv", answer_rows(r)) for r in ANSWERS]
    return key, paths


def test_accuracy_sensitivity_specificity_by_hand():
    # Reader A: reals r1..r4,x1 -> real,real,fake,real,real: TN=4 FP=1; fakes f1..f4 -> fake,fake,real,fake: TP=3 FN=1.
    st = accuracy_stats(KEY["truth"], ANSWERS["A"])
    assert (st["tp"], st["fn"], st["tn"], st["fp"]) == (3, 1, 4, 1)
    assert st["accuracy"] == pytest.approx(7 / 9)
    assert st["sensitivity"] == pytest.approx(3 / 4)
    assert st["specificity"] == pytest.approx(4 / 5)
    assert st["fake_called_real"] == pytest.approx(1 / 4)
    assert st["real_called_fake"] == pytest.approx(1 / 5)
    # Exact two-sided binomial p for 7 of 9 at p=0.5: 2 * P(X>=7) = 2 * (36+9+1)/512.
    assert st["p_value"] == pytest.approx(2 * 46 / 512)
    # Clopper-Pearson interval from the beta quantiles.
    assert st["ci_low"] == pytest.approx(beta.ppf(0.025, 7, 3))
    assert st["ci_high"] == pytest.approx(beta.ppf(0.975, 8, 2))


def test_cohen_kappa_by_hand_and_sklearn():
    a, b = ANSWERS["A"], ANSWERS["B"]
    # Agreement on r1,r3,r4,f1,f3,f4 = 6/9; A says fake 4/9, B says fake 5/9.
    po = 6 / 9
    pe = (4 / 9) * (5 / 9) + (5 / 9) * (4 / 9)
    assert cohen_kappa(a, b) == pytest.approx((po - pe) / (1 - pe))
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.choice(["real", "fake"], 30)
        y = np.where(rng.random(30) < 0.7, x, rng.choice(["real", "fake"], 30))
        assert cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y))
    assert np.isnan(cohen_kappa(["real"] * 3, ["real"] * 3))  # no variation: undefined


def test_fleiss_kappa_hand_table():
    # 4 items, 3 raters: P_i = 1, 1, 1/3, 1/3 -> Pbar = 2/3; p_real = p_fake = 1/2 -> Pe = 1/2; kappa = 1/3.
    assert fleiss_kappa(np.array([[3, 0], [0, 3], [2, 1], [1, 2]])) == pytest.approx(1 / 3)
    # Fleiss (1971)-style check with 3 categories: 2 raters reduce to Scott's pi.
    t = np.array([[2, 0, 0], [0, 2, 0], [1, 1, 0], [0, 0, 2], [0, 1, 1]])
    p = t.sum(0) / 10  # 0.3, 0.4, 0.3
    po = 3 / 5
    pe = float(np.sum(p**2))
    assert fleiss_kappa(t) == pytest.approx((po - pe) / (1 - pe))
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa(np.array([[2, 0], [1, 0]]))


def test_score_per_reader_pooled_and_agreement(files):
    key_path, paths = files
    key = read_key(key_path)
    s = score(key, read_answers(paths, key))
    a, b, c = (s["readers"][r] for r in "ABC")
    assert a["accuracy"] == pytest.approx(7 / 9)
    # B: r1 ok, r2 x, r3 x, r4 ok, f1 ok, f2 x, f3 x, f4 ok, x1 x -> 4/9; TP=2 (f1,f4), TN=2 (r1,r4)
    assert b["correct"] == 4 and b["sensitivity"] == pytest.approx(2 / 4) and b["specificity"] == pytest.approx(2 / 5)
    # C answered 8: r2, r4 right; f1, f2, f3 right -> 5/8; coverage 8/9
    assert c["n"] == 8 and c["accuracy"] == pytest.approx(5 / 8) and c["coverage"] == pytest.approx(8 / 9)
    assert s["pooled"]["n"] == 26 and s["pooled"]["correct"] == 16
    assert s["pooled"]["fake_called_real"] == pytest.approx((1 + 2 + 1) / 12)
    kap = {tuple(p["readers"]): p for p in s["cohen_kappa"]}
    assert kap[("A", "B")]["n_common"] == 9
    assert kap[("A", "C")]["n_common"] == 8
    common = KEY["image"][:8].index
    exp_ac = cohen_kappa_score([ANSWERS["A"][i] for i in common], [ANSWERS["C"][i] for i in common])
    assert kap[("A", "C")]["cohen_kappa"] == pytest.approx(exp_ac)
    # Fleiss on the 8 images all three answered; counts of (real, fake) per image by hand:
    counts = np.array([[2, 1], [2, 1], [0, 3], [3, 0], [0, 3], [1, 2], [2, 1], [1, 2]])
    assert s["fleiss_kappa"]["n_images"] == 8
    p_i = (np.sum(counts**2, 1) - 3) / 6
    pj = counts.sum(0) / 24
    expected = (p_i.mean() - np.sum(pj**2)) / (1 - np.sum(pj**2))
    assert s["fleiss_kappa"]["kappa"] == pytest.approx(expected)


def test_score_files_and_cli_outputs(files, tmp_path, capsys):
    key_path, paths = files
    out = tmp_path / "scores"
    assert cli(["score", "--key", str(key_path), *map(str, paths), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pooled" in printed and "Fleiss" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["readers"]["A"]["accuracy"] == pytest.approx(7 / 9)
    assert summary["pooled"]["p_value"] == pytest.approx(
        __import__("scipy.stats").stats.binomtest(16, 26, 0.5).pvalue
    )
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per = pd.read_csv(out / "per_reader.csv")
    assert list(per["reader"]) == ["A", "B", "C"]
    text = (out / "summary.txt").read_text()
    # 16 of 26 right: not different from chance, yet far too few answers to show equivalence within 0.1
    assert summary["pooled"]["verdict"] == "inconclusive" and "the study cannot say" in text
    assert summary["equivalence_margin"] == 0.1
    again = score_files(key_path, paths, tmp_path / "scores2")
    assert again["pooled"]["correct"] == 16


def test_unknown_image_names_fail_naming_file(files, tmp_path):
    key_path, _ = files
    bad = write_csv(tmp_path / "bad.csv", [("A", "img_9999.png", "real", 2, "", "")])
    with pytest.raises(ReaderStudyInputError, match=r"bad\.csv.*'image'.*img_9999\.png"):
        read_answers([bad], read_key(key_path))


def test_duplicate_answers_fail(files, tmp_path):
    key_path, paths = files
    key = read_key(key_path)
    dup = write_csv(tmp_path / "dup.csv", [("A", "r1", "real", 2, "", ""), ("A", "r1", "fake", 2, "", "")])
    with pytest.raises(ReaderStudyInputError, match=r"dup\.csv: duplicate answers.*\('A', 'r1'\)"):
        read_answers([dup], key)
    again = write_csv(tmp_path / "A_again.csv", [("A", "r2", "real", 2, "", "")])
    with pytest.raises(ReaderStudyInputError, match=r"reader 'A'.*A\.csv.*A_again\.csv"):
        read_answers([paths[0], again], key)


def test_missing_columns_and_bad_values(files, tmp_path):
    key_path, _ = files
    key = read_key(key_path)
    nocol = write_csv(tmp_path / "nocol.csv", [("A", "r1", "real")], columns=("reader", "image", "answer"))
    with pytest.raises(ReaderStudyInputError, match=r"nocol\.csv: missing column\(s\) \['confidence'\]"):
        read_answers([nocol], key)
    badans = write_csv(tmp_path / "badans.csv", [("A", "r1", "maybe", 2, "", "")])
    with pytest.raises(ReaderStudyInputError, match=r"badans\.csv: column 'answer'.*line\(s\) \[2\].*maybe"):
        read_answers([badans], key)
    badconf = write_csv(tmp_path / "badconf.csv", [("A", "r1", "real", 7, "", "")])
    with pytest.raises(ReaderStudyInputError, match=r"badconf\.csv: column 'confidence'"):
        read_answers([badconf], key)
    empty = tmp_path / "empty.csv"
    empty.write_text("reader,image,answer,confidence\n")
    with pytest.raises(ReaderStudyInputError, match=r"empty\.csv: no answers"):
        read_answers([empty], key)
    badkey = tmp_path / "badkey.csv"
    badkey.write_text("image,truth,source\nimg_0001.png,synthetic,x\n")
    with pytest.raises(ReaderStudyInputError, match=r"badkey\.csv: column 'truth'"):
        read_key(badkey)
    nokeycol = tmp_path / "nokeycol.csv"
    nokeycol.write_text("image,source\nimg_0001.png,x\n")
    with pytest.raises(ReaderStudyInputError, match=r"nokeycol\.csv: missing column\(s\) \['truth'\]"):
        read_key(nokeycol)


def test_cli_reports_bad_input_without_traceback(files, tmp_path, capsys):
    key_path, _ = files
    bad = write_csv(tmp_path / "bad.csv", [("A", "nope.png", "real", 2, "", "")])
    assert cli(["score", "--key", str(key_path), str(bad), "--out", str(tmp_path / "o")]) == 1
    assert "bad.csv" in capsys.readouterr().err


def test_blank_confidence_is_allowed(files, tmp_path):
    key_path, _ = files
    key = read_key(key_path)
    p = write_csv(tmp_path / "noconf.csv", [("A", "r1", "REAL", "", "", ""), ("A", "f1", "fake", 5, "", "")])
    ans = read_answers([p], key)
    assert list(ans["answer"]) == ["real", "fake"]
    s = score(key, ans)
    assert s["readers"]["A"]["accuracy"] == 1.0 and s["readers"]["A"]["mean_confidence"] == 5.0


def test_rating_auc_against_sklearn_and_by_hand():
    # 2 fakes rated +5 and -2, 2 reals rated -4 and +1: pairs (fake > real): 5>-4, 5>1, -2>-4, -2<1 -> 3/4.
    auc, n = rating_auc(["fake", "fake", "real", "real"], ["fake", "real", "real", "fake"], [5, 2, 4, 1])
    assert (auc, n) == (0.75, 4)
    rng = np.random.default_rng(2)
    truth = rng.choice(["real", "fake"], 40)
    answer = np.where(rng.random(40) < 0.6, truth, rng.choice(["real", "fake"], 40))
    conf = rng.integers(1, 6, 40).astype(float)
    conf[[3, 7]] = np.nan
    keep = ~np.isnan(conf)
    expected = roc_auc_score(truth[keep] == "fake", np.where(answer == "fake", conf, -conf)[keep])
    assert rating_auc(truth, answer, conf) == (pytest.approx(expected), 38)
    assert np.isnan(rating_auc(["fake"], ["fake"], [3])[0])


def test_tost_and_power_against_scipy_and_hand_counts():
    from scipy.stats import binom

    from synthcxr.reader_study.power import (
        answers_needed,
        design,
        equivalence_answers_needed,
        equivalence_power,
        power,
        rejection_counts,
        tost,
    )

    # the figure: 20 real + 20 generated, 27 of 40 right are needed for p < 0.05
    rej = rejection_counts(40)
    assert rej[rej > 20].min() == 27 and rej[rej < 20].max() == 13
    pv = __import__("scipy.stats").stats.binomtest
    assert all((pv(k, 40, 0.5).pvalue < 0.05) == (k in set(rej)) for k in range(41))
    # power = P(X <= 13) + P(X >= 27) under the alternative, by hand
    assert power(40, 0.6) == pytest.approx(binom.cdf(13, 40, 0.6) + binom.sf(26, 40, 0.6))
    n = answers_needed(0.6)
    assert power(n, 0.6) >= 0.8 > max(power(m, 0.6) for m in range(n - 20, n))
    # TOST: the larger of the two exact one-sided p-values
    t = tost(520, 1000, 0.1)
    assert t["p_lower"] == pytest.approx(binom.sf(519, 1000, 0.4)) and t["p_upper"] == pytest.approx(binom.cdf(520, 1000, 0.6))
    assert t["equivalent"] and t["p_value"] == max(t["p_lower"], t["p_upper"])
    assert not tost(16, 26, 0.1)["equivalent"] and not tost(650, 1000, 0.1)["equivalent"]
    m = equivalence_answers_needed(0.1)
    assert equivalence_power(m, 0.1) >= 0.8 > equivalence_power(m - 1, 0.1)
    d = design(40, 3, 0.6, 0.1)
    assert d["correct_needed_per_reader"] == 27 and d["readers_needed"] == -(-n // 40)
    assert d["power_pooled"] == pytest.approx(power(120, 0.6))


def test_rating_auc_ci_brackets_the_auc_and_resamples_images():
    from synthcxr.reader_study.stats import rating_auc, rating_auc_ci

    rng = np.random.default_rng(0)
    truth = np.array(["fake", "real"] * 30, dtype=object)
    conf = rng.integers(1, 6, 60).astype(float)
    answer = np.where(rng.random(60) < 0.7, truth, np.where(truth == "fake", "real", "fake"))
    auc, _ = rating_auc(truth, answer, conf)
    lo, hi = rating_auc_ci(truth, answer, conf, n_boot=500)
    assert lo < auc < hi and 0.5 < auc
    lo2, hi2 = rating_auc_ci(np.tile(truth, 3), np.tile(answer, 3), np.tile(conf, 3), np.tile(np.arange(60), 3), n_boot=500)
    assert (hi2 - lo2) == pytest.approx(hi - lo, rel=0.35)  # three readers with identical answers: no extra information

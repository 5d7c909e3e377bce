"""Phantom generator: cohort statistics, renderer behaviour measured from pixels, and on-disk layouts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from synthcxr.data import phantom as ph
from synthcxr.labels import PHANTOM_LABELS

FINDINGS = [n for n in PHANTOM_LABELS if n != "No_Finding"]


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return ph.sample_cohort(ph.PhantomConfig.from_section(dict(n_patients=400, max_studies=4, seed=5)))


@pytest.fixture(scope="module")
def big_cohort() -> pd.DataFrame:
    return ph.sample_cohort(ph.PhantomConfig.from_section(dict(n_patients=8000, max_studies=4, seed=1)))


def only(row: pd.Series, *names: str) -> dict:
    """A copy of ``row`` with exactly the findings ``names`` present."""
    d = row.to_dict()
    for n in FINDINGS:
        d[n] = int(n in names)
    d["No_Finding"] = int(not names)
    return d


# ----------------------------------------------------------------------------------------- cohort


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="n_patients"):
        ph.PhantomConfig.from_section(dict(n_patients=0))
    with pytest.raises(ValueError, match="max_studies"):
        ph.PhantomConfig.from_section(dict(max_studies=-1))
    with pytest.raises(ValueError, match="unknown key"):
        ph.PhantomConfig.from_section({"n_patient": 3})
    assert ph.PHANTOM_LABELS == PHANTOM_LABELS


def test_cohort_columns_ids_and_determinism(cohort: pd.DataFrame) -> None:
    for col in ("image_id", "patient_id", "study", "view", "sex", "age", "render_seed", *PHANTOM_LABELS):
        assert col in cohort.columns
    assert cohort["image_id"].is_unique
    assert set(cohort["view"]) == {"PA", "AP"} and set(cohort["sex"]) == {"M", "F"}
    assert cohort["age"].between(18, 95).all()
    for c in PHANTOM_LABELS:
        assert set(cohort[c].unique()) <= {0, 1} and cohort[c].dtype.kind == "i"
    # No_Finding exactly when no finding is present.
    assert (cohort["No_Finding"] == (cohort[FINDINGS].sum(axis=1) == 0)).all()
    # Follow-ups are numbered 0..n-1 per patient, image ids encode patient and study.
    for pid, g in cohort.groupby("patient_id"):
        assert list(g["study"]) == list(range(len(g)))
        assert (g["image_id"] == [f"{pid}_{s:03d}" for s in g["study"]]).all()
        assert (g["age"].diff().dropna() >= 0).all()
    again = ph.sample_cohort(ph.PhantomConfig.from_section(dict(n_patients=400, max_studies=4, seed=5)))
    pd.testing.assert_frame_equal(cohort, again)
    other = ph.sample_cohort(ph.PhantomConfig.from_section(dict(n_patients=400, max_studies=4, seed=6)))
    assert not other[list(PHANTOM_LABELS)].equals(cohort[list(PHANTOM_LABELS)])
    one = ph.sample_cohort(ph.PhantomConfig.from_section(dict(n_patients=50, max_studies=1, seed=5)))
    assert (one["study"] == 0).all() and len(one) == 50


def test_prevalence_rare_labels_and_correlations(big_cohort: pd.DataFrame) -> None:
    c = big_cohort
    prev = c[list(PHANTOM_LABELS)].mean()
    assert 0.005 < prev["Pneumothorax"] < 0.02
    assert 0.01 < prev["Mass"] < 0.035
    assert 0.03 < prev["Consolidation"] < 0.08
    for n in ("Cardiomegaly", "Effusion", "Atelectasis", "Nodule"):
        assert 0.03 < prev[n] < 0.2, (n, prev[n])
    assert 0.45 < prev["No_Finding"] < 0.8
    # Effusion goes with Cardiomegaly, Atelectasis with Effusion (phi coefficient and conditionals).
    phi = np.corrcoef(c["Effusion"], c["Cardiomegaly"])[0, 1]
    assert phi > 0.15
    eff_card = c.loc[c["Cardiomegaly"] == 1, "Effusion"].mean()
    eff_nocard = c.loc[c["Cardiomegaly"] == 0, "Effusion"].mean()
    assert eff_card > 3 * eff_nocard
    assert np.corrcoef(c["Atelectasis"], c["Effusion"])[0, 1] > 0.1
    # Several studies per patient; chronic findings persist once present.
    per_patient = c.groupby("patient_id").size()
    assert per_patient.max() == 4 and (per_patient > 1).mean() > 0.35
    for name in ("Cardiomegaly", "Nodule", "Mass"):
        seq = c.groupby("patient_id")[name].apply(lambda s: bool((np.diff(s.to_numpy()) >= 0).all()))
        assert seq.all(), name


# ----------------------------------------------------------------------------------------- render


@pytest.mark.parametrize("res", [4, 8, 16, 32, 64, 128, 256])
def test_render_shape_dtype_deterministic(cohort: pd.DataFrame, res: int) -> None:
    row = cohort.iloc[3]
    img = ph.render(row, res)
    assert img.shape == (res, res) and img.dtype == np.uint8
    assert np.array_equal(img, ph.render(row.to_dict(), res))
    assert img.std() > 10  # not a flat image
    other = ph.render(cohort.iloc[4], res)
    assert not np.array_equal(img, other)


def test_render_1024_and_bad_resolution(cohort: pd.DataFrame) -> None:
    img = ph.render(cohort.iloc[0], 1024)
    assert img.shape == (1024, 1024) and img.dtype == np.uint8
    small = img.reshape(64, 16, 64, 16).mean(axis=(1, 3))
    assert np.corrcoef(small.ravel(), ph.render(cohort.iloc[0], 64).ravel().astype(float))[0, 1] > 0.98
    for bad in (0, 3, 48, 2048):
        with pytest.raises(ValueError, match="power of two"):
            ph.render(cohort.iloc[0], bad)
    with pytest.raises(KeyError, match="patient_seed"):
        ph.render({"render_seed": 1, "view": "PA", "sex": "M"}, 64)


def test_looks_like_a_chest_xray(cohort: pd.DataFrame) -> None:
    """Lungs dark, mediastinum and abdomen bright, outside the body dark-ish (medians over 20 images)."""
    imgs = np.stack([ph.render(only(cohort.iloc[i]), 64) for i in range(20)]).astype(float)
    lung = imgs[:, 24:34, 12:20].mean()  # right mid-lung zone
    mediast = imgs[:, 8:20, 30:34].mean()
    abdomen = imgs[:, 58:63, 24:40].mean()
    outside = imgs[:, 40:60, 0:2].mean()
    assert lung + 50 < mediast and lung + 50 < abdomen
    assert outside < lung


def test_resolution_consistent(cohort: pd.DataFrame) -> None:
    for i in range(5):
        row = cohort.iloc[i]
        hi = ph.render(row, 256).astype(float).reshape(64, 4, 64, 4).mean(axis=(1, 3))
        lo = ph.render(row, 64).astype(float)
        assert np.corrcoef(hi.ravel(), lo.ravel())[0, 1] > 0.98
        assert np.abs(hi - lo).mean() < 5.0
        # Below 64 px the image is the area average of the 64 px render (plus its own noise).
        r16 = ph.render(row, 16).astype(float)
        assert np.abs(lo.reshape(16, 4, 16, 4).mean(axis=(1, 3)) - r16).mean() < 4.0


def test_iter_images_order_and_workers(cohort: pd.DataFrame) -> None:
    sub = cohort.iloc[:12]
    serial = list(ph.iter_images(sub, 32))
    assert [k for k, _ in serial] == list(sub["image_id"])
    for (k, img), (_, row) in zip(serial, sub.iterrows()):
        assert np.array_equal(img, ph.render(row, 32))
    parallel = list(ph.iter_images(sub, 32, workers=2))
    assert [k for k, _ in parallel] == [k for k, _ in serial]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(serial, parallel))


# ------------------------------------------------------------------------------- pixel measurements


def _lungs(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right and left lung masks (image left/right) by thresholding a smoothed image."""
    sm = ndimage.gaussian_filter(img.astype(float), 1.5)
    body = ndimage.binary_fill_holes(sm > sm.min() + 0.25 * (sm.max() - sm.min()))
    vals = sm[body]
    thr = 0.5 * (np.percentile(vals, 5) + np.percentile(vals, 70))
    lab, n = ndimage.label((sm < thr) & ndimage.binary_erosion(body, iterations=2))
    sizes = ndimage.sum(np.ones_like(lab), lab, index=range(1, n + 1))
    big = np.argsort(sizes)[::-1][:2] + 1
    masks = sorted((lab == k for k in big), key=lambda m: np.nonzero(m)[1].mean())
    return masks[0], masks[1]


def _dome_row(right: np.ndarray) -> int:
    """Row of the right hemidiaphragm's top: highest point of the right lung's lower border, lateral half.

    The right dome is the higher one and the heart never covers it, so rows above it are where a reader
    measures the heart width.
    """
    ys, xs = np.nonzero(right)
    lateral = np.unique(xs[xs < xs.mean()])
    return int(min(ys[xs == c].max() for c in lateral))


def _heart_rows(mask: np.ndarray, dome: int) -> np.ndarray:
    """Rows of one lung whose medial edge borders the heart: lower lung, above the dome.

    The apex is skipped because its medial edge is far from the midline.
    """
    rows = np.nonzero(mask.any(axis=1))[0]
    top, bottom = rows.min(), rows.max()
    return rows[(rows > top + 0.4 * (bottom - top)) & (rows < dome)]


def pixel_ctr(img: np.ndarray) -> float:
    """Cardiothoracic ratio from pixels: heart extent between the lungs' medial edges / lung span."""
    right, left = _lungs(img)  # image left = patient's right lung
    cols = np.arange(img.shape[1])
    thorax = np.nonzero(right | left)[1]
    dome = _dome_row(right)
    heart_right_edge = np.where(right, cols, -1).max(axis=1)[_heart_rows(right, dome)].min()
    heart_left_edge = np.where(left, cols, img.shape[1]).min(axis=1)[_heart_rows(left, dome)].max()
    return float(heart_left_edge - heart_right_edge - 1) / float(thorax.max() - thorax.min() + 1)


def test_ctr_measured_from_pixels_separates_cardiomegaly(cohort: pd.DataFrame) -> None:
    rows = [only(cohort.iloc[i], *(["Cardiomegaly"] if i % 2 else [])) for i in range(100)]
    truth = np.array([ph.measure_ctr(r) for r in rows])
    is_card = np.array([r["Cardiomegaly"] for r in rows])
    assert (truth[is_card == 1] > 0.54).all() and (truth[is_card == 0] < 0.47).all()
    meas = np.array([pixel_ctr(ph.render(r, 256)) for r in rows])
    assert roc_auc_score(is_card, meas) == 1.0
    assert (meas[is_card == 1] > 0.5).all() and (meas[is_card == 0] < 0.5).all()
    assert np.median(np.abs(meas - truth)) < 0.03


def test_anatomy_stable_across_follow_ups(cohort: pd.DataFrame) -> None:
    multi = [g for _, g in cohort.groupby("patient_id") if len(g) >= 3][:12]
    assert len(multi) >= 8
    spans = []
    for g in multi:
        geo = [ph.study_geometry(r) for _, r in g.iterrows()]
        assert len({(x.anatomy.tw, x.anatomy.apex_y, x.anatomy.bw, x.anatomy.heart_u) for x in geo}) == 1
        assert all(np.array_equal(x.anatomy.vessels, geo[0].anatomy.vessels) for x in geo)
        row_spans = []
        for _, r in g.iterrows():
            right, left = _lungs(ph.render(only(r), 128))
            c = np.nonzero(right | left)[1]
            row_spans.append(c.max() - c.min())
        spans.append(row_spans)
    within = np.mean([np.std(s) for s in spans])
    between = np.std([np.mean(s) for s in spans])
    assert within < 0.35 * between, (within, between)


def _diff(row: pd.Series, name: str, res: int = 128) -> np.ndarray:
    base = only(row)
    return ph.render(only(row, name), res).astype(float) - ph.render(base, res).astype(float)


def _patient_to_image(g: ph.StudyGeometry, x: float, y: float, res: int) -> tuple[float, float]:
    """Patient coordinates -> (row, col) pixel position, through the study pose."""
    p = g.pose
    c, s = np.cos(p.angle), np.sin(p.angle)
    ix = (c * x - s * y) * p.scale + p.tx
    iy = (s * x + c * y) * p.scale + p.ty
    return (iy + 1) * res / 2 - 0.5, (ix + 1) * res / 2 - 0.5


def test_nodule_and_mass_are_round_blobs_where_the_geometry_says(cohort: pd.DataFrame) -> None:
    res = 128
    areas: dict[str, list[int]] = {"Nodule": [], "Mass": []}
    for name in ("Nodule", "Mass"):
        for i in range(6):
            row = cohort.iloc[i]
            d = _diff(row, name, res)
            blob = d > 8
            assert blob.any()
            g = ph.study_geometry(only(row, name))
            spots = g.findings[name].get("spots", [g.findings[name]])
            expect = sum(np.pi * (p["r"] * g.pose.scale * res / 2) ** 2 for p in spots)
            area = blob.sum()
            areas[name].append(area / len(spots))
            assert 0.4 * expect < area < 1.6 * expect, (name, area, expect)
            lab, n_blobs = ndimage.label(blob)
            assert 1 <= n_blobs <= len(spots)
            for p in spots:  # each opacity is centred where the geometry puts it
                ey, ex = _patient_to_image(g, p["x"], p["y"], res)
                k = lab[int(round(ey)), int(round(ex))]
                assert k > 0
                if len(spots) == 1:
                    cy, cx = ndimage.center_of_mass(np.clip(d, 0, None))
                    assert abs(cy - ey) < 1.5 and abs(cx - ex) < 1.5
            assert (np.abs(d) > 3).sum() < 2.5 * area  # nothing changes away from the blob
    assert min(areas["Mass"]) > 2 * max(areas["Nodule"])


def test_findings_are_localised(cohort: pd.DataFrame) -> None:
    res = 128
    half = res // 2
    for i in range(8):
        row = cohort.iloc[i]
        geo = ph.study_geometry(only(row, *FINDINGS))
        for name in ("Effusion", "Pneumothorax", "Consolidation", "Atelectasis"):
            d = np.abs(_diff(row, name, res))
            d[d < 3] = 0
            assert d.sum() > 0, name
            sides = geo.params[name].get("sides", [geo.params[name].get("side")])
            frac_image_left = d[:, :half].sum() / d.sum()  # patient's right
            if sides == [-1]:
                assert frac_image_left > 0.85, (name, frac_image_left)
            elif sides == [1]:
                assert frac_image_left < 0.15, (name, frac_image_left)
            rows = np.arange(res)[:, None]
            low_frac = (d * (rows > 0.55 * res)).sum() / d.sum()
            if name in ("Effusion", "Atelectasis"):
                assert low_frac > (0.8 if name == "Effusion" else 0.7), (name, low_frac)  # lung base / dome
            if name == "Pneumothorax":
                # apex and periphery: the changed pixels sit near the chest wall, away from the hilum.
                # A crescent along the chest wall that reaches the apex.
                right, left = _lungs(ph.render(only(row), res))
                lung = right if sides == [-1] else left
                yy, xx = np.mgrid[:res, :res]
                lateral = np.abs(xx - (res - 1) / 2)
                assert np.nonzero(d.any(axis=1))[0].min() <= np.nonzero(lung.any(axis=1))[0].min() + 3
                assert lateral[d > 0].max() >= lateral[lung].max() - 3  # reaches the chest wall
                assert (d * (rows < 0.4 * res)).sum() / d.sum() > 0.3  # reaches the apex
        d = _diff(row, "Cardiomegaly", res)
        cy, cx = ndimage.center_of_mass(np.abs(d))
        assert 0.45 * res < cy < 0.8 * res and 0.4 * res < cx < 0.75 * res


def test_findings_learnable_at_32px(cohort: pd.DataFrame) -> None:
    """A pixel logistic regression separates each finding from normal studies (AUROC > 0.8)."""
    n = 300
    rows = [cohort.iloc[i] for i in range(2 * n)]
    groups = np.array([r["patient_id"] for r in rows])
    y = np.r_[np.zeros(n), np.ones(n)]
    def pixels(imgs: list[np.ndarray]) -> np.ndarray:  # per-image standardised (exposure varies per study)
        x = np.stack(imgs).reshape(len(imgs), -1).astype(float)
        return (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)

    normal = pixels([ph.render(only(r), 32) for r in rows[:n]])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=300))
    aucs = {}
    for name in FINDINGS:
        pos = pixels([ph.render(only(r, name), 32) for r in rows[n:]])
        x = np.vstack([normal, pos])
        prob = cross_val_predict(model, x, y, cv=GroupKFold(5), groups=groups, method="predict_proba")[:, 1]
        aucs[name] = roc_auc_score(y, prob)
    assert min(aucs.values()) > 0.8, aucs


# ----------------------------------------------------------------------------------------- layouts


@pytest.fixture(scope="module")
def small_cfg() -> ph.PhantomConfig:
    return ph.PhantomConfig.from_section(dict(n_patients=24, max_studies=3, seed=9))


def _no_temp_files(root) -> None:
    assert not [p for p in root.rglob(".tmp-*")]


def test_layout_nih(tmp_path, small_cfg) -> None:
    cohort = ph.sample_cohort(small_cfg)
    root = ph.write_layout(tmp_path / "nih", "nih", small_cfg, 16)
    t = pd.read_csv(root / "Data_Entry_2017.csv")
    assert list(t.columns) == [
        "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
        "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
    ]
    assert len(t) == len(cohort)
    assert t["Image Index"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    assert (t["Image Index"].str[:8].astype(int) == t["Patient ID"]).all()
    assert (t["Image Index"].str[9:12].astype(int) == t["Follow-up #"]).all()
    for (_, r), (_, c) in zip(t.iterrows(), cohort.iterrows()):
        names = set(r["Finding Labels"].split("|"))
        expect = {n for n in FINDINGS if c[n]} or {"No Finding"}
        assert names == expect
        img = np.asarray(Image.open(root / "images" / r["Image Index"]))
        assert np.array_equal(img, ph.render(c, 16))  # PNG is lossless
    test = set((root / "test_list.txt").read_text().split())
    trainval = set((root / "train_val_list.txt").read_text().split())
    assert test and trainval and not test & trainval and test | trainval == set(t["Image Index"])
    pid = dict(zip(t["Image Index"], t["Patient ID"]))
    assert not {pid[n] for n in test} & {pid[n] for n in trainval}
    _no_temp_files(root)


def test_layout_chexpert(tmp_path, small_cfg) -> None:
    cohort = ph.sample_cohort(small_cfg).set_index("image_id")
    root = ph.write_layout(tmp_path / "cx", "chexpert", small_cfg, 32)
    train = pd.read_csv(root / "CheXpert-v1.0-small" / "train.csv")
    valid = pd.read_csv(root / "CheXpert-v1.0-small" / "valid.csv")
    cols = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
            "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
            "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
    assert list(train.columns) == cols and list(valid.columns) == cols
    assert len(train) + len(valid) == len(cohort) and len(valid) > 0
    assert train["Path"].str.fullmatch(r"CheXpert-v1\.0-small/train/patient\d{5}/study\d+/view1_frontal\.jpg").all()
    obs = train[cols[5:]].to_numpy()
    vals = set(np.unique(obs[~np.isnan(obs)]))
    assert vals <= {-1.0, 0.0, 1.0} and np.isnan(obs).any()
    assert not valid[cols[5:]].isna().any().any() and set(np.unique(valid[cols[5:]])) <= {0.0, 1.0}
    pats = lambda df: set(df["Path"].str.extract(r"(patient\d+)")[0])  # noqa: E731
    assert not pats(train) & pats(valid)
    # Every study maps back to the cohort: Nodule/Mass -> Lung Lesion, Effusion -> Pleural Effusion.
    nums = {pid: i + 1 for i, pid in enumerate(dict.fromkeys(cohort["patient_id"]))}
    lookup = {(nums[c["patient_id"]], c["study"] + 1): c for _, c in cohort.iterrows()}
    for df in (train, valid):
        for _, r in df.iterrows():
            m = pd.Series(r["Path"]).str.extract(r"patient(\d+)/study(\d+)").astype(int).iloc[0]
            c = lookup[(m[0], m[1])]
            lesion = int(c["Nodule"] or c["Mass"])
            assert (r["Lung Lesion"] in (1.0, -1.0)) == bool(lesion)
            assert (r["Pleural Effusion"] in (1.0, -1.0)) == bool(c["Effusion"])
            assert (r["No Finding"] == 1.0) == bool(c["No_Finding"])
            assert r["Sex"] == {"M": "Male", "F": "Female"}[c["sex"]] and r["AP/PA"] == c["view"]
            img = np.asarray(Image.open(root / r["Path"]))
            assert img.shape == (32, 32) and np.abs(img.astype(float) - ph.render(c, 32)).mean() < 4
    _no_temp_files(root)


def test_layout_mimic_jpg(tmp_path, small_cfg) -> None:
    cohort = ph.sample_cohort(small_cfg)
    root = ph.write_layout(tmp_path / "mimic", "mimic_jpg", small_cfg, 16)
    meta = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv", dtype={"dicom_id": str})
    lab = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv")
    split = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv", dtype={"dicom_id": str})
    assert list(meta.columns[:7]) == ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                                      "ViewPosition", "Rows", "Columns"]
    assert list(lab.columns[:2]) == ["subject_id", "study_id"] and "Pleural Effusion" in lab.columns
    assert len(lab.columns) == 16
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert len(meta) == len(lab) == len(split) == len(cohort)
    assert set(split["split"]) <= {"train", "validate", "test"} and "test" in set(split["split"])
    assert split.groupby("subject_id")["split"].nunique().max() == 1
    assert meta["subject_id"].between(10_000_000, 19_999_999).all() and meta["study_id"].is_unique
    assert meta["subject_id"].nunique() == cohort["patient_id"].nunique()
    for (_, m), (_, c) in zip(meta.iterrows(), cohort.iterrows()):
        sid = str(m["subject_id"])
        path = root / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{m['study_id']}" / f"{m['dicom_id']}.jpg"
        img = np.asarray(Image.open(path))
        assert img.shape == (16, 16) and m["ViewPosition"] == c["view"]
    _no_temp_files(root)


def test_layout_dicom(tmp_path, small_cfg) -> None:
    import pydicom

    cohort = ph.sample_cohort(small_cfg)
    root = ph.write_layout(tmp_path / "dcm", "dicom", small_cfg, 32)
    lab = pd.read_csv(root / "labels.csv")
    assert list(lab.columns) == ["file", *PHANTOM_LABELS] and len(lab) == len(cohort)
    assert (lab[list(PHANTOM_LABELS)].to_numpy() == cohort[list(PHANTOM_LABELS)].to_numpy()).all()
    photometric = set()
    for (_, r), (_, c) in zip(lab.iterrows(), cohort.iterrows()):
        ds = pydicom.dcmread(root / r["file"])
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1")
        assert ds.Modality in ("CR", "DX") and ds.BitsStored == 12 and ds.BitsAllocated == 16
        assert ds.PatientSex == c["sex"] and ds.PatientAge == f"{c['age']:03d}Y" and ds.ViewPosition == c["view"]
        assert ds.PatientID == c["patient_id"].upper()
        raw = ds.pixel_array.astype(float)
        assert ds.pixel_array.dtype == np.uint16 and raw.max() <= 4095
        mod = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        lo = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
        disp = np.clip((mod - lo) / float(ds.WindowWidth), 0, 1) * 255
        if ds.PhotometricInterpretation == "MONOCHROME1":
            disp = 255 - disp
        photometric.add(ds.PhotometricInterpretation)
        assert np.abs(disp - ph.render(c, 32)).max() < 1.5
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    _no_temp_files(root)


def test_write_layout_errors_and_cli(tmp_path, small_cfg) -> None:
    with pytest.raises(ValueError, match="unknown phantom layout"):
        ph.write_layout(tmp_path, "padchest", small_cfg, 16)
    with pytest.raises(KeyError, match="lacks column"):
        ph.write_layout(tmp_path, "nih", small_cfg, 16, cohort=pd.DataFrame({"image_id": ["a"]}))
    assert ph.cli(["--layout", "nih", "--out", str(tmp_path / "c"), "--res", "8", "--n-patients", "5",
                   "--seed", "2", "--workers", "2"]) == 0
    t = pd.read_csv(tmp_path / "c" / "Data_Entry_2017.csv")
    assert t["Patient ID"].nunique() == 5
    with pytest.raises(SystemExit):
        ph.cli(["--layout", "nih", "--out", str(tmp_path / "d"), "--res", "12"])

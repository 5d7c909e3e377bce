"""The whole DAG at tiny scale: every stage really runs, and its outputs hold together."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from dag import REPO, SNAKEMAKE, SYNTHCXR, TINY, run_group, snakemake

from synthcxr.utils.hashing import sha256_file

pytestmark = pytest.mark.slow


def test_prepare_outputs(tiny_run: Path):
    prep = tiny_run / "results" / "prepared" / "tiny"
    table = pd.read_parquet(prep / "labels.parquet")
    with h5py.File(prep / "images.h5", "r") as f:
        assert sorted(int(k) for k in f["images"]) == [4, 8, 16, 32]
        assert f["images/32"].shape == (len(table), 32, 32)
    by_patient = table.groupby("patient_key")["split"].nunique()
    assert (by_patient == 1).all(), "a patient appears in two splits"
    assert set(table["split"]) == {"train", "val", "test"}
    counts = json.loads((prep / "prepare.json").read_text())
    assert json.dumps(counts).count(str(len(table))) >= 1


def test_models_load_weights_only(tiny_run: Path):
    from synthcxr.classifier import load_classifier
    from synthcxr.pggan import load_generator

    g = load_generator(tiny_run / "results" / "pggan" / "tiny" / "generator.pt")
    assert g.resolution == 16
    with torch.no_grad():
        assert g(torch.randn(2, g.latent_dim)).shape == (2, 1, 16, 16)
    for name in ("real", "check"):
        path = tiny_run / "results" / "classifier" / name / "model.pt"
        torch.load(path, weights_only=True)
        clf = load_classifier(path)
        assert list(clf.label_names) == yaml.safe_load(TINY.read_text()).get("labels", clf.label_names)
        metrics = json.loads((path.parent / "metrics.json").read_text())
        assert "test" in metrics and "val" in metrics
    from synthcxr.validate.reid import load_verifier

    ver = tiny_run / "results" / "reid" / "tiny" / "verifier.pt"
    torch.load(ver, weights_only=True)
    model, meta = load_verifier(ver, torch.device("cpu"))
    assert model.arch["res"] == 16 and np.isfinite(meta["threshold"])
    with torch.no_grad():
        emb = model(torch.zeros(3, 1, 16, 16))
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


def test_allocations_from_the_runs_measured_rates(tiny_run: Path):
    log = tiny_run / "results" / "pggan" / "tiny" / "log.jsonl"
    proc = run_group([SYNTHCXR, "pggan-allocations", "--configfile", str(TINY), "--log", str(log), "--job-minutes", "60"],
                     timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["4"], ["8"], ["16"])]
    assert [r[0] for r in rows] == ["4", "8", "16"]
    # log_kimg (1) is longer than the 0.4 kimg at 4 px: that row borrows the 8 px rate
    assert [" ".join(r[4:]) for r in rows] == ["from 8 px", "measured", "measured"]
    logged = {json.loads(line)["res"]: json.loads(line)["img/s"] for line in log.read_text().splitlines()}
    assert float(rows[2][2]) == pytest.approx(logged[16], abs=0.051)
    assert "total: 2 kimg" in proc.stdout  # 0.4 at 4 px, then 0.4 fade + 0.4 stable at 8 and 16
    assert "1 allocation(s) needed" in proc.stdout


def test_release_is_consistent_and_verifiable(tiny_run: Path):
    import synthcxr.archive

    arch = tiny_run / "results" / "archive" / "tiny"
    rel = arch / "release"
    plan = pd.read_parquet(arch / "plan.parquet")
    assert len(plan) == 24
    arc = synthcxr.archive.open(rel)
    man = arc.manifest
    info = json.loads((rel / "archive.json").read_text())
    assert info["counts"]["n_requested"] == 24
    assert info["counts"]["n_released"] == len(man) > 0 and info["n_shards"] > 1  # tiny.yaml's shard_mb splits it
    # the release holds the released samples only; the working area keeps every rendered one
    lat = pd.concat([pd.read_parquet(p) for p in sorted((arch / "work" / "latents").glob("*.parquet"))])
    mem = pd.read_parquet(tiny_run / "results" / "validate" / "tiny" / "memorization.parquet")
    reid = pd.read_parquet(tiny_run / "results" / "validate" / "tiny" / "reid.parquet")
    released = (set(lat.loc[lat["success"], "sample_id"]) - set(mem.loc[mem["flagged"], "sample_id"])
                - set(reid.loc[reid["matched"], "sample_id"]))
    assert set(man["sample_id"]) == released
    shard_ids = []
    for p in sorted((rel / "h5").glob("*.h5")):
        with h5py.File(p, "r") as f:
            shard_ids += [s.decode() for s in f["sample_id"][:]]
    assert shard_ids == man["sample_id"].tolist()
    row = man.iloc[0]
    with h5py.File(rel / row["h5_path"], "r") as f:
        img = f["images"][int(row["index"])]
    assert np.array_equal(arc.read(row["sample_id"]), img)
    ok = run_group([SYNTHCXR, "verify", "--jobs", "2", str(rel)], timeout=600)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    gen = tiny_run / "results" / "pggan" / "tiny" / "generator.pt"
    regen = run_group([SYNTHCXR, "regenerate", str(rel), *man["sample_id"], "--generator", str(gen)], timeout=600)
    assert regen.returncode == 0, regen.stdout + regen.stderr
    for sid in man["sample_id"]:  # each sample in each of its formats (h5, parquet)
        block = regen.stdout.split(f"{sid}: shard", 1)[1].split(": shard", 1)[0]
        assert block.count("byte-identical") == 2, regen.stdout
    # nothing of the prepared (real, identifying) data travels: no quarantine.csv, labels or source paths
    prepared = {p.name for p in (tiny_run / "results" / "prepared").rglob("*") if p.is_file()}
    assert "quarantine.csv" in prepared
    shipped = [p for p in rel.rglob("*") if p.is_file()]
    assert not {p.name for p in shipped} & prepared
    listed = {line.split(maxsplit=1)[1].lstrip("*") for line in (rel / "SHA256SUMS").read_text().splitlines()}
    assert listed == {str(p.relative_to(rel)) for p in shipped} - {"SHA256SUMS"}
    card = (rel / "README.md").read_text()
    assert card.startswith("---\n") and "synthetic" in card.lower()
    assert "### Label reliability (independent checker classifier)" in card
    assert "### Patient re-identification audit" in card
    assert f"| withheld: matched to a training patient by re-identification audit (gate on) | {info['counts']['n_reid_matched']} |" in card
    # delivery: planned against released, per finding, from the plan and the manifest; in the card, the figure and the log
    d = info["delivery"]
    for name in info["label_names"]:
        assert d["per_finding"][name]["planned"] == int(plan[name].sum()), name
        assert d["per_finding"][name]["released"] == int(man[name].sum()), name
    assert "## Delivery: planned against released" in card
    assert (tiny_run / "results" / "validate" / "tiny" / "delivery.png").stat().st_size > 1000
    last = (tiny_run / "results" / "logs" / "archive-tiny" / "release.log").read_text().strip().splitlines()[-1]
    assert f"delivered {d['released']} of {d['planned']} planned samples" in last, last


def test_lco_shard_rerun_with_other_cores_is_byte_identical(tiny_run: Path, tmp_path: Path):
    """lco.threads, not --cores, sets the thread count: rerunning one shard on one core reproduces it."""
    shutil.copytree(tiny_run / "results", tmp_path / "results")
    rel = "results/archive/tiny/work/latents/shard-00000.parquet"
    # "--forcerun=X": the spaced form would also swallow the target and rerun the whole DAG downstream of it
    proc = snakemake(tmp_path, "--cores", "1", f"--forcerun={rel}", rel)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    assert "lco" in out and not re.search(r"^(?:local)?rule (sample|finalize_archive|validate_\w+):", out, flags=re.M), out[-3000:]
    assert sha256_file(tmp_path / rel) == sha256_file(tiny_run / rel)


def test_realism_gate_reruns_the_margins_job_and_holds_every_met_target(tiny_run: Path, tmp_path: Path):
    """Turning lco.realism_quantile on reruns lco_margins (which fits the gate) and the LCO shard asked for,
    and every target that shard meets renders inside the gate (re-rendered here from its latent)."""
    from synthcxr.classifier import load_classifier
    from synthcxr.lco.latents import read_latents
    from synthcxr.lco.realism import load_gate
    from synthcxr.pggan import load_generator

    shutil.copytree(tiny_run / "results", tmp_path / "results")
    # with the run's records, as in the user's own working directory: params then trigger reruns
    shutil.copytree(tiny_run / ".snakemake" / "metadata", tmp_path / ".snakemake" / "metadata")
    on = tmp_path / "realism.yaml"
    on.write_text("lco: {realism_quantile: 0.9, realism_weight: 1.0}\n")
    rel = "results/archive/tiny/work/latents/shard-00000.parquet"
    proc = snakemake(tmp_path, "--cores", "1", rel, "--rerun-triggers", "mtime", "params", "input", config=[TINY, on])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"^(?:local)?rule lco_margins:", out, flags=re.M) and re.search(r"^(?:local)?rule lco:", out, flags=re.M), out[-3000:]
    assert not re.search(r"^(?:local)?rule (sample|train_\w+|prepare):", out, flags=re.M), out[-3000:]
    work = tmp_path / "results" / "archive" / "tiny" / "work"
    gate = load_gate(work / "realism.npz")
    assert json.loads((work / "margins.json").read_text())["realism"]["threshold"] == gate.threshold
    labels = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["labels"]
    lat = read_latents(tmp_path / rel, labels)
    meta = json.loads(pq.read_schema(tmp_path / rel).metadata[b"synthcxr"])
    assert meta["realism"]["threshold"] == gate.threshold and meta["realism"]["quantile"] == 0.9
    met = lat.table["success"].to_numpy()
    assert met.any()
    G = load_generator(tmp_path / "results" / "pggan" / "tiny" / "generator.pt", "cpu")
    C = load_classifier(tmp_path / "results" / "classifier" / "real" / "model.pt", "cpu")
    with torch.no_grad():
        d = gate.distance(C.features(G(torch.as_tensor(lat.z[met])))).numpy()
    assert (d <= gate.threshold * (1 + 1e-4)).all(), d


def test_dicom_export_carries_nothing_of_the_source_collection(tiny_run: Path):
    """Every released sample's DICOM file is a valid synthetic object whose values never repeat an identifier
    of the real collection (image ids, patient keys, source paths)."""
    import pydicom

    rel = tiny_run / "results" / "archive" / "tiny" / "release"
    man = pd.read_parquet(rel / "manifest.parquet")
    src = pd.read_parquet(tiny_run / "results" / "prepared" / "tiny" / "labels.parquet")
    real = {str(v) for col in ("image_id", "patient_key", "source") if col in src.columns for v in src[col]}
    assert len(real) > 10
    for rp in man["dicom_path"]:
        ds = pydicom.dcmread(rel / rp)
        values = {str(e.value) for e in ds.iterall() if e.VR in ("PN", "LO", "SH", "CS", "UI", "LT", "ST", "DA", "TM")}
        assert not values & real, rp
        assert ds.ConversionType == "SYN" and str(ds.PatientName).startswith("SYNTHETIC^")


def test_croissant_records_are_the_released_manifest(tiny_run: Path):
    mlc = pytest.importorskip("mlcroissant")
    rel = tiny_run / "results" / "archive" / "tiny" / "release"
    recs = list(mlc.Dataset(jsonld=str(rel / "croissant.json")).records("samples"))
    man = pd.read_parquet(rel / "manifest.parquet")
    assert [r["samples/sample_id"].decode() for r in recs] == man["sample_id"].tolist()
    assert [int(r["samples/index"]) for r in recs] == man["index"].tolist()
    assert "croissant.json" in (rel / "SHA256SUMS").read_text()


def test_margins_calibrated_on_the_real_val_split(tiny_run: Path):
    cfg = yaml.safe_load(TINY.read_text())["lco"]
    m = json.loads((tiny_run / "results" / "archive" / "tiny" / "work" / "margins.json").read_text())
    assert m["quantile"] == cfg["margin_quantile"] and m["margin"] == cfg["margin"] and m["n_val"] > 0
    # the cap binds: every calibrated side is at most lco.margin
    assert all(r["below"] <= cfg["margin"] and r["above"] <= cfg["margin"] for r in m["labels"].values())
    meta = json.loads(pq.read_schema(next((tiny_run / "results" / "archive" / "tiny" / "work" / "latents").glob("*.parquet"))).metadata[b"synthcxr"])
    assert set(m["labels"]) == set(meta["labels"])
    assert meta["margins"] == {n: {"below": r["below"], "above": r["above"]} for n, r in m["labels"].items()}


def test_validation_outputs(tiny_run: Path):
    val = tiny_run / "results" / "validate" / "tiny"
    fid = json.loads((val / "fid.json").read_text())
    assert fid["generated_vs_train"]["fid"] > 0 and np.isfinite(fid["heldout_vs_train"]["fid"])
    assert fid["extractor"]["name"] == "checker" and len(fid["extractor"]["sha256"]) == 64
    tstr = json.loads((val / "tstr.json").read_text())
    # tiny.yaml: every arm at half and all of the real patients, nested, with equal steps everywhere
    assert tstr["real_fractions"] == [0.5, 1.0] and set(tstr["fractions"]) == {"0.5", "1"}
    assert set(tstr["arms_run"]) == {"real", "synthetic", "real+synthetic", "pretrain_finetune"}
    assert len(tstr["steps_per_run"]) == 1 and tstr["pretrain_epochs"] == 2
    half, full = tstr["fractions"]["0.5"], tstr["fractions"]["1"]
    assert 0 < half["n_real_patients"] < full["n_real_patients"]
    assert half["runs"]["real"][0]["n_train"] < full["runs"]["real"][0]["n_train"]
    assert all(r["init_from"].endswith("model.pt") for r in half["runs"]["pretrain_finetune"])
    assert (val / "auroc_fractions.png").stat().st_size > 1000
    mem = pd.read_parquet(val / "memorization.parquet")
    assert len(mem) == 24 and {"sample_id", "flagged"} <= set(mem.columns)
    agree = json.loads((val / "lco_agreement.json").read_text())
    assert agree["n"] == 24 and 0.0 <= agree["overall"] <= 1.0
    chk = json.loads((tiny_run / "results" / "classifier" / "check" / "metrics.json").read_text())
    assert agree["real_test_exact_match"] == chk["test"]["exact_match"]["rate"]
    assert agree["per_combination"]["No_Finding"]["real_test_n"] > 0
    assert agree["prior_samples"] == 64 and set(agree["per_label"]) == set(agree["labels"])
    assert all(0.0 <= row["prior_rate"] <= 1.0 for row in agree["per_label"].values())
    assert sum(row["n_target"] for row in agree["per_label"].values()) >= agree["n"]  # every target holds a label
    assert all(row["lco_success"] is None or 0.0 <= row["lco_success"] <= 1.0 for row in agree["per_label"].values())
    for name, row in agree["per_label"].items():  # the checker's own sensitivity on real test scans, per label
        ref = chk["test"]["exact_match"]["per_label"][name]
        assert (row["real_test_n_pos"], row["real_test_tpr"]) == (ref["n_pos"], ref["tpr"])
    reid = json.loads((val / "reid.json").read_text())
    verifier = json.loads((tiny_run / "results" / "reid" / "tiny" / "verifier.json").read_text())
    assert reid["verification"] == verifier["verification"] and 0.5 < reid["verification"]["auc"] <= 1.0
    assert reid["samples"]["n"] == 24 and reid["audit"]["false_match_rate"] == 0.05
    matched = pd.read_parquet(val / "reid.parquet")
    assert len(matched) == 24 and int(matched["matched"].sum()) == reid["samples"]["n_matched"]
    assert (matched["matched"] == (matched["score"] > reid["audit"]["threshold"])).all()
    key = pd.read_csv(val / "answer_key" / "key.csv")
    assert len(key) == 8
    assert (val / "reader_kit" / "index.html").exists()
    # the phantom's oracle judged every released sample; its own clean test record is quoted
    orc = json.loads((val / "oracle.json").read_text())
    released = pd.read_parquet(tiny_run / "results" / "archive" / "tiny" / "release" / "manifest.parquet")
    assert orc["released"]["n"] == len(released) and orc["synthetic_labels"]["n_samples"] == len(released)
    for name, row in orc["released"]["per_finding"].items():
        assert row["n_requested"] == int(released[name].sum())
        for who in ("oracle", "checker"):
            assert row[who]["n"] == row["n_requested"] and 0 <= row[who]["k"] <= row["n_requested"]
        assert row["checker_fooled"] == (row["n_requested"] > 0 and row["checker"]["rate"] - row["oracle"]["rate"] > 0.1)
    oracle_metrics = json.loads((tiny_run / "results" / "oracle" / "tiny" / "metrics.json").read_text())
    assert orc["oracle"]["clean_test_auroc"]["Effusion"] == oracle_metrics["test"]["per_label"]["Effusion"]["auroc"]
    test_rows = pd.read_parquet(tiny_run / "results" / "prepared" / "tiny" / "labels.parquet").query("split == 'test'")
    assert orc["oracle"]["real_test"]["n"] == len(test_rows)
    card = (tiny_run / "results" / "archive" / "tiny" / "release" / "README.md").read_text()
    assert "### Ground-truth oracle" in card
    for fig in ("fid_curve.png", "auroc_bars.png", "prevalence.png", "cooccurrence.png", "memorization_gallery.png",
                "reid_gallery.png", "oracle.png"):
        assert (val / fig).stat().st_size > 1000, fig


def test_every_rule_logs_under_its_dataset_run_or_archive(tiny_run: Path):
    logs = tiny_run / "results" / "logs"
    # the tiny config names its dataset, GAN run and archive "tiny": a second one of each gets its own logs
    top = {"prepare-tiny.log", "train_pggan-tiny.log", "train_classifier_real.log", "train_classifier_check.log",
           "train_reid_verifier-tiny.log", "prepare-tiny-oracle.log", "train_oracle-tiny.log"}
    assert {p.name for p in logs.glob("*.log")} == top
    arch = logs / "archive-tiny"
    per_archive = {"plan", "lco_margins", "finalize_archive", "release", "reader_study"} | {
        f"validate_{v}" for v in ("memorization", "fid", "tstr", "diversity", "lco", "reid", "oracle")
    }
    assert {p.stem for p in arch.glob("*.log")} == per_archive
    for stage in ("lco", "sample"):
        assert sorted(p.name for p in (arch / stage).glob("*.log")) == ["shard-00000.log", "shard-00001.log"]
    assert "lco shard 0" in (arch / "lco" / "shard-00000.log").read_text()
    assert (logs / "benchmarks" / "train_pggan-tiny.tsv").exists() and (logs / "benchmarks" / "reader_study-tiny.tsv").exists()


def test_nothing_left_to_do(tiny_run: Path):
    proc = snakemake(tiny_run, "-n", "--cores", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to be done" in proc.stdout + proc.stderr


def _planned_rules(work: Path, extra: dict) -> set[str]:
    return set(re.findall(r"^\s*(?:local)?rule (\w+):", _dry_run(work, extra), flags=re.M))


def _dry_run(work: Path, extra: dict) -> str:
    """What ``snakemake -n`` plans after merging ``extra`` (one level deep) over the tiny config."""
    cfg = work / "edited.yaml"
    merged = yaml.safe_load(TINY.read_text())
    for section, values in extra.items():
        merged.setdefault(section, {}).update(values)
    cfg.write_text(yaml.safe_dump(merged))
    proc = run_group(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile", str(cfg), "-n", "--cores", "2",
         "--rerun-triggers", "mtime", "params", "input", "code"],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_config_edit_reruns_stage_and_downstream_only(tiny_run: Path):
    lco_edit = _planned_rules(tiny_run, {"lco": {"steps": 21}})
    assert {"lco", "sample", "finalize_archive", "validate_fid"} <= lco_edit
    # only margin keys recalibrate, and only lco.plan and lco.shard_size replan
    assert not lco_edit & {"prepare", "train_pggan", "train_classifier", "lco_margins", "plan"}
    plan_edit = _planned_rules(tiny_run, {"lco": {"plan": {**yaml.safe_load(TINY.read_text())["lco"]["plan"], "n_samples": 20}}})
    assert {"plan", "lco", "sample"} <= plan_edit and not plan_edit & {"lco_margins", "train_classifier"}
    q_edit = _planned_rules(tiny_run, {"lco": {"margin_quantile": 0.25}})
    assert {"lco_margins", "lco", "sample"} <= q_edit and not q_edit & {"prepare", "train_pggan", "train_classifier"}
    clf_edit = _planned_rules(tiny_run, {"classifier": {"epochs": 4}})
    assert {"train_classifier", "lco_margins", "lco", "validate_tstr"} <= clf_edit
    assert not clf_edit & {"prepare", "train_pggan"}
    # validate keys only rerun the validation that reads them (and the card that quotes it)
    prior_edit = _planned_rules(tiny_run, {"validate": {"lco_prior_samples": 32}})
    assert "validate_lco" in prior_edit and not prior_edit & {"validate_memorization", "finalize_archive", "validate_fid"}
    kid_edit = _planned_rules(tiny_run, {"validate": {"kid_subsets": 3}})
    assert "validate_fid" in kid_edit and not kid_edit & {"validate_memorization", "finalize_archive", "validate_lco"}
    # the re-id gate only changes what is released; verifier keys retrain the verifier, not the memorisation audit
    gate_edit = _planned_rules(tiny_run, {"validate": {"reid": {**yaml.safe_load(TINY.read_text())["validate"]["reid"], "gate": False}}})
    assert "finalize_archive" in gate_edit and not gate_edit & {"train_reid_verifier", "validate_reid", "validate_memorization"}
    steps_edit = _planned_rules(tiny_run, {"validate": {"reid": {**yaml.safe_load(TINY.read_text())["validate"]["reid"], "steps": 30}}})
    assert {"train_reid_verifier", "validate_reid", "finalize_archive"} <= steps_edit
    assert not steps_edit & {"validate_memorization", "train_classifier", "lco"}
    gan_edit = _planned_rules(tiny_run, {"pggan": {"lr": 0.002}})
    assert "train_pggan" in gan_edit and not gan_edit & {"prepare", "train_classifier"}
    # pairs kept near their base in a verifier's embedding: LCO reads a second verifier (the next seed), so the
    # audit's is neither retrained nor steered with
    pairs = {"share": 0.25, "findings": ["Effusion"], "latent_weight": 1.0, "embed_weight": 1.0}
    plan = _dry_run(tiny_run, {"archive": {"pairs": pairs}})
    lco_jobs = [block for block in re.split(r"\n(?=\S*\s*rule \w+:)", plan) if re.search(r"rule lco:", block)]
    assert len(lco_jobs) == 2 and all("results/reid/tiny/steer/verifier.pt" in job for job in lco_jobs)
    pair_edit = set(re.findall(r"^\s*(?:local)?rule (\w+):", plan, flags=re.M))
    assert {"train_pair_verifier", "plan", "lco", "validate_pairs"} <= pair_edit
    assert not pair_edit & {"train_reid_verifier", "train_classifier"}


def test_a_proximity_edit_keeps_the_plan_and_a_pairs_edit_replans(tiny_run: Path, tmp_path: Path):
    """The plan reads which pairs to lay out (share, findings), not how variants are optimised: a proximity or
    relax edit leaves a made plan alone, an edit of the findings to pair replans."""
    for part in ("prepared", "classifier"):  # the plan's inputs, mtimes kept
        shutil.copytree(tiny_run / "results" / part, tmp_path / "results" / part)
    pairs = {"share": 0.25, "findings": ["Effusion"], "latent_weight": 1.0}
    merged = yaml.safe_load(TINY.read_text())
    merged["archive"]["pairs"] = pairs
    (tmp_path / "pairs.yaml").write_text(yaml.safe_dump(merged))
    proc = snakemake(tmp_path, "--cores", "1", "results/archive/tiny/plan.parquet", config=tmp_path / "pairs.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plan" not in _planned_rules(tmp_path, {"archive": {"pairs": {**pairs, "latent_weight": 3.0, "relax_rounds": 0}}})
    assert "plan" in _planned_rules(tmp_path, {"archive": {"pairs": {**pairs, "findings": ["Effusion", "Nodule"]}}})


CROSS_KERNEL = """
import json, sys
import numpy as np, pandas as pd, torch
from synthcxr.archive import open as open_archive
from synthcxr.archive.regenerate import regenerate_sample
from synthcxr.classifier import load_classifier
from synthcxr.classifier.evaluate import read_thresholds
from synthcxr.lco.accept import accept_rule
from synthcxr.lco.starts import score_latents
from synthcxr.pggan import load_generator

rel, run, margin = sys.argv[1], sys.argv[2], float(sys.argv[3])
G = load_generator(f"{run}/results/pggan/tiny/generator.pt")
C = load_classifier(f"{run}/results/classifier/real/model.pt")
thr = read_thresholds(f"{run}/results/classifier/real/thresholds.json")
arc = open_archive(rel)
man, names = arc.manifest, list(arc.label_names)
diffs, identical = [], 0
for sid in man["sample_id"]:
    r = regenerate_sample(rel, sid, G)
    identical += r.identical
    diffs.append(int(np.abs(r.image.astype(int) - arc.read(sid).astype(int)).max()))
z = torch.from_numpy(np.stack(pd.read_parquet(f"{rel}/latents.parquet").set_index("sample_id").loc[man["sample_id"], "z"]))
idx = torch.tensor([list(C.label_names).index(n) for n in names])
p = torch.sigmoid(score_latents(G, C, z.float(), idx, 64)).numpy()
target = man[names].to_numpy()
ok = accept_rule(p, target, [thr[n] for n in names], margin)
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "n": len(man), "identical": identical,
                  "max_grey_diff": max(diffs), "labels_kept": int(ok.sum()),
                  "max_prob_diff": float(np.abs(p - man[[f"prob_{n}" for n in names]].to_numpy()).max())}))
"""


def test_release_regenerates_on_the_other_cpu_kernel_path(tiny_run: Path, tmp_path: Path):
    """Same config + same platform = same bytes. On the other ATen kernel path (AVX2 where the release was
    rendered on the default, the default where it was rendered on AVX2) every pixel stays within one grey
    level and every label still holds (docs/archive-format.md)."""
    import os
    import sys

    script = tmp_path / "cross.py"
    script.write_text(CROSS_KERNEL)
    rel = tiny_run / "results" / "archive" / "tiny" / "release"
    margin = float(yaml.safe_load(TINY.read_text())["lco"]["margin"])
    own_cap = os.environ.get("ATEN_CPU_CAPABILITY")  # the path this session rendered the release on
    out = {}
    for which, cap in (("own", own_cap), ("other", None if own_cap == "avx2" else "avx2")):
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        if cap:
            env["ATEN_CPU_CAPABILITY"] = cap
        proc = run_group([sys.executable, str(script), str(rel), str(tiny_run), str(margin)], env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[which] = json.loads(proc.stdout.strip().splitlines()[-1])
    own, other = out["own"], out["other"]
    assert own["identical"] == own["n"] and own["max_grey_diff"] == 0, own
    # the manifest's probabilities come from LCO's step batches; scored here in other batches: last bits only
    assert own["labels_kept"] == own["n"] and own["max_prob_diff"] < 1e-5, own
    assert other["max_grey_diff"] <= 1, other
    assert other["labels_kept"] == other["n"], other  # every released sample still meets its target
    assert other["max_prob_diff"] < 1e-3, other
    print(out)

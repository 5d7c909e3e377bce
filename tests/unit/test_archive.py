"""Archive stage: shard writers, finalisation, verify, regenerate, consumer API, crash safety.

Shards are read back with plain h5py / pyarrow / pandas / Pillow, checksums with coreutils
``sha256sum -c``, images compared with a direct generator forward pass.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from synthcxr.archive import open as open_archive
from synthcxr.archive.card import write_card
from synthcxr.archive.finalize import finalize_archive
from synthcxr.archive.regenerate import regenerate_sample
from synthcxr.archive.render import render_one
from synthcxr.archive.sample import ArchiveConfig, sample_shard
from synthcxr.archive.shard_parquet import decode_png, encode_png
from synthcxr.archive.verify import verify_archive
from synthcxr.cli import main as cli_main
from synthcxr.imaging import float_to_uint8, uint8_to_float
from synthcxr.lco.latents import read_latents, write_latents
from synthcxr.pggan import Generator
from synthcxr.pggan.checkpoint import save_generator
from synthcxr.utils.hashing import sha256_file

LABELS = ["Cardiomegaly", "Effusion", "Nodule", "No_Finding"]
RES, DIM, BATCH = 16, 16, 4
SHARD_SIZES = [11, 9, 7]  # 3 shards; the first two have a partial last micro-batch


def make_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(resolution=RES, latent_dim=DIM, fmap_base=64, fmap_max=16).eval()


def latents_frame(shard: int, n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    findings = (rng.random((n, 3)) < 0.4).astype(np.int8)
    nf = (findings.sum(1) == 0).astype(np.int8)
    df = pd.DataFrame({"sample_id": [f"syn-{shard:05d}-{i:04d}" for i in range(n)], "shard": shard, "index": np.arange(n), "seed": 1000 * shard + np.arange(n), "attempts": 1})
    for j, name in enumerate(LABELS[:3]):
        df[f"target_{name}"] = findings[:, j]
    df["target_No_Finding"] = nf
    for name in LABELS:
        df[f"prob_{name}"] = rng.random(n).astype(np.float32)
    df["steps"] = 10
    df["g_evals"] = 10
    df["success"] = rng.random(n) > 0.2
    df["reason"] = np.where(df["success"], "", "target not met")
    df = df.sample(frac=1.0, random_state=shard).reset_index(drop=True)  # rows need not arrive in index order
    z = rng.standard_normal((n, DIM)).astype(np.float32)
    return df, z


def write_shard_latents(path: Path, df: pd.DataFrame, z: np.ndarray) -> None:
    """The lco stage's writer; ``z`` row k belongs to ``df`` row k."""
    write_latents(df.assign(z=list(z)), LABELS, path)


def write_raw_latents(path: Path, df: pd.DataFrame, z: np.ndarray, z_type: pa.DataType | None = None) -> None:
    """Whatever ``df`` holds, plus z, straight through pyarrow: for files the lco writer would refuse to write."""
    tbl = pa.Table.from_pandas(df, preserve_index=False).append_column("z", pa.array(list(z), z_type or pa.list_(pa.float32(), DIM)))
    pq.write_table(tbl, path)


def build_archive(root: Path, formats=("h5", "parquet"), compression="gzip", gate=True) -> dict:
    """Fake the lco stage, run sample for every shard and finalise; returns handy facts for tests."""
    rng = np.random.default_rng(42)
    G = make_generator()
    gen_path = root.parent / f"{root.name}-generator.pt"
    save_generator(gen_path, G, {"kimg": 0})
    clf_path = root.parent / f"{root.name}-model.pt"
    clf_path.write_bytes(b"classifier weights stand-in")
    cfg = ArchiveConfig(labels=LABELS, formats=list(formats), compression=compression, batch_size=BATCH, name=root.name)
    frames, zs, lat_paths = [], {}, []
    for shard, n in enumerate(SHARD_SIZES):
        df, z = latents_frame(shard, n, rng)
        lp = root / "latents" / f"shard-{shard:05d}.parquet"
        write_shard_latents(lp, df, z[df["index"].to_numpy()])  # z row k belongs to df row k
        lat_paths.append(lp)
        zs[shard] = z
        frames.append(df)
        sample_shard(lp, G, {f: root / "shards" / f"shard-{shard:05d}.{f}" for f in formats}, cfg, sha256_file(gen_path))
    allrows = pd.concat(frames, ignore_index=True)
    mem_path = None
    if gate:
        flagged = allrows["sample_id"].isin(allrows["sample_id"].iloc[[0, 5, 13]])
        mem_path = root.parent / f"{root.name}-memorization.parquet"
        pd.DataFrame({"sample_id": allrows["sample_id"], "flagged": flagged, "distance": rng.random(len(allrows))}).to_parquet(mem_path)
    info = finalize_archive(root, cfg, lat_paths, gen_path, clf_path, mem_path, full_config={"archive": {"name": root.name}}, shard_size=11)
    return {"root": root, "G": G, "gen": gen_path, "zs": zs, "rows": allrows, "info": info, "cfg": cfg, "mem": mem_path}


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    return build_archive(tmp_path_factory.mktemp("arch") / "demo")


@pytest.fixture(scope="module")
def arch_pq(tmp_path_factory):
    return build_archive(tmp_path_factory.mktemp("archpq") / "pqonly", formats=("parquet",), gate=False)


def expected_images(G, z: np.ndarray) -> np.ndarray:
    """Reference: the same aligned micro-batches, computed by hand."""
    out = []
    with torch.no_grad():
        for s in range(0, len(z), BATCH):
            out.append(((G(torch.from_numpy(z[s : s + BATCH])) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------- shards
def test_h5_shard_read_with_plain_h5py(arch):
    root, G = arch["root"], arch["G"]
    lat = read_latents(root / "latents/shard-00000.parquet", LABELS)
    with h5py.File(root / "shards/shard-00000.h5", "r") as f:
        imgs = f["images"]
        assert imgs.dtype == np.uint8 and imgs.shape == (11, RES, RES)
        assert imgs.chunks == (1, RES, RES) and imgs.compression == "gzip"
        np.testing.assert_array_equal(imgs[:], expected_images(G, arch["zs"][0]))
        assert f["labels"].dtype == np.uint8 and f["probs"].dtype == np.float32
        assert [str(s) for s in f["labels"].attrs["label_names"]] == LABELS
        np.testing.assert_array_equal(f["labels"][:], lat.targets)
        np.testing.assert_array_equal(f["probs"][:], lat.probs)
        assert [s.decode() for s in f["sample_id"][:]] == [f"syn-00000-{i:04d}" for i in range(11)]
        assert f.attrs["generator_sha256"] == sha256_file(arch["gen"])
        assert int(f.attrs["shard"]) == 0 and int(f.attrs["count"]) == 11 and int(f.attrs["format_version"]) == 1
    # latents rows were shuffled on disk; reading sorts them, targets follow their sample ids
    raw = pd.read_parquet(root / "latents/shard-00000.parquet").set_index("sample_id")
    np.testing.assert_array_equal(lat.targets[:, 0], raw.loc[lat.sample_ids, "target_Cardiomegaly"].to_numpy())


def test_published_files_have_umask_permissions(arch):
    umask = os.umask(0o022)
    os.umask(umask)
    for rel in ("shards/shard-00000.h5", "shards/shard-00000.parquet", "manifest.parquet", "SHA256SUMS", "archive.json"):
        assert (arch["root"] / rel).stat().st_mode & 0o777 == 0o666 & ~umask, rel


def test_parquet_shard_hf_image_convention(arch):
    root = arch["root"]
    path = root / "shards/shard-00001.parquet"
    tbl = pq.read_table(path)
    meta = json.loads(tbl.schema.metadata[b"huggingface"])
    feats = meta["info"]["features"]
    assert feats["image"] == {"_type": "Image"}
    assert feats["Effusion"] == {"dtype": "int8", "_type": "Value"}
    assert str(tbl.schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert str(tbl.schema.field("Nodule").type) == "int8" and str(tbl.schema.field("prob_Nodule").type) == "float"
    assert pq.ParquetFile(path).num_row_groups == 3  # ceil(9 / 4) micro-batches, one row group each
    df = pd.read_parquet(path)
    assert list(df["sample_id"]) == [f"syn-00001-{i:04d}" for i in range(9)]
    assert list(df["image"].map(lambda d: d["path"])) == [f"{s}.png" for s in df["sample_id"]]
    with h5py.File(root / "shards/shard-00001.h5", "r") as f:
        ref = f["images"][:]
    for k, d in enumerate(df["image"]):
        im = Image.open(__import__("io").BytesIO(d["bytes"]))
        assert im.format == "PNG" and im.mode == "L" and not im.info.get("dpi")
        np.testing.assert_array_equal(np.asarray(im), ref[k])


@pytest.mark.parametrize("compression", ["lzf", "none"])
def test_compression_options_and_byte_identical_rerun(tmp_path, arch, compression):
    cfg = ArchiveConfig(labels=LABELS, formats=["h5", "parquet"], compression=compression, batch_size=BATCH)
    lp = arch["root"] / "latents/shard-00002.parquet"
    outs = [{f: tmp_path / run / f"shard-00002.{f}" for f in ("h5", "parquet")} for run in ("a", "b")]
    for o in outs:
        sample_shard(lp, arch["G"], o, cfg, "0" * 64)
    with h5py.File(outs[0]["h5"], "r") as f:
        assert f["images"].compression == (None if compression == "none" else compression)
        with h5py.File(arch["root"] / "shards/shard-00002.h5", "r") as g:
            np.testing.assert_array_equal(f["images"][:], g["images"][:])
    for fmt in ("h5", "parquet"):
        assert sha256_file(outs[0][fmt]) == sha256_file(outs[1][fmt]), f"{fmt} shard bytes differ between reruns"


def test_png_is_deterministic_and_lossless():
    img = np.random.default_rng(1).integers(0, 256, (RES, RES), dtype=np.uint8)
    assert encode_png(img) == encode_png(img.copy())
    np.testing.assert_array_equal(decode_png(encode_png(img)), img)


def test_render_one_matches_its_micro_batch_and_rejects_bad_index(arch):
    G, z = arch["G"], arch["zs"][0]
    ref = expected_images(G, z)
    for i in (0, 3, 5, 10):
        np.testing.assert_array_equal(render_one(G, z, i, BATCH), ref[i])
    with pytest.raises(IndexError, match="outside shard"):
        render_one(G, z, 11, BATCH)


@pytest.mark.parametrize("z_type", [None, pa.list_(pa.float32())], ids=["lco_writer", "variable_list"])
def test_latents_fixed_size_list_z(tmp_path, z_type):
    """The lco stage writes z as fixed_size_list<float32>[D]; rows come back sorted by index.

    The reader also accepts a variable-size list<float32> z of equal lengths.
    """
    rng = np.random.default_rng(2)
    df, z = latents_frame(4, 6, rng)
    path = tmp_path / "shard-00004.parquet"
    if z_type is None:
        write_shard_latents(path, df, z)
        assert pq.read_schema(path).field("z").type == pa.list_(pa.float32(), DIM)
    else:
        write_raw_latents(path, df, z, z_type)
    lat = read_latents(path, LABELS)
    order = np.argsort(df["index"].to_numpy())
    np.testing.assert_array_equal(lat.z, z[order])
    assert lat.shard == 4 and lat.sample_ids == [f"syn-00004-{i:04d}" for i in range(6)]


def test_latents_contract_errors(tmp_path):
    rng = np.random.default_rng(0)
    df, z = latents_frame(0, 5, rng)
    write_raw_latents(tmp_path / "shard-00000.parquet", df.drop(columns=["prob_Effusion"]), z)
    with pytest.raises(ValueError, match=r"shard-00000\.parquet: missing column\(s\) \['prob_Effusion'\]"):
        read_latents(tmp_path / "shard-00000.parquet", LABELS)
    df2 = df.copy()
    df2["index"] = df2["index"] + 1
    write_shard_latents(tmp_path / "shard-00001.parquet", df2.assign(shard=1), z)
    with pytest.raises(ValueError, match="'index' must hold 0..4"):
        read_latents(tmp_path / "shard-00001.parquet", LABELS)
    with pytest.raises(FileNotFoundError, match="run the lco stage"):
        read_latents(tmp_path / "shard-00009.parquet", LABELS)


# ----------------------------------------------------------------------------------------- finalize
def test_manifest_releases_only_successful_unflagged(arch):
    root, rows = arch["root"], arch["rows"]
    man = pd.read_parquet(root / "manifest.parquet")
    flagged = set(pd.read_parquet(arch["mem"]).query("flagged")["sample_id"])
    expect = rows[rows["success"] & ~rows["sample_id"].isin(flagged)]
    assert sorted(man["sample_id"]) == sorted(expect["sample_id"])
    info = json.loads((root / "archive.json").read_text())
    c = info["counts"]
    assert c["n_requested"] == sum(SHARD_SIZES)
    assert c["n_failed"] == int((~rows["success"]).sum())
    assert c["n_flagged"] == int((rows["success"] & rows["sample_id"].isin(flagged)).sum())
    assert c["n_released"] == len(man) == c["n_requested"] - c["n_failed"] - c["n_flagged"]
    e = expect.set_index("sample_id").loc[man["sample_id"]]
    for name in LABELS:
        assert man[name].dtype == np.int8
        np.testing.assert_array_equal(man[name].to_numpy(), e[f"target_{name}"].to_numpy())
        assert c["per_finding"][name] == int(e[f"target_{name}"].sum())
    combos = e[[f"target_{n}" for n in LABELS[:3]]].apply(lambda r: "+".join(n for n in LABELS[:3] if r[f"target_{n}"]) or "No_Finding", axis=1)
    assert c["per_combination"] == {k: int(v) for k, v in combos.value_counts().items()}
    assert info["batch_size"] == BATCH and info["resolution"] == RES and info["generator"]["sha256"] == sha256_file(arch["gen"])
    assert set(man.columns) >= {"shard", "index", "h5_path", "parquet_path", "seed", "steps", "success", "prob_Nodule"}
    assert "created" not in man.columns


def test_sha256sums_passes_coreutils_and_covers_everything(arch):
    root = arch["root"]
    res = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    listed = {line.split("  ", 1)[1] for line in (root / "SHA256SUMS").read_text().splitlines()}
    expect = {"manifest.parquet", "archive.json"}
    expect |= {f"shards/shard-{i:05d}.{f}" for i in range(3) for f in ("h5", "parquet")}
    expect |= {f"latents/shard-{i:05d}.parquet" for i in range(3)}
    assert listed == expect


def test_manifest_bytes_stable_across_finalize_runs(arch, tmp_path):
    copy = tmp_path / "demo"
    shutil.copytree(arch["root"], copy)
    finalize_archive(copy, arch["cfg"], sorted((copy / "latents").glob("*.parquet")), arch["gen"], None, arch["mem"])
    assert sha256_file(copy / "manifest.parquet") == sha256_file(arch["root"] / "manifest.parquet")


def test_finalize_errors_name_the_problem(arch, tmp_path):
    copy = tmp_path / "demo"
    shutil.copytree(arch["root"], copy)
    lats = sorted((copy / "latents").glob("*.parquet"))
    partial = tmp_path / "mem.parquet"
    pd.read_parquet(arch["mem"]).iloc[:5].to_parquet(partial)
    with pytest.raises(ValueError, match="successful sample\\(s\\) were not audited"):
        finalize_archive(copy, arch["cfg"], lats, arch["gen"], None, partial)
    other = tmp_path / "other.pt"
    save_generator(other, make_generator(seed=1), {})
    with pytest.raises(ValueError, match="rendered by a different generator"):
        finalize_archive(copy, arch["cfg"], lats, other)
    with h5py.File(copy / "shards/shard-00002.h5", "r+") as f:
        f["sample_id"][0] = "someone-else"
    with pytest.raises(ValueError, match="shard-00002.h5: sample ids differ"):
        finalize_archive(copy, arch["cfg"], lats, arch["gen"])
    (copy / "shards/shard-00001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00001.parquet missing"):
        finalize_archive(copy, arch["cfg"], lats, arch["gen"])


# ----------------------------------------------------------------------------------------- verify
def test_verify_clean_archive(arch, capsys):
    assert all(c.ok for c in verify_archive(arch["root"]))
    assert cli_main(["verify", str(arch["root"])]) == 0
    out = capsys.readouterr().out
    assert not any(line.startswith("FAILED") for line in out.splitlines())
    assert "OK     shards/shard-00002.parquet" in out and "0 FAILED" in out


def test_verify_catches_flipped_byte(arch, tmp_path, capsys):
    copy = tmp_path / "demo"
    shutil.copytree(arch["root"], copy)
    p = copy / "shards/shard-00001.h5"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    (copy / "shards/.tmp-shard-00003-abc.h5").write_bytes(b"partial")
    assert cli_main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "FAILED shards/shard-00001.h5: checksum mismatch" in out
    assert "OK     shards/shard-00000.h5" in out
    assert "WARN   shards/.tmp-shard-00003-abc.h5: temporary file of an interrupted writer" in out


def test_verify_catches_truncated_shard_even_with_updated_sums(arch, tmp_path, capsys):
    copy = tmp_path / "demo"
    shutil.copytree(arch["root"], copy)
    for rel in ("shards/shard-00000.parquet", "shards/shard-00002.h5"):
        p = copy / rel
        p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])
    # Re-sign the damaged files so only the structural checks can notice.
    from synthcxr.archive.finalize import write_sums

    listed = [line.split("  ", 1)[1] for line in (copy / "SHA256SUMS").read_text().splitlines()]
    write_sums(copy, listed)
    checks = {c.path: c for c in verify_archive(copy)}
    assert not checks["shards/shard-00000.parquet"].ok
    assert not checks["shards/shard-00002.h5"].ok
    assert checks["shards/shard-00001.h5"].ok and checks["shards/shard-00001.parquet"].ok
    assert cli_main(["verify", "-q", str(copy)]) == 1
    assert "FAILED shards/shard-00002.h5" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------- regenerate
def test_regenerate_is_byte_identical(arch):
    man = pd.read_parquet(arch["root"] / "manifest.parquet")
    for sid in man["sample_id"].iloc[[0, 6, -1]]:
        r = regenerate_sample(arch["root"], sid, arch["G"])
        assert r.released and r.matches == {"h5": True, "parquet": True}
    withheld = sorted(set(arch["rows"]["sample_id"]) - set(man["sample_id"]))[0]
    r = regenerate_sample(arch["root"], withheld, arch["G"])
    assert not r.released and r.identical
    # a different generator must be detected as different
    assert not regenerate_sample(arch["root"], man["sample_id"].iloc[0], make_generator(seed=3)).identical


def test_regenerate_cli(arch, tmp_path, capsys):
    sid = pd.read_parquet(arch["root"] / "manifest.parquet")["sample_id"].iloc[2]
    out = tmp_path / "x.png"
    rc = cli_main(["regenerate", str(arch["root"]), sid, "--generator", str(arch["gen"]), "--out", str(out), "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "h5: byte-identical" in text and "parquet: byte-identical" in text
    assert out.read_bytes() == pq.read_table(arch["root"] / "shards" / f"shard-{int(sid[4:9]):05d}.parquet", filters=[("sample_id", "==", sid)]).column("image")[0]["bytes"].as_py()
    other = tmp_path / "other.pt"
    save_generator(other, make_generator(seed=5), {})
    assert cli_main(["regenerate", str(arch["root"]), sid, "--generator", str(other)]) == 1
    assert "not the generator" in capsys.readouterr().err
    assert cli_main(["regenerate", str(arch["root"]), "nope", "--generator", str(arch["gen"]), "--device", "cpu"]) == 1


# ----------------------------------------------------------------------------------------- crash safety
KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    from synthcxr.archive.sample import ArchiveConfig, sample_shard
    from synthcxr.pggan import load_generator
    G = load_generator(sys.argv[1])
    forward, calls = G.forward, []
    def dying(z, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return forward(z, *a, **k)
    G.forward = dying
    cfg = ArchiveConfig(labels={labels!r}, batch_size=4)
    sample_shard(sys.argv[2], G, {{"h5": sys.argv[3], "parquet": sys.argv[4]}}, cfg, "0" * 64)
    """
)


def test_killed_writer_leaves_no_complete_looking_shard(arch, tmp_path):
    out = tmp_path / "shards"
    h5p, pqp = out / "shard-00000.h5", out / "shard-00000.parquet"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(labels=LABELS))
    lp = arch["root"] / "latents/shard-00000.parquet"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SYNTHCXR_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(arch["gen"]), str(lp), str(h5p), str(pqp)], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not h5p.exists() and not pqp.exists()
    assert all(p.name.startswith(".tmp-") for p in out.iterdir())
    # an exception (rather than a kill) cleans up its temporary files too
    broken = make_generator()
    broken.forward = lambda z: torch.zeros(len(z), 1, RES + 1, RES + 1)
    with pytest.raises(ValueError, match="expected"):
        sample_shard(lp, broken, {"h5": out / "b.h5", "parquet": out / "b.parquet"}, arch["cfg"], "0" * 64)
    assert not (out / "b.h5").exists() and not any(p.name.startswith(".tmp-b") for p in out.iterdir())
    # rerunning produces the shard, identical to the one in the archive
    sample_shard(lp, arch["G"], {"h5": h5p, "parquet": pqp}, arch["cfg"], sha256_file(arch["gen"]))
    assert sha256_file(pqp) == sha256_file(arch["root"] / "shards/shard-00000.parquet")


# ----------------------------------------------------------------------------------------- consumer API
def test_open_filter_read(arch):
    a = open_archive(arch["root"])
    man = pd.read_parquet(arch["root"] / "manifest.parquet")
    assert len(a) == len(man) and a.label_names == LABELS
    v = a.filter(require=["Effusion"], exclude=["Nodule"])
    ref = man[(man["Effusion"] == 1) & (man["Nodule"] == 0)]
    assert sorted(v.manifest["sample_id"]) == sorted(ref["sample_id"]) and len(v) > 0
    with pytest.raises(KeyError, match="unknown label"):
        a.filter(require=["Hernia"])
    sid = man["sample_id"].iloc[4]
    with h5py.File(arch["root"] / man["h5_path"].iloc[4], "r") as f:
        np.testing.assert_array_equal(a.read(sid), f["images"][int(man["index"].iloc[4])])
    flagged = pd.read_parquet(arch["mem"]).query("flagged")["sample_id"].iloc[0]
    with pytest.raises(KeyError, match="not among"):
        a.read(flagged)


def test_torch_dataset_values_and_resize(arch):
    a = open_archive(arch["root"])
    ds = a.torch_dataset()
    x, y = ds[3]
    row = a.manifest.iloc[3]
    assert x.shape == (1, RES, RES) and x.dtype == torch.float32 and y.dtype == torch.float32
    img = a.read(row["sample_id"])
    torch.testing.assert_close(x[0], torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0))
    np.testing.assert_array_equal(y.numpy(), row[LABELS].to_numpy(dtype=np.float32))
    small, _ = a.torch_dataset(res=8)[3]
    ref = (img.astype(np.float64) / 127.5 - 1.0).reshape(8, 2, 8, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(small[0].numpy(), ref, atol=1e-6)


def test_parquet_only_archive_serves_same_pixels(arch, arch_pq):
    a, b = open_archive(arch["root"]), open_archive(arch_pq["root"])
    assert b.formats == ["parquet"] and not list((arch_pq["root"] / "shards").glob("*.h5"))
    assert len(b) == int(arch_pq["rows"]["success"].sum())  # no gate: only failures withheld
    for sid in b.manifest["sample_id"].iloc[[0, 7, -1]]:
        np.testing.assert_array_equal(b.read(sid), a.read(sid) if sid in set(a.manifest["sample_id"]) else b.read(sid))
    x, y = b.torch_dataset()[5]
    torch.testing.assert_close(x, uint8_to_float(b.read(b.manifest["sample_id"].iloc[5]))[None])
    seen = [x for x, _ in b.iterable_dataset()]
    assert len(seen) == len(b)
    assert all(c.ok for c in verify_archive(arch_pq["root"]))


def _loader_images(ds, workers: int) -> list[bytes]:
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    return [float_to_uint8(x).numpy().tobytes() for x, _ in dl]


def test_iterable_dataset_two_workers_each_sample_once(arch):
    a = open_archive(arch["root"])
    expect = sorted(a.read(s).tobytes() for s in a.manifest["sample_id"])
    assert len(set(expect)) == len(expect)  # images are distinct, so they identify samples
    got = _loader_images(a.iterable_dataset(), workers=2)
    assert sorted(got) == expect
    view = a.filter(require=["Cardiomegaly"])
    got = _loader_images(view.iterable_dataset(shuffle_shards=True, seed=3), workers=2)
    assert sorted(got) == sorted(view.read(s).tobytes() for s in view.manifest["sample_id"])
    ds = a.iterable_dataset(shuffle_shards=True, seed=0)
    orders = set()
    for e in range(6):
        ds.set_epoch(e)
        orders.add(tuple(ds.shard_order()))
    assert len(orders) > 1 and all(sorted(o) == [0, 1, 2] for o in orders)


# ----------------------------------------------------------------------------------------- card
def test_dataset_card(arch, tmp_path):
    fid = tmp_path / "fid.json"
    fid.write_text(json.dumps({"fid": {"value": 12.3456, "ci": [10.0, 14.5]}, "kid": 0.0123, "note": "text"}))
    tstr = tmp_path / "tstr.json"
    tstr.write_text(json.dumps({"synthetic": {"macro_auroc": 0.8123}, "real": {"macro_auroc": 0.9001}}))
    card = write_card(arch["root"] / "archive.json", tmp_path / "DATASET_CARD.md", fid, tstr, arch["mem"])
    assert (tmp_path / "DATASET_CARD.md").read_text() == card
    head = "\n".join(card.splitlines()[:6])
    assert "**Every image in this archive is synthetic.**" in head
    c = arch["info"]["counts"]
    assert f"| released (in manifest) | {c['n_released']} |" in card
    assert f"| withheld: label optimisation failed | {c['n_failed']} |" in card
    assert "| fid.value | 12.35 |" in card and "| kid | 0.0123 |" in card and "| fid.ci | [10, 14.5] |" in card
    assert "| synthetic.macro_auroc | 0.8123 |" in card and "3 flagged" in card
    assert sha256_file(arch["gen"]) in card
    assert "Label reliability" not in card
    bare = write_card(arch["root"] / "archive.json", tmp_path / "c2.md", tmp_path / "missing.json")
    assert "No validation results were available" in bare


def test_dataset_card_label_reliability(arch, tmp_path):
    agree = tmp_path / "lco_agreement.json"
    agree.write_text(json.dumps({
        "overall_successful": 0.9707, "n_successful": 1024, "real_test_exact_match": 0.9664,
        "per_label": {
            "Effusion": {"n_target": 100, "plan_rate": 0.1, "agreement_successful": 0.93, "prior_rate": 0.102,
                         "real_test_n_pos": 44, "real_test_tpr": 1.0},
            "Pneumothorax": {"n_target": 12, "plan_rate": 0.0117, "agreement_successful": 0.3333, "prior_rate": 0.0,
                             "real_test_n_pos": 3, "real_test_tpr": 0.6667},
            "Mass": {"n_target": 0, "plan_rate": 0.0, "agreement_successful": None},
            "Nodule": {"n_target": 30, "plan_rate": 0.03, "agreement_successful": 0.5, "prior_rate": 0.1,
                       "real_test_n_pos": 18, "real_test_tpr": 0.9444},
        },
    }))
    card = write_card(arch["root"] / "archive.json", tmp_path / "card.md", lco_agreement=agree)
    assert "### Label reliability (independent checker classifier)" in card
    assert "agreed with the whole target on 97.1% of the 1024 samples" in card and "real test scans is 96.6%" in card
    assert "| Effusion | 100 | 93.0% | 100.0% (44) | 10.2% |" in card
    assert "| Pneumothorax | 12 | 33.3% | 66.7% (3) | 0.0% |" in card and "| Mass | 0 | n/a | n/a | n/a |" in card
    warn = [line for line in card.splitlines() if line.startswith("**Treat these labels with care:**")]
    assert len(warn) == 1 and "labelled Pneumothorax, Nodule." in warn[0] and "Effusion" not in warn[0]
    # only the label the checker also misses on real scans is blamed (partly) on the checker
    blind = [line for line in card.splitlines() if line.startswith("The checker also misses")]
    assert len(blind) == 1 and blind[0].startswith("The checker also misses Pneumothorax on more than 20%")
    agree.write_text("{not json")
    broken = write_card(arch["root"] / "archive.json", tmp_path / "card2.md", lco_agreement=agree)
    assert "lco_agreement.json could not be read" in broken

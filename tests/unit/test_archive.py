"""Archive stage: working shard writers, the release build, regenerate, consumer API, crash safety, card.

Shards are read back with plain h5py / pyarrow / pandas / Pillow, images compared with a direct
generator forward pass. The release contract itself (tampering, swaps, seals) is in test_release_contract.py.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
import textwrap

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from archive_fixtures import (
    BATCH,
    DIM,
    LABELS,
    RES,
    SHARD_SIZES,
    build_archive,
    expected_images,
    latents_frame,
    make_generator,
    released_rows,
    write_raw_latents,
    write_shard_latents,
)
from dag import run_group
from PIL import Image

from synthcxr.archive import open as open_archive
from synthcxr.archive.card import render_card
from synthcxr.archive.finalize import finalize_archive
from synthcxr.archive.regenerate import regenerate_sample
from synthcxr.archive.render import render_batch, render_one
from synthcxr.archive.sample import ArchiveConfig, sample_shard
from synthcxr.archive.shard_parquet import decode_png, encode_png
from synthcxr.archive.verify import verify_release
from synthcxr.cli import main as cli_main
from synthcxr.imaging import float_to_uint8, uint8_to_float
from synthcxr.lco.latents import read_latents
from synthcxr.pggan.checkpoint import save_generator
from synthcxr.utils.hashing import sha256_file


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    return build_archive(tmp_path_factory.mktemp("arch") / "demo")


@pytest.fixture(scope="module")
def arch_pq(tmp_path_factory):
    return build_archive(tmp_path_factory.mktemp("archpq") / "pqonly", formats=("parquet",), gate=False)


# ----------------------------------------------------------------------------------------- working shards
def test_working_h5_shard_read_with_plain_h5py(arch):
    work, G = arch["work"], arch["G"]
    lat = read_latents(work / "latents/shard-00000.parquet", LABELS)
    with h5py.File(work / "shards/shard-00000.h5", "r") as f:
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
        assert int(f.attrs["shard"]) == 0 and int(f.attrs["count"]) == 11 and int(f.attrs["format_version"]) == 2
        assert f.attrs["role"] == "work" and int(f.attrs["render_threads"]) == torch.get_num_threads()
    # latents rows were shuffled on disk; reading sorts them, targets follow their sample ids
    raw = pd.read_parquet(work / "latents/shard-00000.parquet").set_index("sample_id")
    np.testing.assert_array_equal(lat.targets[:, 0], raw.loc[lat.sample_ids, "target_Cardiomegaly"].to_numpy())


def test_published_files_have_umask_permissions(arch):
    umask = os.umask(0o022)
    os.umask(umask)
    rels = [arch["work"] / "shards/shard-00000.h5", arch["work"] / "shards/shard-00000.parquet"]
    rels += [arch["release"] / r for r in ("manifest.parquet", "SHA256SUMS", "archive.json", "README.md", "h5/shard-00000.h5")]
    for p in rels:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


def test_parquet_shard_hf_image_convention(arch):
    work = arch["work"]
    path = work / "shards/shard-00001.parquet"
    tbl = pq.read_table(path)
    meta = json.loads(tbl.schema.metadata[b"huggingface"])
    feats = meta["info"]["features"]
    assert feats["image"] == {"_type": "Image"}
    assert feats["Effusion"] == {"dtype": "int8", "_type": "Value"}
    assert str(tbl.schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert str(tbl.schema.field("Nodule").type) == "int8" and str(tbl.schema.field("prob_Nodule").type) == "float"
    assert pq.ParquetFile(path).num_row_groups == 1  # row groups by PNG bytes (2 MiB), not one per micro-batch
    df = pd.read_parquet(path)
    assert list(df["sample_id"]) == [f"syn-00001-{i:04d}" for i in range(9)]
    assert list(df["image"].map(lambda d: d["path"])) == [f"{s}.png" for s in df["sample_id"]]
    with h5py.File(work / "shards/shard-00001.h5", "r") as f:
        ref = f["images"][:]
    for k, d in enumerate(df["image"]):
        im = Image.open(io.BytesIO(d["bytes"]))
        assert im.format == "PNG" and im.mode == "L" and not im.info.get("dpi")
        np.testing.assert_array_equal(np.asarray(im), ref[k])


@pytest.mark.parametrize("compression", ["lzf", "none"])
def test_compression_options_and_byte_identical_rerun(tmp_path, arch, compression):
    cfg = ArchiveConfig.from_section(dict(name="archive", labels=LABELS, formats=["h5", "parquet"], compression=compression, batch_size=BATCH))
    lp = arch["work"] / "latents/shard-00002.parquet"
    outs = [{f: tmp_path / run / f"shard-00002.{f}" for f in ("h5", "parquet")} for run in ("a", "b")]
    for o in outs:
        sample_shard(lp, arch["G"], o, cfg, "0" * 64)
    with h5py.File(outs[0]["h5"], "r") as f:
        assert f["images"].compression == (None if compression == "none" else compression)
        with h5py.File(arch["work"] / "shards/shard-00002.h5", "r") as g:
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


@pytest.mark.kernels
def test_a_sample_does_not_depend_on_its_batch_mates(arch):
    """What lets regenerate fill unreleased batch-mates with zeros: same position and batch shape, same bytes."""
    G, z = arch["G"], arch["zs"][0][:BATCH]
    ref = render_batch(G, z)
    rng = np.random.default_rng(7)
    for pos in range(BATCH):
        other = rng.standard_normal(z.shape).astype(np.float32) * 3
        other[pos] = z[pos]
        np.testing.assert_array_equal(render_batch(G, other)[pos], ref[pos])
        zeros = np.zeros_like(z)
        zeros[pos] = z[pos]
        np.testing.assert_array_equal(render_batch(G, zeros)[pos], ref[pos])


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


# ----------------------------------------------------------------------------------------- the release
def test_release_holds_exactly_the_released_samples(arch):
    release, rows = arch["release"], arch["rows"]
    man = pd.read_parquet(release / "manifest.parquet")
    expect = released_rows(arch)
    assert man["sample_id"].tolist() == expect["sample_id"].tolist()  # render order
    info = json.loads((release / "archive.json").read_text())
    c = info["counts"]
    flagged = set(pd.read_parquet(arch["mem"]).query("flagged")["sample_id"])
    assert c["n_requested"] == sum(SHARD_SIZES)
    assert c["n_failed"] == int((~rows["success"]).sum())
    assert c["n_flagged"] == int((rows["success"] & rows["sample_id"].isin(flagged)).sum()) > 0
    assert c["n_released"] == len(man) == c["n_requested"] - c["n_failed"] - c["n_flagged"]
    for name in LABELS:
        assert man[name].dtype == np.int8
        np.testing.assert_array_equal(man[name].to_numpy(), expect[f"target_{name}"].to_numpy())
        np.testing.assert_array_equal(man[f"prob_{name}"].to_numpy(), expect[f"prob_{name}"].to_numpy())
        assert c["per_finding"][name] == int(expect[f"target_{name}"].sum())
    combos = expect[[f"target_{n}" for n in LABELS[:3]]].apply(
        lambda r: "+".join(n for n in LABELS[:3] if r[f"target_{n}"]) or "No_Finding", axis=1)
    assert c["per_combination"] == {k: int(v) for k, v in combos.value_counts().items()}
    np.testing.assert_array_equal(man["render_shard"].to_numpy(), expect["shard"].to_numpy())
    np.testing.assert_array_equal(man["render_index"].to_numpy(), expect["index"].to_numpy())
    assert info["render"]["batch_size"] == BATCH and info["resolution"] == RES
    assert info["generator"] == {"file": arch["gen"].name, "sha256": sha256_file(arch["gen"])}
    assert info["classifier"]["sha256"] == sha256_file(arch["clf"]) and info["format_version"] == 2
    assert set(man.columns) >= {"shard", "index", "h5_path", "parquet_path", "seed", "steps", "prob_Nodule", "pixel_sha256"}
    assert "created" not in man.columns and "success" not in man.columns


def test_release_shards_are_byte_sized_and_pixel_identical_to_the_working_shards(arch):
    release, work = arch["release"], arch["work"]
    info = json.loads((release / "archive.json").read_text())
    man = pd.read_parquet(release / "manifest.parquet")
    assert info["n_shards"] == len(info["shards"]) > 1  # SHARD_MB splits ~20 samples into several shards
    counts = [sh["count"] for sh in info["shards"]]
    assert sum(counts) == len(man) and max(counts) - min(counts) <= 1
    for _, row in man.iterrows():
        with h5py.File(work / f"shards/shard-{int(row['render_shard']):05d}.h5", "r") as f:
            src = f["images"][int(row["render_index"])]
        src_png = pq.read_table(work / f"shards/shard-{int(row['render_shard']):05d}.parquet", filters=[("index", "==", int(row["render_index"]))]
                                ).column("image")[0]["bytes"].as_py()
        with h5py.File(release / row["h5_path"], "r") as f:
            np.testing.assert_array_equal(f["images"][int(row["index"])], src)
            assert f["sample_id"][int(row["index"])].decode() == row["sample_id"]
        rel = pq.read_table(release / row["parquet_path"], filters=[("index", "==", int(row["index"]))])
        assert rel.column("image")[0]["bytes"].as_py() == src_png  # PNG bytes copied, not re-encoded
        assert rel.column("sample_id")[0].as_py() == row["sample_id"]


def test_release_rebuild_gives_the_same_data_bytes(arch, tmp_path):
    copy = tmp_path / "demo"
    shutil.copytree(arch["root"], copy)
    finalize_archive(copy / "work", copy / "release", arch["cfg"], sorted((copy / "work/latents").glob("*.parquet")), arch["gen"],
                     arch["clf"], arch["mem"])
    assert not (copy / "release/SHA256SUMS").exists() and not (copy / "release/README.md").exists()  # a rebuild is unsealed
    for rel in ("manifest.parquet", "latents.parquet", "h5/shard-00000.h5", "parquet/shard-00001.parquet"):
        assert sha256_file(copy / "release" / rel) == sha256_file(arch["release"] / rel), rel


def test_finalize_errors_name_the_problem(arch, tmp_path):
    copy = tmp_path / "demo"
    shutil.copytree(arch["root"], copy)
    work, release = copy / "work", copy / "release"
    lats = sorted((work / "latents").glob("*.parquet"))
    partial = tmp_path / "mem.parquet"
    pd.read_parquet(arch["mem"]).iloc[:5].to_parquet(partial)
    with pytest.raises(ValueError, match="successful sample\\(s\\) were not audited"):
        finalize_archive(work, release, arch["cfg"], lats, arch["gen"], None, partial)
    other = tmp_path / "other.pt"
    save_generator(other, make_generator(seed=1), {})
    with pytest.raises(ValueError, match="rendered by a different generator"):
        finalize_archive(work, release, arch["cfg"], lats, other)
    with h5py.File(work / "shards/shard-00002.h5", "r+") as f:
        f["sample_id"][0] = "someone-else"
    with pytest.raises(ValueError, match="shard-00002.h5: sample ids differ"):
        finalize_archive(work, release, arch["cfg"], lats, arch["gen"])
    (work / "shards/shard-00001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00001.parquet missing"):
        finalize_archive(work, release, arch["cfg"], lats, arch["gen"])


def test_verify_clean_release(arch, capsys):
    assert all(c.ok for c in verify_release(arch["release"]))
    assert cli_main(["verify", "--jobs", "2", str(arch["release"])]) == 0
    out = capsys.readouterr().out
    assert not any(line.startswith("FAILED") for line in out.splitlines())
    assert "OK     parquet/shard-00002.parquet" in out and "0 FAILED" in out


# ----------------------------------------------------------------------------------------- regenerate
@pytest.mark.kernels
def test_regenerate_every_released_sample_is_byte_identical(arch):
    man = pd.read_parquet(arch["release"] / "manifest.parquet")
    for sid in man["sample_id"]:  # batch-mates that were withheld are absent from the release
        r = regenerate_sample(arch["release"], sid, arch["G"])
        assert r.matches == {"h5": True, "parquet": True}, sid
    withheld = sorted(set(arch["rows"]["sample_id"]) - set(man["sample_id"]))[0]
    with pytest.raises(KeyError, match="only released samples"):
        regenerate_sample(arch["release"], withheld, arch["G"])
    # a different generator must be detected as different
    assert not regenerate_sample(arch["release"], man["sample_id"].iloc[0], make_generator(seed=3)).identical


@pytest.mark.kernels
def test_regenerate_cli(arch, tmp_path, capsys):
    man = pd.read_parquet(arch["release"] / "manifest.parquet")
    row = man.iloc[2]
    out = tmp_path / "x.png"
    rc = cli_main(["regenerate", str(arch["release"]), row["sample_id"], "--generator", str(arch["gen"]), "--out", str(out), "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "h5: byte-identical" in text and "parquet: byte-identical" in text
    stored = pq.read_table(arch["release"] / row["parquet_path"], filters=[("sample_id", "==", row["sample_id"])])
    assert out.read_bytes() == stored.column("image")[0]["bytes"].as_py()
    other = tmp_path / "other.pt"
    save_generator(other, make_generator(seed=5), {})
    assert cli_main(["regenerate", str(arch["release"]), row["sample_id"], "--generator", str(other)]) == 1
    err = capsys.readouterr().err
    assert "not the generator" in err and sha256_file(arch["gen"]) in err  # names the file it needs by hash
    assert cli_main(["regenerate", str(arch["release"]), "nope", "--generator", str(arch["gen"]), "--device", "cpu"]) == 1
    # several samples in one process: each reported, 0 only when every one is byte-identical
    ids = man["sample_id"].iloc[:3].tolist()
    capsys.readouterr()
    assert cli_main(["regenerate", str(arch["release"]), *ids, "--generator", str(arch["gen"]), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert all(f"{sid}: shard" in text for sid in ids) and text.count("h5: byte-identical") == 3
    assert cli_main(["regenerate", str(arch["release"]), *ids[:2], "nope", "--generator", str(arch["gen"]), "--device", "cpu"]) == 1
    with pytest.raises(SystemExit):  # --out writes one PNG
        cli_main(["regenerate", str(arch["release"]), *ids, "--generator", str(arch["gen"]), "--out", str(out)])


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
    cfg = ArchiveConfig.from_section(dict(name="archive", labels={labels!r}, batch_size=4))
    sample_shard(sys.argv[2], G, {{"h5": sys.argv[3], "parquet": sys.argv[4]}}, cfg, "0" * 64)
    """
)


def test_killed_writer_leaves_no_complete_looking_shard_and_the_rerun_cleans_up(arch, tmp_path):
    out = tmp_path / "shards"
    h5p, pqp = out / "shard-00000.h5", out / "shard-00000.parquet"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(labels=LABELS))
    lp = arch["work"] / "latents/shard-00000.parquet"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SYNTHCXR_NO_PROGRESS": "1"}
    proc = run_group([sys.executable, str(script), str(arch["gen"]), str(lp), str(h5p), str(pqp)], env=env, timeout=600, text=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not h5p.exists() and not pqp.exists()
    left = sorted(p.name for p in out.iterdir())
    assert len(left) == 2 and all(n.startswith(".tmp-shard-00000.") and n.endswith(".partial") for n in left), left
    assert not list(out.glob("*.parquet")) and not list(out.glob("*.h5"))  # temp names never end in a real suffix
    # an exception (rather than a kill) cleans up its temporary files too
    broken = make_generator()
    broken.forward = lambda z: torch.zeros(len(z), 1, RES + 1, RES + 1)
    with pytest.raises(ValueError, match="expected"):
        sample_shard(lp, broken, {"h5": out / "b.h5", "parquet": out / "b.parquet"}, arch["cfg"], "0" * 64)
    assert not (out / "b.h5").exists() and not any(p.name.startswith(".tmp-b") for p in out.iterdir())
    # rerunning produces the shard, identical to the one in the archive, and removes the dead writer's files
    sample_shard(lp, arch["G"], {"h5": h5p, "parquet": pqp}, arch["cfg"], sha256_file(arch["gen"]))
    assert sha256_file(pqp) == sha256_file(arch["work"] / "shards/shard-00000.parquet")
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.h5", "shard-00000.parquet"]


# ----------------------------------------------------------------------------------------- consumer API
def test_open_filter_read(arch):
    a = open_archive(arch["release"])
    man = pd.read_parquet(arch["release"] / "manifest.parquet")
    assert len(a) == len(man) and a.label_names == LABELS
    v = a.filter(require=["Effusion"], exclude=["Nodule"])
    ref = man[(man["Effusion"] == 1) & (man["Nodule"] == 0)]
    assert sorted(v.manifest["sample_id"]) == sorted(ref["sample_id"]) and len(v) > 0
    with pytest.raises(KeyError, match="unknown label"):
        a.filter(require=["Hernia"])
    sid = man["sample_id"].iloc[4]
    with h5py.File(arch["release"] / man["h5_path"].iloc[4], "r") as f:
        np.testing.assert_array_equal(a.read(sid), f["images"][int(man["index"].iloc[4])])
    flagged = pd.read_parquet(arch["mem"]).query("flagged")["sample_id"].iloc[0]
    with pytest.raises(KeyError, match="not among"):
        a.read(flagged)
    batches = list(v.iter_batches(batch_size=2))
    assert [i for ids, _ in batches for i in ids] == v.manifest.sort_values(["shard", "index"])["sample_id"].tolist()
    for ids, imgs in batches:
        for i, im in zip(ids, imgs):
            np.testing.assert_array_equal(im, a.read(i))


def test_torch_dataset_values_and_resize(arch):
    a = open_archive(arch["release"])
    ds = a.torch_dataset()
    item = ds[3]
    x, y = item["image"], item["labels"]
    row = a.manifest.iloc[3]
    assert set(item) == {"sample_id", "image", "labels"} and item["sample_id"] == row["sample_id"]
    assert x.shape == (1, RES, RES) and x.dtype == torch.float32 and y.dtype == torch.float32
    img = a.read(row["sample_id"])
    torch.testing.assert_close(x[0], torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0))
    np.testing.assert_array_equal(y.numpy(), row[LABELS].to_numpy(dtype=np.float32))
    small = a.torch_dataset(res=8)[3]["image"]
    ref = (img.astype(np.float64) / 127.5 - 1.0).reshape(8, 2, 8, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(small[0].numpy(), ref, atol=1e-6)


def test_parquet_only_release_serves_same_pixels(arch, arch_pq):
    a, b = open_archive(arch["release"]), open_archive(arch_pq["release"])
    assert b.formats == ["parquet"] and not (arch_pq["release"] / "h5").exists()
    assert len(b) == int(arch_pq["rows"]["success"].sum())  # no gate: only failures withheld
    common = sorted(set(a.manifest["sample_id"]) & set(b.manifest["sample_id"]))
    assert len(common) > 5
    for sid in common:  # same seed, same generator: the same pixels whichever format was read
        np.testing.assert_array_equal(b.read(sid), a.read(sid))
    x = b.torch_dataset()[5]["image"]
    torch.testing.assert_close(x, uint8_to_float(b.read(b.manifest["sample_id"].iloc[5]))[None])
    assert len([it["image"] for it in b.iterable_dataset()]) == len(b)
    assert all(c.ok for c in verify_release(arch_pq["release"]))


def _loader_items(ds, workers: int) -> dict[str, bytes]:
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    return {it["sample_id"]: float_to_uint8(it["image"]).numpy().tobytes() for it in dl}


def test_iterable_dataset_two_workers_each_sample_once(arch):
    a = open_archive(arch["release"])
    got = _loader_items(a.iterable_dataset(), workers=2)
    assert len(got) == len(a) and got == {s: a.read(s).tobytes() for s in a.manifest["sample_id"]}
    view = a.filter(require=["Cardiomegaly"])
    ds = view.iterable_dataset(shuffle=4, seed=3)
    got = _loader_items(ds, workers=2)
    assert sorted(got) == sorted(view.manifest["sample_id"]) and len(ds) == len(view)
    orders = set()
    for e in range(4):
        ds.set_epoch(e)
        orders.add(tuple(it["sample_id"] for it in ds))
    assert len(orders) > 1 and all(sorted(o) == sorted(view.manifest["sample_id"]) for o in orders)


# ----------------------------------------------------------------------------------------- card
def _info(arch) -> dict:
    return json.loads((arch["release"] / "archive.json").read_text())


def test_dataset_card(arch, tmp_path):
    fid = tmp_path / "fid.json"
    fid.write_text(json.dumps({"fid": {"value": 12.3456, "ci": [10.0, 14.5]}, "kid": 0.0123, "note": "text"}))
    tstr = tmp_path / "tstr.json"
    tstr.write_text(json.dumps({"synthetic": {"macro_auroc": 0.8123}, "real": {"macro_auroc": 0.9001}}))
    card = render_card(_info(arch), fid, tstr, arch["mem"])
    assert card.startswith("---\n")
    body = card.split("\n---\n", 1)[1]
    head = "\n".join(body.splitlines()[:6])
    assert "**Every image in this archive is synthetic.**" in head
    c = arch["info"]["counts"]
    assert f"| released (in manifest) | {c['n_released']} |" in card
    assert f"| withheld: label optimisation failed | {c['n_failed']} |" in card
    assert "| fid.value | 12.35 |" in card and "| kid | 0.0123 |" in card and "| fid.ci | [10, 14.5] |" in card
    assert "| synthetic.macro_auroc | 0.8123 |" in card and "3 flagged" in card
    assert sha256_file(arch["gen"]) in card
    assert "Label reliability" not in card
    assert "No validation results were available" in render_card(_info(arch))
    # the sealed release's README.md is this card (with what seal_release was given)
    assert (arch["release"] / "README.md").read_text() == render_card(_info(arch), memorization=arch["mem"])
    # a release whose LCO also offset the generator's features says so, and where the offsets are
    info = _info(arch)
    assert "offset to the generator" not in render_card(info)
    info.setdefault("config", {}).setdefault("lco", {}).update(feature_res=8, feature_weight=1.0)
    assert "an additive offset to the generator's 8 x 8 features (weight 1.0), stored after the latent in `latents.parquet`" in render_card(info)
    # and one held to the realism gate says at which quantile
    assert "realism gate" not in render_card(info)
    info["config"]["lco"]["realism_quantile"] = 0.95
    assert "held inside a realism gate: no farther from real scans in that classifier's features than the 0.95 quantile" in render_card(info)


def test_card_front_matter_is_generated_from_the_release(arch):
    import yaml

    card = (arch["release"] / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    info = _info(arch)
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "parquet/*.parquet"}]}]
    names = [f["name"] for f in meta["dataset_info"]["features"]]
    assert names[:2] == ["sample_id", "image"] and set(LABELS) <= set(names) and {f"prob_{n}" for n in LABELS} <= set(names)
    split = meta["dataset_info"]["splits"][0]
    assert split["num_examples"] == info["counts"]["n_released"]
    assert split["num_bytes"] == sum((arch["release"] / sh["files"]["parquet"]).stat().st_size for sh in info["shards"])
    assert meta["license"] == "other" and meta["size_categories"] == ["n<1K"]


def test_dataset_card_label_reliability(arch, tmp_path):
    agree = tmp_path / "lco_agreement.json"
    agree.write_text(json.dumps({
        "overall_successful": 0.9707, "n_successful": 1024, "real_test_exact_match": 0.9664,
        "per_label": {
            "Effusion": {"n_target": 100, "plan_rate": 0.1, "agreement_successful": 0.93, "seen_successful": 0.95, "prior_rate": 0.102,
                         "real_test_n_pos": 44, "real_test_tpr": 1.0},
            "Pneumothorax": {"n_target": 12, "plan_rate": 0.0117, "agreement_successful": 0.3333, "prior_rate": 0.0,
                             "real_test_n_pos": 3, "real_test_tpr": 0.6667},
            "Mass": {"n_target": 0, "plan_rate": 0.0, "agreement_successful": None},
            "Nodule": {"n_target": 30, "plan_rate": 0.03, "agreement_successful": 0.5, "prior_rate": 0.1,
                       "real_test_n_pos": 18, "real_test_tpr": 0.9444},
        },
    }))
    card = render_card(_info(arch), lco_agreement=agree)
    assert "### Label reliability (independent checker classifier)" in card
    assert "agreed with the whole target on 97.1% of the 1024 samples" in card and "real test scans is 96.6%" in card
    assert "| Effusion | 100 | 93.0% | 95.0% | 100.0% (44) | 10.2% |" in card
    # a file from before seen_successful: that column says n/a
    assert "| Pneumothorax | 12 | 33.3% | n/a | 66.7% (3) | 0.0% |" in card and "| Mass | 0 | n/a | n/a | n/a | n/a |" in card
    warn = [line for line in card.splitlines() if line.startswith("**Treat these labels with care:**")]
    assert len(warn) == 1 and "labelled Pneumothorax, Nodule." in warn[0] and "Effusion" not in warn[0]
    # only the label the checker also misses on real scans is blamed (partly) on the checker
    blind = [line for line in card.splitlines() if line.startswith("The checker also misses")]
    assert len(blind) == 1 and blind[0].startswith("The checker also misses Pneumothorax on more than 20%")
    agree.write_text("{not json")
    assert "lco_agreement.json could not be read" in render_card(_info(arch), lco_agreement=agree)

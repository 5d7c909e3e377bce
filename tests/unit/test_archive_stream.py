"""The streaming reader: any fsspec URL, every format, each sample once across DataLoader workers and ranks,
one manifest scan per epoch, shuffle buffers, and refusal of shards that are not what the manifest says.
Consumers' own readers (``webdataset``, ``datasets``) read the WebDataset tars too."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from archive_fixtures import LABELS, RES, build_archive

import synthcxr.archive as sa
from synthcxr.archive.shard_parquet import decode_png, encode_png
from synthcxr.archive.partition import Unit, deal, quotas
from synthcxr.imaging import float_to_uint8

ALL = ("h5", "parquet", "webdataset")


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    return build_archive(tmp_path_factory.mktemp("stream") / "demo", formats=ALL)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """One sample per release shard: 16 shards, enough for whole-shard units at two ranks."""
    return build_archive(tmp_path_factory.mktemp("stream-many") / "demo", formats=("parquet",), shard_mb=1e-9)


def _manifest(arch) -> pd.DataFrame:
    return pd.read_parquet(arch["release"] / "manifest.parquet")


def _h5_pixels(arch) -> dict[str, np.ndarray]:
    out = {}
    for p in sorted((arch["release"] / "h5").glob("*.h5")):
        with h5py.File(p, "r") as f:
            out.update({s.decode(): im for s, im in zip(f["sample_id"][:], f["images"][:])})
    return out


def _copy_to_memory(release, name: str) -> str:
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in release.rglob("*"):
        if p.is_file():
            fs.pipe(f"/{name}/{p.relative_to(release).as_posix()}", p.read_bytes())
    return f"memory://{name}"


# ----------------------------------------------------------------------------------------- what comes out
@pytest.mark.parametrize("fmt", ALL)
def test_every_format_streams_exactly_the_manifest_with_its_pixels_and_labels(arch, fmt):
    man = _manifest(arch)
    px = _h5_pixels(arch)
    s = sa.stream(arch["release"], format=fmt, decode="uint8")
    items = list(s)
    assert len(s) == len(items) == len(man)
    assert [it["sample_id"] for it in items] == man["sample_id"].tolist()  # release order without shuffling
    for it, (_, row) in zip(items, man.iterrows()):
        np.testing.assert_array_equal(it["image"], px[it["sample_id"]])
        np.testing.assert_array_equal(it["labels"].numpy(), row[LABELS].to_numpy(np.float32))
    x = next(iter(sa.stream(arch["release"], format=fmt, res=8)))
    assert x["image"].shape == (1, 8, 8) and x["image"].dtype == torch.float32


def test_stream_picks_a_streaming_format_and_refuses_unknown_ones(arch):
    assert sa.stream(arch["release"]).format == "parquet"
    with pytest.raises(ValueError, match="format 'zarr' not in this release"):
        sa.stream(arch["release"], format="zarr")
    with pytest.raises(KeyError, match="unknown label"):
        sa.stream(arch["release"], require=["Hernia"])
    with pytest.raises(FileNotFoundError, match="no archive.json"):
        sa.stream(arch["work"])


def test_fsspec_memory_and_file_urls_through_dataloader_workers(arch):
    man = _manifest(arch)
    px = _h5_pixels(arch)
    for url in (_copy_to_memory(arch["release"], "rel"), f"file://{arch['release']}"):
        ds = sa.stream(url, shuffle=5, seed=2)
        dl = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
        got = {}
        for batch in dl:
            for sid, img, lab in zip(batch["sample_id"], batch["image"], batch["labels"]):
                assert sid not in got
                got[sid] = (float_to_uint8(img[0]).numpy(), lab.numpy())
        assert sorted(got) == sorted(man["sample_id"])
        for _, row in man.iterrows():
            img, lab = got[row["sample_id"]]
            np.testing.assert_array_equal(img, px[row["sample_id"]])
            np.testing.assert_array_equal(lab, row[LABELS].to_numpy(np.float32))


def test_label_filter_streams_the_matching_samples(arch):
    man = _manifest(arch)
    want = man[(man["Effusion"] == 1) & (man["Nodule"] == 0)]["sample_id"].tolist()
    s = sa.stream(arch["release"], require=["Effusion"], exclude=["Nodule"])
    assert len(s) == len(want) > 0 and [it["sample_id"] for it in s] == want
    view = sa.open(arch["release"]).filter(require=["Effusion"]).filter(exclude=["Nodule"])
    assert [it["sample_id"] for it in view.iterable_dataset()] == want


# ----------------------------------------------------------------------------------------- splitting
def test_deal_and_quotas_by_hand():
    units = [Unit(0, 0, 5, 5), Unit(1, 0, 3, 3), Unit(2, 0, 4, 4), Unit(3, 0, 1, 1)]
    # 5 -> bin0; 3 -> bin1 (empty); 4 -> bin1 (3 < 5); 1 -> bin0 (5 < 7)
    assert deal(units, 2) == [[0, 3], [1, 2]]
    assert deal(units, 1) == [[0, 1, 2, 3]]
    assert quotas([5, 3, 4], 12) == [5, 3, 4]
    assert quotas([5, 3, 4], 9) == [3, 3, 3]  # t = 3: 3 + 3 + 3
    assert quotas([5, 3, 4], 10) == [4, 3, 3]  # t = 3 leaves one, to the first bin still above it
    assert quotas([5, 0, 4], 6) == [3, 0, 3]
    assert quotas([2, 2], 0) == [0, 0]


@pytest.mark.parametrize("fmt", ALL)
@pytest.mark.parametrize("world,workers", [(2, 3), (3, 2), (4, 1)])
def test_ranks_and_workers_split_every_sample_once(arch, fmt, world, workers):
    man = _manifest(arch)
    s = sa.stream(arch["release"], format=fmt, equal_ranks=False)
    seen, per_rank = [], []
    for r in range(world):
        ids = [it["sample_id"] for w in range(workers) for it in s.partition(r, world, w, workers)]
        per_rank.append(len(ids))
        seen += ids
    assert sorted(seen) == sorted(man["sample_id"])
    assert max(per_rank) - min(per_rank) <= 1  # units are row ranges of shards here: near-equal loads


def test_equal_ranks_yield_the_same_count_and_len_tells_it(many, monkeypatch):
    s = sa.stream(many["release"], require=["Effusion"])  # 16 one-sample shards, uneven after filtering
    n = int(_manifest(many)["Effusion"].sum())
    for world in (2, 3):
        counts = [sum(1 for w in range(2) for _ in s.partition(r, world, w, 2)) for r in range(world)]
        # units of 0 or 1 kept samples leave rank loads at most 1 apart, so the common count is n // world
        assert counts == [n // world] * world
        for r in range(world):
            monkeypatch.setenv("RANK", str(r))
            monkeypatch.setenv("WORLD_SIZE", str(world))
            assert len(s) == counts[0]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert len(s) == n


def test_one_manifest_scan_per_epoch(many):
    n_groups = pq.ParquetFile(many["release"] / "manifest.parquet").num_row_groups
    assert n_groups == many["info"]["n_shards"] == 16
    s = sa.stream(many["release"], shuffle=3)
    for epoch in range(2):
        s.set_epoch(epoch)
        s.manifest_reads = 0
        ids = [it["sample_id"] for r in range(2) for w in range(3) for it in s.partition(r, 2, w, 3)]
        assert len(ids) == len(set(ids)) == 16
        assert s.manifest_reads == n_groups  # each shard's manifest rows read once, by the worker that streams it


def test_shuffle_is_seeded_and_changes_with_the_epoch(arch):
    s = sa.stream(arch["release"], shuffle=6, seed=5)
    orders = []
    for epoch in (0, 1, 0):
        s.set_epoch(epoch)
        orders.append([it["sample_id"] for it in s])
    assert orders[0] == orders[2] != orders[1]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(_manifest(arch)["sample_id"])
    assert orders[0] != _manifest(arch)["sample_id"].tolist()


_DDP = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    import synthcxr.archive as sa
    rank, world, url, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method="file://" + out + ".rdv", rank=rank, world_size=world)
    ds = sa.stream(url, shuffle=4, seed=1)  # rank and world from the process group
    dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    ids = [i for b in dl for i in b["sample_id"]]
    gathered = [None] * world
    dist.all_gather_object(gathered, ids)
    if rank == 0:
        json.dump({"ids": gathered, "len": len(ds)}, open(out, "w"))
    dist.destroy_process_group()
""")


def test_torch_distributed_ranks_each_get_their_own_equal_share(many, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_DDP)
    out = tmp_path / "out.json"
    env = {**os.environ, "SYNTHCXR_NO_PROGRESS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(many["release"]), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True) for r in range(2)]
    try:
        logs = [p.communicate(timeout=600)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    import json

    res = json.loads(out.read_text())
    a, b = res["ids"]
    assert len(a) == len(b) == res["len"] == 8 and not set(a) & set(b)
    assert sorted(a + b) == sorted(_manifest(many)["sample_id"])


# ----------------------------------------------------------------------------------------- refusing bad shards
@pytest.fixture()
def copy(arch, tmp_path):
    dst = tmp_path / "release"
    shutil.copytree(arch["release"], dst)
    return dst


@pytest.mark.parametrize("fmt,ext", [("parquet", "parquet"), ("h5", "h5")])
def test_swapped_shards_are_refused_by_their_attributes(copy, fmt, ext):
    a, b = copy / fmt / f"shard-00000.{ext}", copy / fmt / f"shard-00001.{ext}"
    tmp = copy / "swap"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    with pytest.raises(ValueError, match=rf"shard-00000\.{ext}: not the shard this release's manifest describes: attribute 'shard' is 1"):
        list(sa.stream(copy, format=fmt))


def test_swapped_tars_are_refused_at_their_first_row(copy):
    a, b = copy / "webdataset/shard-00000.tar", copy / "webdataset/shard-00001.tar"
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)
    with pytest.raises(ValueError, match=r"shard-00000\.tar: sample \S+ says shard 1 index 0, but sits at shard 0 row 0"):
        list(sa.stream(copy, format="webdataset"))


@pytest.mark.parametrize("fmt", ALL)
def test_a_shard_holding_other_ids_than_the_manifest_is_refused(copy, fmt):
    man = _manifest_of(copy)
    k = int(np.flatnonzero(man["shard"].to_numpy() == 2)[1])
    man.loc[k, "sample_id"] = "syn-99999-0000"
    man.to_parquet(copy / "manifest.parquet", index=False)
    with pytest.raises(ValueError, match=r"shard-00002\.\w+: row 1 holds sample '\S+' but the manifest lists 'syn-99999-0000'"):
        list(sa.stream(copy, format=fmt, verify_pixels=False))


def _rewrite_tar(path, change) -> None:
    """Rewrite a tar member by member, letting ``change(name, data)`` return new bytes."""
    src = io.BytesIO(path.read_bytes())
    out = io.BytesIO()
    with tarfile.open(fileobj=src, mode="r") as tin, tarfile.open(fileobj=out, mode="w") as tout:
        for m in tin.getmembers():
            data = change(m.name, tin.extractfile(m).read())
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    path.write_bytes(out.getvalue())


def test_altered_pixels_in_a_tar_fail_the_manifest_hash(copy):
    man = _manifest_of(copy)
    victim = man[man["shard"] == 1]["sample_id"].iloc[0]

    def brighten(name, data):
        if name == f"{victim}.png":
            img = decode_png(data)
            return encode_png(np.where(img < 255, img + 1, img).astype(np.uint8))
        return data

    _rewrite_tar(copy / "webdataset/shard-00001.tar", brighten)
    with pytest.raises(ValueError, match=rf"shard-00001\.tar row 0: pixels of sample '{victim}' do not hash"):
        list(sa.stream(copy, format="webdataset"))
    assert len(list(sa.stream(copy, format="webdataset", verify_pixels=False))) == len(man)  # the check is what caught it


def test_truncated_tar_is_named(copy):
    p = copy / "webdataset/shard-00002.tar"
    with tarfile.open(p) as tf:
        members = tf.getmembers()
    p.write_bytes(p.read_bytes()[: members[-1].offset])  # drop the last member
    with pytest.raises(ValueError, match=r"shard-00002\.tar"):
        list(sa.stream(copy, format="webdataset"))


def test_unsealed_release_is_refused_unless_asked(copy):
    (copy / "SHA256SUMS").unlink()
    with pytest.raises(FileNotFoundError, match="SHA256SUMS missing"):
        sa.stream(copy)
    assert len(sa.stream(copy, sealed=False)) == len(_manifest_of(copy))


def _manifest_of(release) -> pd.DataFrame:
    return pd.read_parquet(release / "manifest.parquet")


# ----------------------------------------------------------------------------------------- consumers' own readers
def test_webdataset_library_reads_the_tars(arch):
    wds = pytest.importorskip("webdataset")
    man = _manifest(arch).set_index("sample_id")
    px = _h5_pixels(arch)
    urls = sorted(str(p) for p in (arch["release"] / "webdataset").glob("*.tar"))
    ds = wds.WebDataset(urls, shardshuffle=False).decode("l8").to_tuple("__key__", "png", "json")
    items = list(ds)
    assert [k for k, _, _ in items] == man.index.tolist()
    for key, img, meta in items:
        np.testing.assert_array_equal(img, px[key])
        assert meta["sample_id"] == key and [meta["labels"][n] for n in LABELS] == man.loc[key, LABELS].tolist()
        assert meta["seed"] == int(man.loc[key, "seed"]) and (meta["shard"], meta["index"]) == (man.loc[key, "shard"], man.loc[key, "index"])
        assert np.float32(meta["probs"]["Effusion"]) == np.float32(man.loc[key, "prob_Effusion"])


def test_datasets_loads_a_webdataset_only_release_from_its_card(tmp_path):
    datasets = pytest.importorskip("datasets")
    arch = build_archive(tmp_path / "wds", formats=("webdataset",))
    rel = arch["release"]
    assert sorted(p.name for p in rel.iterdir()) == sorted(["README.md", "SHA256SUMS", "archive.json", "croissant.json", "latents.parquet",
                                                            "manifest.parquet", "webdataset"])
    man = _manifest(arch).set_index("sample_id")
    ds = datasets.load_dataset(str(rel), split="train")
    assert sorted(ds["__key__"]) == sorted(man.index)
    row = ds[0]
    assert row["json"]["labels"] == {n: int(man.loc[row["__key__"], n]) for n in LABELS}
    arc = sa.open(rel)
    assert arc.image_format == "webdataset"
    np.testing.assert_array_equal(np.asarray(row["png"]), arc.read(row["__key__"]))
    assert all(np.asarray(row["png"]).shape == (RES, RES) for row in ds.select(range(3)))

"""Multi-core writing: encoder threads in the sample job, one process per release shard in finalize, parallel
hashing in verify and seal. Every file must be byte-identical to what one worker writes, and HDF5 chunks
deflated off the HDF5 lock must equal what HDF5's own gzip filter stores."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from archive_fixtures import BATCH, LABELS, RES, build_archive

from synthcxr.archive.encode import BatchEncoder
from synthcxr.archive.sample import ArchiveConfig, sample_shard
from synthcxr.archive.shard_h5 import GZIP_LEVEL, H5ShardWriter, chunk_pixels, deflate_image, read_chunks
from synthcxr.archive.shard_parquet import decode_png, encode_png
from synthcxr.archive.verify import verify_release
from synthcxr.utils.hashing import sha256_file, sha256_files


def _images(n: int, res: int = RES, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.integers(-3, 4, (n, res, res)), axis=2)  # compressible, like radiographs
    return (smooth % 256).astype(np.uint8)


def test_deflated_chunks_are_what_the_hdf5_gzip_filter_stores(tmp_path):
    imgs = _images(7)
    labels, probs, ids = np.zeros((7, 2), np.uint8), np.zeros((7, 2), np.float32), [f"s{i}" for i in range(7)]
    with H5ShardWriter(tmp_path / "filter.h5", 7, RES, ["a", "b"], "gzip") as w:  # through h5py's gzip filter
        w.write(0, imgs, labels, probs, ids)
    with H5ShardWriter(tmp_path / "direct.h5", 7, RES, ["a", "b"], "gzip") as w:
        assert w.direct
        w.write(0, None, labels[:3], probs[:3], ids[:3], chunks=[deflate_image(im) for im in imgs[:3]])
        w.write(3, None, labels[3:], probs[3:], ids[3:], chunks=[deflate_image(im) for im in imgs[3:]])
    with h5py.File(tmp_path / "filter.h5", "r") as f, h5py.File(tmp_path / "direct.h5", "r") as g:
        assert read_chunks(f["images"], range(7)) == read_chunks(g["images"], range(7))  # the same stored bytes
        ds = g["images"]
        assert ds.compression == "gzip" and ds.compression_opts == GZIP_LEVEL
        np.testing.assert_array_equal(ds[:], imgs)  # h5py decompresses what was stored directly
        chunks = read_chunks(ds, range(7))
        for k in ("labels", "probs", "sample_id"):
            np.testing.assert_array_equal(f[k][:], g[k][:])
    for c, im in zip(chunks, imgs):
        np.testing.assert_array_equal(chunk_pixels(c, "gzip", (RES, RES)), im)


def test_h5_writer_refuses_chunks_it_cannot_store_directly(tmp_path):
    with pytest.raises(ValueError, match="lzf chunks are written by HDF5"):
        with H5ShardWriter(tmp_path / "x.h5", 1, RES, ["a"], "lzf") as w:
            w.write(0, None, np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.float32), ["s"], chunks=[b"x"])
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_batch_encoder_output_does_not_depend_on_workers(workers):
    imgs = _images(13)
    with BatchEncoder(workers, png=6, chunk="gzip") as enc:
        got = enc.submit(5, imgs).result()
    assert got.start == 5 and got.images is imgs
    assert got.pngs == [encode_png(im) for im in imgs]
    assert got.chunks == [deflate_image(im) for im in imgs]
    with BatchEncoder(workers, png=None, chunk=None) as enc:
        nothing = enc.submit(0, imgs).result()
    assert nothing.pngs is None and nothing.chunks is None


@pytest.mark.kernels
@pytest.mark.parametrize("compression", ["gzip", "lzf", "none"])
def test_sample_shard_bytes_do_not_depend_on_encoder_workers(tmp_path, compression):
    arch = build_archive(tmp_path / "a", seal=False)
    lp = arch["work"] / "latents/shard-00000.parquet"
    digests = []
    for workers in (1, 4):
        cfg = ArchiveConfig.from_section(dict(name="archive", labels=LABELS, formats=["h5", "parquet"], compression=compression, batch_size=BATCH, workers=workers))
        out = {f: tmp_path / f"w{workers}" / f"shard-00000.{f}" for f in ("h5", "parquet")}
        info = sample_shard(lp, arch["G"], out, cfg, "0" * 64)
        assert info["workers"] == workers and info["count"] == 11
        digests.append({f: sha256_file(p) for f, p in out.items()})
        with h5py.File(out["h5"], "r") as f:
            imgs = f["images"][:]
        pngs = pq.read_table(out["parquet"], columns=["image"]).column("image").combine_chunks().field("bytes").to_pylist()
        for im, png in zip(imgs, pngs):
            np.testing.assert_array_equal(decode_png(png), im)
    assert digests[0] == digests[1]


def test_webdataset_only_release_renders_parquet_working_shards(tmp_path):
    cfg = ArchiveConfig.from_section(dict(name="archive", labels=LABELS, formats=["webdataset"]))
    assert cfg.work_formats == ["parquet"]
    assert ArchiveConfig.from_section(dict(name="archive", labels=LABELS, formats=["webdataset", "h5"])).work_formats == ["h5", "parquet"]
    assert ArchiveConfig.from_section(dict(name="archive", labels=LABELS, formats=["parquet", "h5", "webdataset"])).formats == ["h5", "parquet", "webdataset"]
    with pytest.raises(ValueError, match="archive.formats"):
        ArchiveConfig.from_section(dict(name="archive", labels=LABELS, formats=["zarr"]))
    with pytest.raises(ValueError, match="archive.workers"):
        ArchiveConfig.from_section(dict(name="archive", labels=LABELS, workers=0))


def _release_digests(release) -> dict[str, str]:
    return {p.relative_to(release).as_posix(): sha256_file(p) for p in sorted(release.rglob("*"))
            if p.is_file() and p.name not in ("archive.json", "README.md", "SHA256SUMS")}


@pytest.mark.kernels
def test_finalize_in_parallel_writes_the_same_release_as_one_worker(tmp_path):
    one = build_archive(tmp_path / "one", formats=("h5", "parquet", "webdataset"), workers=1, seal=False, name="demo")
    many = build_archive(tmp_path / "many", formats=("h5", "parquet", "webdataset"), workers=3, seal=False, name="demo")
    assert one["info"]["n_shards"] >= 3
    d1, d3 = _release_digests(one["release"]), _release_digests(many["release"])
    assert d1 == d3 and any(k.startswith("webdataset/") for k in d1)
    info1 = json.loads((one["release"] / "archive.json").read_text())
    info3 = json.loads((many["release"] / "archive.json").read_text())
    assert info1["shards"] == info3["shards"] and info1["work_formats"] == ["h5", "parquet"]
    assert all(c.ok for c in verify_release(many["release"], jobs=2, sealed=False))


def test_release_h5_chunks_are_copied_as_stored(tmp_path):
    arch = build_archive(tmp_path / "a", seal=False)
    man = pd.read_parquet(arch["release"] / "manifest.parquet")
    row = man.iloc[5]
    with h5py.File(arch["work"] / f"shards/shard-{int(row['render_shard']):05d}.h5", "r") as f:
        work_chunk = read_chunks(f["images"], [int(row["render_index"])])[0]
    with h5py.File(arch["release"] / row["h5_path"], "r") as f:
        release_chunk = read_chunks(f["images"], [int(row["index"])])[0]
    assert work_chunk == release_chunk


def test_manifest_has_one_row_group_per_release_shard(tmp_path):
    arch = build_archive(tmp_path / "a", seal=False)
    pf = pq.ParquetFile(arch["release"] / "manifest.parquet")
    n = arch["info"]["n_shards"]
    assert pf.num_row_groups == n
    col = pf.schema_arrow.get_field_index("shard")
    for g in range(n):
        st = pf.metadata.row_group(g).column(col).statistics
        assert (st.min, st.max) == (g, g)
        assert pf.metadata.row_group(g).num_rows == arch["info"]["shards"][g]["count"]


def test_parallel_hashing_matches_serial(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_bytes(np.random.default_rng(i).bytes(100_000 + i))
        paths.append(p)
    assert sha256_files(paths, jobs=3) == [sha256_file(p) for p in paths] == sha256_files(paths, jobs=1)


@pytest.mark.kernels
def test_png_level_is_recorded_and_regenerate_reproduces_it(tmp_path):
    from synthcxr.archive.regenerate import regenerate_sample

    fast = build_archive(tmp_path / "fast", png_level=1, formats=("parquet", "webdataset"))
    default = build_archive(tmp_path / "default", formats=("parquet",))
    assert fast["info"]["png_compress_level"] == 1 and default["info"]["png_compress_level"] == 6
    man = pd.read_parquet(fast["release"] / "manifest.parquet")
    a = pq.read_table(fast["release"] / "parquet/shard-00000.parquet").column("image").combine_chunks().field("bytes").to_pylist()
    b = pq.read_table(default["release"] / "parquet/shard-00000.parquet").column("image").combine_chunks().field("bytes").to_pylist()
    assert a[0] != b[0] and a[0] == encode_png(decode_png(b[0]), 1)  # same pixels, level-1 bytes
    assert json.loads(pq.read_schema(fast["release"] / "parquet/shard-00000.parquet").metadata[b"synthcxr"])["png_compress_level"] == 1
    res = regenerate_sample(fast["release"], man["sample_id"].iloc[2], fast["G"])
    assert res.identical and set(res.matches) == {"parquet", "webdataset"}
    assert all(c.ok for c in verify_release(fast["release"]))


def test_working_parquet_row_groups_are_sized_by_png_bytes(tmp_path):
    from synthcxr.archive.shard_parquet import ParquetShardWriter

    imgs = _images(40, res=32, seed=3)
    pngs = [encode_png(im) for im in imgs]
    limit = sum(len(p) for p in pngs[:8])  # about 8 images a group, whole writes of 4
    lab, prob = np.zeros((40, 2), np.int8), np.zeros((40, 2), np.float32)
    with ParquetShardWriter(tmp_path / "s.parquet", 40, ["a", "b"], row_group_bytes=limit) as w:
        for s in range(0, 40, 4):
            w.write(s, pngs[s : s + 4], lab[s : s + 4], prob[s : s + 4], [f"x{i}" for i in range(s, s + 4)], range(s, s + 4))
    pf = pq.ParquetFile(tmp_path / "s.parquet")
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    assert sum(sizes) == 40 and all(k % 4 == 0 for k in sizes) and 1 < len(sizes) < 10
    start = 0
    for k in sizes[:-1]:  # every group but the last reached the byte limit, and only with its last write
        got = sum(len(p) for p in pngs[start : start + k])
        assert got >= limit > got - sum(len(p) for p in pngs[start + k - 4 : start + k])
        start += k
    assert pq.read_table(tmp_path / "s.parquet").column("image").combine_chunks().field("bytes").to_pylist() == pngs
    with pytest.raises(ValueError, match="not both"):
        ParquetShardWriter(tmp_path / "t.parquet", 1, ["a"], row_group_rows=1, row_group_bytes=1)

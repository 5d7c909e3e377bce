"""The one dataset protocol (synthcxr.imagesets): items, composition and every source, against direct reads
of the files (h5py, pyarrow) and hand computations."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from synthcxr.archive import open_archive
from synthcxr.archive.shard_h5 import H5ShardWriter
from synthcxr.archive.shard_parquet import ParquetShardWriter, encode_png
from synthcxr.data.store import PreparedDataset
from synthcxr.imagesets import ITEM_KEYS, ArrayImages, merge
from synthcxr.validate.common import real_images
from synthcxr.validate.shards import WorkingShards

NAMES = ["Effusion", "Nodule", "No_Finding"]


def arrays(n=12, res=8, seed=0, origin="<a>"):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, res, res), dtype=np.uint8)
    labels = rng.integers(0, 2, (n, len(NAMES))).astype(np.float32)
    return imgs, labels, ArrayImages(imgs, labels, NAMES, ids=[f"x{i}" for i in range(n)],
                                     groups=[f"p{i // 3}" for i in range(n)], origin=origin)


def test_item_is_the_streams_dict_with_the_project_pixel_convention():
    imgs, labels, s = arrays()
    item = s[4]
    assert tuple(item) == ITEM_KEYS and item["sample_id"] == "x4"
    np.testing.assert_array_equal(item["image"][0].numpy(), imgs[4].astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_array_equal(item["labels"].numpy(), labels[4])
    assert s[-1]["sample_id"] == "x11"
    with pytest.raises(IndexError, match="<a>: index 12"):
        s[12]


def test_resize_on_read_is_area_averaging_in_items_and_batches():
    imgs, _, s = arrays()
    half = s.at(4)
    ref = imgs.astype(np.float64).reshape(12, 4, 2, 4, 2).mean(axis=(2, 4)) / 127.5 - 1.0
    np.testing.assert_allclose(half[2]["image"][0].numpy(), ref[2], atol=1e-6)
    # batches go through float and back to uint8 (round half to even)
    exact = (ref + 1.0) * 127.5
    diff = half.read().astype(int) - np.round(exact).astype(int)
    assert np.abs(diff).max() <= 1 and np.all(np.abs(exact[diff != 0] % 1 - 0.5) < 1e-3)  # only float32 ties differ
    got = list(half.batches(5))
    assert [len(b["sample_id"]) for b in got] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in got]), half.read())
    assert half.at(None).read().shape == (12, 8, 8)


def test_composition_matches_pandas_selection():
    imgs, labels, s = arrays(n=40, seed=3)
    frame = pd.DataFrame(labels, columns=NAMES).assign(id=[f"x{i}" for i in range(40)])
    f = s.filter(require=["Effusion"], exclude=["Nodule"])
    want = frame[(frame.Effusion == 1) & (frame.Nodule != 1)]
    assert list(f.ids) == want["id"].tolist()
    np.testing.assert_array_equal(f.read(), imgs[want.index.to_numpy()])
    r = f.relabel(["No_Finding", "Effusion"])
    np.testing.assert_array_equal(r.labels, want[["No_Finding", "Effusion"]].to_numpy(np.float32))
    np.testing.assert_array_equal(r[1]["labels"].numpy(), want[["No_Finding", "Effusion"]].to_numpy(np.float32)[1])
    # a view of a view reads straight from the source, in the order asked
    v = r.subset([3, 0, 3])
    assert v.base is s and list(v.ids) == [r.ids[3], r.ids[0], r.ids[3]]
    np.testing.assert_array_equal(v.read(), imgs[want.index.to_numpy()[[3, 0, 3]]])
    assert list(s.select_ids(["x7", "x2"]).groups) == ["p2", "p0"]
    with pytest.raises(KeyError, match=r"<a>: sample id\(s\) \['nope'\]"):
        s.select_ids(["x1", "nope"])
    with pytest.raises(KeyError, match=r"<a>: no label\(s\) \['Mass'\]"):
        s.relabel(["Mass"])
    with pytest.raises(KeyError, match="Mass"):
        s.filter(require=["Mass"])


def test_merge_keeps_order_groups_and_each_parts_own_reading():
    ia, la, a = arrays(n=5, seed=1, origin="A")
    ib, lb, b = arrays(n=7, seed=2, origin="B")
    b = ArrayImages(ib, lb, NAMES, ids=[f"y{i}" for i in range(7)], groups=[f"q{i}" for i in range(7)], origin="B")
    m = merge(a.at(4), b.at(4))
    assert len(m) == 12 and m.origin == "A + B" and m.res == 4
    assert list(m.ids) == [f"x{i}" for i in range(5)] + [f"y{i}" for i in range(7)]
    np.testing.assert_array_equal(m.labels, np.concatenate([la, lb]))
    np.testing.assert_array_equal(m.read([6, 1]), np.stack([b.at(4).read([1])[0], a.at(4).read([1])[0]]))
    torch.testing.assert_close(m[6]["image"], b.at(4)[1]["image"], rtol=0, atol=0)
    assert list(m.groups[4:6]) == ["p1", "q0"]
    assert merge(a) is a
    with pytest.raises(ValueError, match="relabel them to one label space"):
        merge(a, b.relabel(["Nodule", "Effusion", "No_Finding"]))


def test_prepared_images_against_h5py_and_through_dataloader_workers(tiny_prepared):
    prep = PreparedDataset(tiny_prepared)
    test = prep.split("test")
    s = prep.images("test", 16, NAMES[:2])
    with h5py.File(prep.h5_path, "r") as f:
        direct = f["images/16"][:][test["row"].to_numpy()]
    np.testing.assert_array_equal(s.read(), direct)
    assert list(s.ids) == test["image_id"].astype(str).tolist()
    assert list(s.groups) == test["patient_key"].tolist()
    loaded = list(torch.utils.data.DataLoader(s, batch_size=7, num_workers=2))  # h5 handles reopen per worker
    x = torch.cat([b["image"] for b in loaded])
    torch.testing.assert_close(x[:, 0], torch.from_numpy(direct.astype(np.float32) / 127.5 - 1.0), rtol=0, atol=0)
    assert sum((b["sample_id"] for b in loaded), []) == list(s.ids)
    mem = s.in_memory()
    np.testing.assert_array_equal(mem.read(), direct)
    assert mem.origin == s.origin and list(mem.groups) == list(s.groups)
    with pytest.raises(KeyError, match="no pyramid level 64"):
        prep.images("test", 64)


def test_real_images_reads_rows_in_order_from_the_nearest_level(tiny_prepared):
    prep = PreparedDataset(tiny_prepared)
    rows = np.array([17, 3, 17, 200])
    with h5py.File(prep.h5_path, "r") as f:
        top = f["images/32"][:][rows]
    got = real_images(prep, rows, 16).read()
    ref = np.round((top.astype(np.float64).reshape(4, 16, 2, 16, 2).mean(axis=(2, 4)))).astype(np.uint8)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1  # float32 averaging, round half to even
    np.testing.assert_array_equal(real_images(prep, rows, 32).read(), top)
    with pytest.raises(KeyError, match=r"no row\(s\) \[99999\]"):
        real_images(prep, np.array([99999]), 16)


def test_archive_images_match_the_stream_item_for_item(tmp_path):
    from archive_fixtures import write_release

    imgs, labels, _ = arrays(n=10, res=16, seed=5)
    root = write_release(tmp_path / "rel", imgs, labels.astype(np.uint8), NAMES)
    arc = open_archive(root)
    ds = arc.torch_dataset(res=8)
    streamed = {it["sample_id"]: it for it in arc.iterable_dataset(res=8)}
    assert set(streamed) == set(ds.ids)
    for i in range(len(ds)):
        item = ds[i]
        torch.testing.assert_close(item["image"], streamed[item["sample_id"]]["image"], rtol=0, atol=0)
        torch.testing.assert_close(item["labels"], torch.as_tensor(streamed[item["sample_id"]]["labels"]), rtol=0, atol=0)
    np.testing.assert_array_equal(ds.at(None).read([7, 2, 7]), imgs[[7, 2, 7]])  # any order, repeats
    eff = arc.filter(require=["Effusion"]).torch_dataset()
    assert list(eff.ids) == list(ds.filter(require=["Effusion"]).ids)


def _working_shards(folder, imgs, ids, per_shard, fmt):
    paths = []
    for k, s in enumerate(range(0, len(imgs), per_shard)):
        part, pid = imgs[s : s + per_shard], ids[s : s + per_shard]
        n = len(part)
        lab = np.zeros((n, len(NAMES)), np.uint8)
        if fmt == "h5":
            path = folder / f"shard-{k:05d}.h5"
            with H5ShardWriter(path, n, part.shape[-1], NAMES) as w:
                w.write(0, part, lab, np.zeros((n, len(NAMES)), np.float32), pid)
        else:
            path = folder / f"shard-{k:05d}.parquet"
            with ParquetShardWriter(path, n, NAMES) as w:
                w.write(0, [encode_png(im) for im in part], lab, np.zeros((n, len(NAMES)), np.float32), pid, list(range(n)))
        paths.append(path)
    return paths


@pytest.mark.parametrize("fmt", ["h5", "parquet"])
def test_working_shards_batch_within_a_shard_and_read_any_sample(tmp_path, fmt):
    imgs, _, _ = arrays(n=11, res=8, seed=7)
    ids = [f"s{i:03d}" for i in range(11)]
    paths = _working_shards(tmp_path, imgs, ids, 5, fmt)
    ws = WorkingShards(paths)
    assert list(ws.ids) == ids and ws.label_names == []
    got = list(ws.batches(3))
    assert [b["sample_id"] for b in got] == [ids[0:3], ids[3:5], ids[5:8], ids[8:10], ids[10:11]]  # never across shards
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in got]), imgs)
    np.testing.assert_array_equal(ws.select_ids(["s009", "s001", "s009", "s006"]).read(), imgs[[9, 1, 9, 6]])
    with pytest.raises(KeyError, match="s999"):
        ws.select_ids(["s999"])


def test_working_shards_prefer_hdf5_when_both_formats_exist(tmp_path):
    imgs, _, _ = arrays(n=4, res=8, seed=9)
    ids = [f"s{i}" for i in range(4)]
    (tmp_path / "h").mkdir()
    (tmp_path / "p").mkdir()
    h5 = _working_shards(tmp_path / "h", imgs, ids, 4, "h5")
    pq_paths = _working_shards(tmp_path / "p", imgs, ids, 4, "parquet")
    both = [pq_paths[0].rename(h5[0].with_suffix(".parquet")), h5[0]]
    assert WorkingShards(both).paths == [h5[0]]
    with pytest.raises(ValueError, match="not an archive shard"):
        WorkingShards([tmp_path / "x.csv"])

"""The release contract: plain readers get exactly the released samples, and every breach is caught.

Each way a release can disagree with itself (an edited label, a flipped byte, a swapped or foreign shard,
a missing seal, a corrupt archive.json, leftovers of a killed writer) is made on a copy of a real release
and must be named by ``verify`` and refused by ``synthcxr.archive.open`` / its reader.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from archive_fixtures import LABELS, build_archive, released_rows

from synthcxr.archive import open as open_archive
from synthcxr.archive import stream
from synthcxr.archive.layout import shard_path_problem
from synthcxr.archive.seal import seal_release, write_sums
from synthcxr.archive.verify import verify_release
from synthcxr.cli import main as cli_main


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    return build_archive(tmp_path_factory.mktemp("contract") / "demo")


@pytest.fixture()
def copy(arch, tmp_path):
    """A private copy of the sealed release to break."""
    dst = tmp_path / "release"
    shutil.copytree(arch["release"], dst)
    return dst


def _resign(root) -> None:
    """Recompute SHA256SUMS as a tamperer would, so only the content checks can notice."""
    listed = [line.split("  ", 1)[1] for line in (root / "SHA256SUMS").read_text().splitlines()]
    write_sums(root, listed)


def _failures(root) -> dict[str, str]:
    return {c.path: c.reason for c in verify_release(root) if not c.ok}


# ----------------------------------------------------------------------------------------- plain readers
def test_plain_h5py_pyarrow_pandas_and_datasets_see_exactly_the_manifest(arch):
    datasets = pytest.importorskip("datasets")
    release = arch["release"]
    man = pd.read_parquet(release / "manifest.parquet").set_index("sample_id")
    expect = released_rows(arch).set_index("sample_id")
    withheld = set(arch["rows"]["sample_id"]) - set(expect.index)
    assert len(withheld) > 3 and set(man.index) == set(expect.index)

    h5_ids, h5_labels = [], []
    for p in sorted((release / "h5").glob("*.h5")):
        with h5py.File(p, "r") as f:
            h5_ids += [s.decode() for s in f["sample_id"][:]]
            h5_labels.append(f["labels"][:])
    assert h5_ids == man.index.tolist()
    np.testing.assert_array_equal(np.concatenate(h5_labels), man.loc[h5_ids, LABELS].to_numpy())

    table = pq.read_table(release / "parquet")  # the whole folder, no arguments
    df = pd.read_parquet(release / "parquet")
    for ids, frame in ((table.column("sample_id").to_pylist(), table.to_pandas()), (df["sample_id"].tolist(), df)):
        assert sorted(ids) == sorted(man.index) and not withheld & set(ids)
        got = frame.set_index("sample_id").loc[man.index, LABELS].to_numpy()
        np.testing.assert_array_equal(got, man[LABELS].to_numpy())

    ds = datasets.load_dataset(str(release), split="train")
    assert sorted(ds["sample_id"]) == sorted(man.index) and len(ds) == len(man)
    rows = ds.to_pandas().set_index("sample_id").loc[man.index]
    np.testing.assert_array_equal(rows[LABELS].to_numpy(), man[LABELS].to_numpy())
    first = ds[0]
    img = np.asarray(first["image"])
    np.testing.assert_array_equal(img, open_archive(release).read(first["sample_id"]))


def test_coreutils_sha256sum_accepts_the_seal_and_it_covers_every_file(arch):
    release = arch["release"]
    res = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=release, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    listed = {line.split("  ", 1)[1] for line in (release / "SHA256SUMS").read_text().splitlines()}
    present = {p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert listed == present and {"README.md", "latents.parquet", "manifest.parquet", "archive.json"} <= listed
    assert not any(rel.startswith(("work/", "shards/", "latents/")) for rel in listed)  # nothing of the working area


# ----------------------------------------------------------------------------------------- tampering
def test_edited_label_in_the_manifest_is_named_even_with_resigned_sums(copy):
    man = pd.read_parquet(copy / "manifest.parquet")
    row = 3
    man.loc[row, "Effusion"] = 1 - man.loc[row, "Effusion"]
    man.to_parquet(copy / "manifest.parquet", index=False)
    _resign(copy)
    bad = _failures(copy)
    sid, shard, index = man.loc[row, "sample_id"], int(man.loc[row, "shard"]), int(man.loc[row, "index"])
    assert f"/labels row {index} (sample {sid}) Effusion" in bad[f"h5/shard-{shard:05d}.h5"]
    assert f"label columns row {index} (sample {sid}) Effusion" in bad[f"parquet/shard-{shard:05d}.parquet"]
    assert cli_main(["verify", "-q", str(copy)]) == 1


def test_flipped_byte_in_h5_labels_is_named_even_with_resigned_sums(copy):
    with h5py.File(copy / "h5/shard-00001.h5", "r+") as f:
        f["labels"][0, 2] ^= 1
        sid = f["sample_id"][0].decode()
    _resign(copy)
    bad = _failures(copy)
    assert list(bad) == ["h5/shard-00001.h5"]
    assert f"/labels row 0 (sample {sid}) {LABELS[2]}" in bad["h5/shard-00001.h5"]


def test_edited_pixels_in_both_formats_are_caught_by_the_manifest_pixel_hashes(copy, arch):
    """A consistent forgery (same pixels in HDF5 and Parquet, resigned) still disagrees with the manifest."""
    from synthcxr.archive.shard_parquet import encode_png

    with h5py.File(copy / "h5/shard-00000.h5", "r+") as f:
        img = f["images"][1]
        img[0, 0] ^= 0xFF
        f["images"][1] = img
    t = pq.read_table(copy / "parquet/shard-00000.parquet")
    col = t.column("image").to_pylist()
    col[1] = {"bytes": encode_png(img), "path": col[1]["path"]}
    import pyarrow as pa

    t = t.set_column(t.schema.get_field_index("image"), t.schema.field("image"), pa.array(col, t.schema.field("image").type))
    pq.write_table(t, copy / "parquet/shard-00000.parquet")
    _resign(copy)
    bad = _failures(copy)
    assert "pixels (sha256) row 1" in bad["h5/shard-00000.h5"] and "pixels (sha256) row 1" in bad["parquet/shard-00000.parquet"]


def test_checksum_mismatch_and_truncation_are_reported_per_file(copy, capsys):
    p = copy / "h5/shard-00001.h5"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    q = copy / "parquet/shard-00002.parquet"
    q.write_bytes(q.read_bytes()[: q.stat().st_size * 2 // 3])
    assert cli_main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "FAILED h5/shard-00001.h5: checksum mismatch" in out and "FAILED parquet/shard-00002.parquet: checksum mismatch" in out
    assert "OK     h5/shard-00000.h5" in out
    _resign(copy)
    bad = _failures(copy)
    assert "parquet/shard-00002.parquet" in bad  # structure: the truncated file does not even open


# ----------------------------------------------------------------------------------------- path columns
@pytest.mark.parametrize("fmt, evil", [
    ("h5", "../../../../etc/passwd"),          # leaves the release
    ("h5", "/etc/passwd"),                     # absolute
    ("parquet", "parquet/shard-00000.parquet"),  # inside, but another shard's file for most rows
])
def test_a_path_column_that_is_not_the_canonical_shard_path_is_refused(copy, fmt, evil):
    man = pd.read_parquet(copy / "manifest.parquet")
    man[f"{fmt}_path"] = evil
    man.to_parquet(copy / "manifest.parquet", index=False)
    _resign(copy)
    bad = _failures(copy)
    assert f"column {fmt}_path row" in bad["manifest.parquet"] and repr(evil) in bad["manifest.parquet"]
    assert cli_main(["verify", "-q", str(copy)]) == 1
    with pytest.raises(ValueError, match=f"column {fmt}_path row .*Refusing to follow"):
        open_archive(copy)
    with pytest.raises(ValueError, match=f"column {fmt}_path row .*Refusing to stream"):
        list(stream(copy, format=fmt))


def test_a_shard_file_in_archive_json_outside_the_release_is_refused(copy):
    info = json.loads((copy / "archive.json").read_text())
    info["shards"][1]["files"]["h5"] = "../../../../etc/passwd"
    (copy / "archive.json").write_text(json.dumps(info))
    _resign(copy)
    bad = _failures(copy)
    assert "shards[1].files.h5: '../../../../etc/passwd' leaves the release through '..'" in bad["archive.json"]
    for reader in (open_archive, lambda p: stream(p, format="h5")):
        with pytest.raises(ValueError, match=r"shards\[1\]\.files\.h5.*Refusing"):
            reader(copy)


def test_shard_path_problem_names_each_way_a_path_goes_wrong():
    assert shard_path_problem("h5/shard-00003.h5", 3, "h5") is None
    assert "absolute" in shard_path_problem("/work/h5/shard-00003.h5", 3, "h5")
    assert "absolute" in shard_path_problem("C:\\x\\shard-00003.h5", 3, "h5")
    assert "'..'" in shard_path_problem("h5/../h5/shard-00003.h5", 3, "h5")
    assert "'..'" in shard_path_problem("h5\\..\\..\\x", 3, "h5")
    assert "canonical" in shard_path_problem("h5/shard-00004.h5", 3, "h5")
    assert "'webdataset/shard-00003.tar'" in shard_path_problem("webdataset/x.tar", 3, "webdataset")


# ----------------------------------------------------------------------------------------- swapped and foreign shards
def test_swapped_shards_are_refused_by_the_reader_and_named_by_verify(copy):
    a, b = copy / "h5/shard-00000.h5", copy / "h5/shard-00001.h5"
    tmp = copy / "swap"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    _resign(copy)
    arc = open_archive(copy)
    first = arc.manifest[arc.manifest["shard"] == 0]["sample_id"].iloc[0]
    with pytest.raises(ValueError, match=r"shard-00000\.h5: not the shard this release's manifest describes: attribute 'shard' is 1"):
        arc.read(first)
    with pytest.raises(ValueError, match="attribute 'shard'"):
        list(arc.iterable_dataset())
    bad = _failures(copy)
    assert "attribute 'shard' is 1 but archive.json says 0" in bad["h5/shard-00000.h5"]
    assert "sample_id at index 0" in bad["h5/shard-00000.h5"]


def test_a_shard_of_another_archive_is_refused(copy, tmp_path):
    other = build_archive(tmp_path / "other", resolution=32, seed=7, name="demo")
    shutil.copy(other["release"] / "parquet/shard-00001.parquet", copy / "parquet/shard-00001.parquet")
    shutil.copy(other["release"] / "h5/shard-00001.h5", copy / "h5/shard-00001.h5")
    _resign(copy)
    arc = open_archive(copy)
    sid = arc.manifest[arc.manifest["shard"] == 1]["sample_id"].iloc[0]
    with pytest.raises(ValueError, match="attribute 'resolution' is 32 but archive.json says 16") as exc:
        arc.read(sid)
    assert "generator_sha256" in str(exc.value)
    pq_only = open_archive(copy)
    pq_only.image_format = "parquet"
    with pytest.raises(ValueError, match="resolution"):
        list(pq_only.iter_batches())
    bad = _failures(copy)
    assert "resolution" in bad["h5/shard-00001.h5"] and "resolution" in bad["parquet/shard-00001.parquet"]


# ----------------------------------------------------------------------------------------- seal and archive.json
def test_open_refuses_an_unsealed_release(copy):
    (copy / "SHA256SUMS").unlink()
    with pytest.raises(FileNotFoundError, match="SHA256SUMS missing: the release is not sealed"):
        open_archive(copy)
    assert len(open_archive(copy, sealed=False)) > 0  # what the validation rules use before sealing
    assert "SHA256SUMS" in _failures(copy)


def test_corrupt_archive_json_is_named(copy, capsys):
    (copy / "archive.json").write_text('{"format_version": 2, "name": ')
    with pytest.raises(ValueError, match=r"archive\.json: not valid JSON"):
        open_archive(copy)
    assert cli_main(["verify", str(copy)]) == 1
    assert "archive.json: not valid JSON" in capsys.readouterr().out
    (copy / "archive.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ValueError, match="format_version 1; this synthcxr reads releases of format 2"):
        open_archive(copy)


def test_opening_the_archive_folder_points_at_its_release(arch):
    with pytest.raises(FileNotFoundError, match="the release is .*release"):
        open_archive(arch["root"])


def test_stray_and_temporary_files_fail_verify_and_the_next_seal_removes_leftovers(copy, arch):
    (copy / "parquet/.tmp-shard-00003.parquet-abc12345.partial").write_bytes(b"partial")
    (copy / ".tmp-SHA256SUMS-xyz12345.partial").write_bytes(b"partial")
    (copy / "notes.txt").write_text("hello")
    bad = _failures(copy)
    assert "temporary file of an interrupted writer" in bad["parquet/.tmp-shard-00003.parquet-abc12345.partial"]
    assert "temporary file" in bad[".tmp-SHA256SUMS-xyz12345.partial"]
    assert "not part of this release" in bad["notes.txt"]
    assert sorted(p.name for p in copy.glob("parquet/*.parquet")) == sorted(p.name for p in arch["release"].glob("parquet/*.parquet"))
    (copy / "notes.txt").unlink()
    with pytest.raises(ValueError, match="refusing to seal"):
        seal_release(copy)  # a leftover inside a shard folder is not the seal's to judge away
    (copy / "parquet/.tmp-shard-00003.parquet-abc12345.partial").unlink()
    (copy / ".tmp-SHA256SUMS-xyz12345.partial").write_bytes(b"partial")
    seal_release(copy, memorization=arch["mem"])  # writing SHA256SUMS removes its own dead writer's temporary
    assert not list(copy.glob(".tmp-*")) and all(c.ok for c in verify_release(copy))


def test_an_hdf5_only_release_loads_with_datasets_too(tmp_path):
    datasets = pytest.importorskip("datasets")
    a = build_archive(tmp_path / "h5only", formats=("h5",), gate=False)
    man = pd.read_parquet(a["release"] / "manifest.parquet")
    ds = datasets.load_dataset(str(a["release"]), split="train")  # the card points the hdf5 builder at h5/*.h5
    assert ds["sample_id"] == man["sample_id"].tolist()
    np.testing.assert_array_equal(np.array(ds["labels"]), man[LABELS].to_numpy())
    np.testing.assert_array_equal(np.array(ds[3]["images"], dtype=np.uint8), open_archive(a["release"]).read(man["sample_id"].iloc[3]))

"""Reader-study kit: balance, anonymity (names, PNG chunks, sizes, times), seeded determinism, key apart."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from synthcxr.data.store import PreparedDataset
from synthcxr.reader_study import sources as srcmod
from synthcxr.reader_study.cli import cli
from synthcxr.reader_study.kit import ReaderStudyConfig, build_kit, build_study
from synthcxr.reader_study.sources import array_source, png_folder_source

RES = 16


def fakes(n=30, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.random((n, RES, RES)) * 255).astype(np.uint8)


def build(tmp, prepared, seed=3, n_real=8, n_fake=8, source=None, level=0):
    cfg = ReaderStudyConfig.from_section(dict(n_real=n_real, n_fake=n_fake, seed=seed, labels=["Effusion", "No_Finding"],
                            png_compress_level=level))
    src = source if source is not None else array_source(fakes(), [f"sample-{i}" for i in range(30)])
    key = build_study(prepared, src, tmp / "reader_kit", tmp / "answer_key" / "key.csv", cfg)
    return key, tmp / "reader_kit", tmp / "answer_key" / "key.csv"


def png_chunks(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append(data[pos + 4 : pos + 8].decode("ascii"))
        pos += 12 + length
    return out


def manifest(kit: Path) -> dict:
    html = (kit / "index.html").read_text()
    m = re.search(r"const STUDY = (\{.*?\});\n", html)
    assert m, "inline study manifest not found"
    return json.loads(m.group(1))


def test_balance_layout_and_key_apart(tmp_path, tiny_prepared):
    key, kit, key_path = build(tmp_path, tiny_prepared)
    assert sorted(p.name for p in kit.iterdir()) == ["README.txt", "images", "index.html"]
    assert not key_path.is_relative_to(kit) and not any(kit.rglob("*.csv"))
    on_disk = pd.read_csv(key_path)
    assert list(on_disk.columns) == ["image", "truth", "source"]
    assert (on_disk["truth"] == "real").sum() == 8 and (on_disk["truth"] == "fake").sum() == 8
    # the organiser's side states what 16 images a reader can show (and never enters the kit)
    design = json.loads((key_path.parent / "design.json").read_text())
    assert design["images_per_reader"] == 16 and design["readers"] == 3 and design["correct_needed_per_reader"] == 13
    assert design["readers_needed"] * 16 >= design["answers_needed"] and not any(kit.rglob("design.json"))
    assert sorted(on_disk["image"]) == sorted(p.name for p in (kit / "images").iterdir())
    pd.testing.assert_frame_equal(on_disk, key)
    # reals come from the test split only, fakes from the given source ids
    ds = PreparedDataset(tiny_prepared)
    assert set(on_disk.loc[on_disk.truth == "real", "source"]) <= set(ds.split("test")["image_id"])
    assert set(on_disk.loc[on_disk.truth == "fake", "source"]) <= {f"sample-{i}" for i in range(30)}
    # shuffled: the truth sequence is not grouped by origin
    assert list(on_disk["truth"]) != sorted(on_disk["truth"])
    with pytest.raises(ValueError, match="inside the reader kit"):
        build_kit(fakes(2), ["a", "b"], fakes(2), ["c", "d"], tmp_path / "k2", tmp_path / "k2" / "key.csv",
                  ReaderStudyConfig.from_section(dict(labels=[], n_real=2, n_fake=2)))


def test_anonymity_names_metadata_sizes_times(tmp_path, tiny_prepared):
    key, kit, _ = build(tmp_path, tiny_prepared)
    files = sorted((kit / "images").iterdir())
    assert [p.name for p in files] == [f"img_{i:04d}.png" for i in range(1, 17)]
    sizes = {p.stat().st_size for p in files}
    assert len(sizes) == 1, f"byte sizes differ: {sizes}"
    assert len({p.stat().st_mtime for p in [*files, kit / "index.html", kit / "README.txt"]}) == 1
    for p in files:
        data = p.read_bytes()
        assert png_chunks(data) == ["IHDR", "IDAT", "IEND"], p.name  # no tEXt/tIME/gAMA/pHYs
        with Image.open(p) as im:
            assert im.mode == "L" and im.size == (RES, RES) and not im.info
    # nothing in the kit mentions a source id or the truth of an image
    text = "\n".join((kit / n).read_text() for n in ("index.html", "README.txt"))
    for src in key["source"]:
        assert src not in text
    m = manifest(kit)
    assert [e["name"] for e in m["images"]] == [p.name for p in files]
    assert all(set(e) == {"name", "src"} for e in m["images"])
    import base64

    for e, p in zip(m["images"], files):
        assert base64.b64decode(e["src"].split(",", 1)[1]) == p.read_bytes()
    assert m["labels"] == ["Effusion", "No_Finding"] and m["resolution"] == RES


def test_real_images_area_resized_from_top_level(tmp_path, tiny_prepared):
    key, kit, _ = build(tmp_path, tiny_prepared)
    ds = PreparedDataset(tiny_prepared)
    table = ds.table.set_index("image_id")
    fake_arr = fakes()
    for _, row in key.iterrows():
        px = np.asarray(Image.open(kit / "images" / row["image"]))
        if row["truth"] == "real":
            top = ds.read_images(32, np.array([table.loc[row["source"], "row"]]))[0].astype(float)
            expected = top.reshape(RES, 2, RES, 2).mean(axis=(1, 3))
            assert np.abs(px.astype(float) - expected).max() <= 0.5 + 1e-6
        else:
            assert np.array_equal(px, fake_arr[int(row["source"].split("-")[1])])


def test_seeded_determinism(tmp_path, tiny_prepared):
    k1, kit1, key1 = build(tmp_path / "a", tiny_prepared, seed=5)
    k2, kit2, key2 = build(tmp_path / "b", tiny_prepared, seed=5)
    k3, _, _ = build(tmp_path / "c", tiny_prepared, seed=6)
    assert key1.read_bytes() == key2.read_bytes()
    for p in sorted(kit1.rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (kit2 / p.relative_to(kit1)).read_bytes(), p.name
    assert not k1.equals(k3)
    # rebuilding in place replaces the kit completely and leaves no temporary folders
    build(tmp_path / "a", tiny_prepared, seed=6, n_real=3, n_fake=3)
    assert len(list((kit1 / "images").iterdir())) == 6
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["answer_key", "reader_kit"]


def test_compressed_pngs_keep_pixels(tmp_path, tiny_prepared):
    key, kit, _ = build(tmp_path, tiny_prepared, level=9)
    src = fakes()
    row = key[key.truth == "fake"].iloc[0]
    assert np.array_equal(np.asarray(Image.open(kit / "images" / row["image"])), src[int(row["source"].split("-")[1])])


def test_png_folder_source_and_cli_build(tmp_path, tiny_prepared, capsys):
    folder = tmp_path / "gen"
    folder.mkdir()
    arr = fakes(10)
    for i, a in enumerate(arr):
        Image.fromarray(a).save(folder / f"gen{i:03d}.png")
    src = png_folder_source(folder)
    assert list(src.ids) == [f"gen{i:03d}" for i in range(10)]
    assert np.array_equal(src.select_ids(["gen004"]).read()[0], arr[4])
    out = tmp_path / "study"
    rc = cli(["build", "--prepared", tiny_prepared, "--pngs", str(folder), "--out", str(out),
              "--n-real", "5", "--n-fake", "5", "--seed", "1", "--labels", "Nodule"])
    assert rc == 0, capsys.readouterr().err
    key = pd.read_csv(out / "answer_key" / "key.csv")
    assert len(key) == 10 and set(key.loc[key.truth == "fake", "source"]) <= set(src.ids)
    assert manifest(out / "reader_kit")["labels"] == ["Nodule"]


def test_build_study_reads_an_archive_folder(tmp_path, tiny_prepared):
    from archive_fixtures import write_release

    arr = fakes(12)
    ids = [f"s{i:03d}" for i in range(12)]
    arc_dir = write_release(tmp_path / "archive", arr, np.tile([0, 1], (12, 1)), ["Effusion", "No_Finding"], ids, sealed=False)
    cfg = ReaderStudyConfig.from_section(dict(labels=[], n_real=4, n_fake=4, seed=0))
    key = build_study(tiny_prepared, arc_dir, tmp_path / "s" / "reader_kit", tmp_path / "s" / "key" / "key.csv", cfg)
    fake_rows = key[key.truth == "fake"]
    assert len(fake_rows) == 4
    for _, row in fake_rows.iterrows():
        px = np.asarray(Image.open(tmp_path / "s" / "reader_kit" / "images" / row["image"]))
        assert np.array_equal(px, arr[ids.index(str(row["source"]))])


def test_bad_inputs(tmp_path, tiny_prepared):
    n_test = len(PreparedDataset(tiny_prepared).split("test"))
    with pytest.raises(ValueError, match=r"labels\.parquet: test split has .* n_real"):
        build(tmp_path / "a", tiny_prepared, n_real=n_test + 1)
    with pytest.raises(ValueError, match="only 30 generated images"):
        build(tmp_path / "b", tiny_prepared, n_fake=31)
    big = np.zeros((4, 64, 64), np.uint8)
    with pytest.raises(ValueError, match="below the generated resolution 64"):
        build(tmp_path / "c", tiny_prepared, n_fake=2, source=array_source(big))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mixed / "b.png")
    with pytest.raises(ValueError, match="differ in size"):
        build(tmp_path / "d", tiny_prepared, n_fake=2, source=png_folder_source(mixed))
    with pytest.raises(ValueError, match="png_compress_level"):
        ReaderStudyConfig.from_section(dict(labels=[], png_compress_level=12))
    with pytest.raises(FileNotFoundError, match="no \\*.png"):
        png_folder_source(tmp_path)
    with pytest.raises(ValueError, match="unknown label"):
        ReaderStudyConfig.from_section(dict(labels=["Lung_Opacities"]))


def test_archive_source_reads_a_finalised_archive(tmp_path, tiny_prepared):
    """Against the real ``synthcxr.archive.open`` on a minimal release laid out as docs/archive-format.md describes."""
    from archive_fixtures import write_release

    arr = fakes(6)
    names = ["Effusion", "No_Finding"]
    ids = [f"s{i:03d}" for i in range(6)]
    root = write_release(tmp_path / "arch", arr, np.tile([0, 1], (6, 1)), names, ids, sealed=False)  # before the seal
    src = srcmod.archive_source(root)
    assert list(src.ids) == ids
    assert np.array_equal(src.select_ids(["s004"]).read()[0], arr[4])
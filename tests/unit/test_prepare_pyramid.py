"""Pyramid downsampling and source-image standardisation against independent references."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fixtures_real import percentile_window
from synthcxr.data.decode import center_square, load_square, to_square_uint8
from synthcxr.data.pyramid import PyramidWriter, build_pyramid, pyramid_levels, string_attr
from synthcxr.data.quarantine import QuarantineError


def test_levels():
    assert pyramid_levels(64) == [4, 8, 16, 32, 64]
    assert pyramid_levels(4) == [4]
    with pytest.raises(ValueError):
        pyramid_levels(48)


def test_pyramid_matches_torch_avgpool_and_pil_box():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (128, 128), dtype=np.uint8)
    pyr = build_pyramid(img)
    assert sorted(pyr) == [4, 8, 16, 32, 64, 128]
    np.testing.assert_array_equal(pyr[128], img)
    t = torch.from_numpy(img.astype(np.float64))[None, None]
    worst_pil = 0
    for r, level in pyr.items():
        assert level.dtype == np.uint8 and level.shape == (r, r)
        # exact box mean straight from the full-resolution image (torch, float64), rounded once
        ref = F.avg_pool2d(t, 128 // r).squeeze().numpy() if r < 128 else img.astype(np.float64)
        assert np.abs(level.astype(np.float64) - ref).max() <= 0.5 + 1e-9
        np.testing.assert_array_equal(level, np.rint(ref).astype(np.uint8))
        # PIL's BOX filter (8-bit fixed point) agrees within one grey level
        pil = np.asarray(Image.fromarray(img).resize((r, r), Image.BOX)).astype(int)
        worst_pil = max(worst_pil, int(np.abs(pil - level.astype(int)).max()))
    assert worst_pil <= 1


def test_pyramid_hand_computed_2x2():
    img = np.zeros((8, 8), np.uint8)
    img[:2, :2] = [[0, 1], [1, 1]]  # mean 0.75 -> 1 at level 4
    img[:4, 4:] = 10  # a uniform top-right block stays exactly 10
    pyr = build_pyramid(img)
    assert pyr[4][0, 0] == 1
    assert pyr[4][0, 2] == 10 and pyr[4][1, 3] == 10
    # block means ending in .5 round half to even: (1+1+2+2)/4 = 1.5 -> 2 and (2+2+3+3)/4 = 2.5 -> 2
    img2 = np.array([[1, 1, 2, 2, 0, 0, 0, 0], [2, 2, 3, 3, 0, 0, 0, 0]] + [[0] * 8] * 6, np.uint8)
    p2 = build_pyramid(img2, min_res=4)
    assert p2[4][0, 0] == 2 and p2[4][0, 1] == 2


def test_to_square_crops_centre_and_matches_pil_lanczos():
    # smooth content: PIL's 8-bit path clamps between its two passes, which only matters for ringing
    # on pixel noise, so the two implementations should agree within one grey level here
    yy, xx = np.mgrid[0:120, 0:90]
    src = np.rint(128 + 60 * np.sin(yy / 9.0) * np.cos(xx / 13.0) + 40 * (yy / 119.0)).astype(np.uint8)
    rng = np.random.default_rng(1)
    out = to_square_uint8(src.astype(np.float32), 32)
    crop = src[15:105, :]  # (120-90)//2 = 15 rows cut at the top
    np.testing.assert_array_equal(center_square(src), crop)
    ref = np.asarray(Image.fromarray(crop).resize((32, 32), Image.LANCZOS)).astype(int)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert np.abs(ref - out.astype(int)).max() <= 1
    # already the right size: passed through unchanged
    sq = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    np.testing.assert_array_equal(to_square_uint8(sq, 32), sq)


def test_load_square_modes(tmp_path):
    rng = np.random.default_rng(2)
    g = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_square(tmp_path / "rgb.png", 40), g)  # luma of a grey RGB is the grey
    g16 = (g.astype(np.uint16) * 100 + 500).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    ref = percentile_window(g16).astype(float)  # 16-bit: the 0.5..99.5th percentiles map to 0..255
    got = load_square(tmp_path / "g16.png", 40).astype(float)
    assert np.abs(got - ref).max() <= 1 and (got != ref).mean() < 0.02
    Image.fromarray(g, mode="L").convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_square(tmp_path / "la.png", 40), g)


@pytest.mark.parametrize(
    "setup,kind",
    [
        (lambda p: p.write_text("not an image"), "not_an_image"),
        (lambda p: None, "missing_file"),
        (lambda p: p.mkdir(), "unreadable"),
        (lambda p: Image.fromarray(np.zeros((20, 20), np.uint8)).save(p, format="PNG"), "bad_image"),
        (lambda p: Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(p, format="PNG"), "bad_image"),
    ],
)
def test_load_square_quarantine_kinds(tmp_path, setup, kind):
    p = tmp_path / "x.png"
    setup(p)
    with pytest.raises(QuarantineError) as err:
        load_square(p, 16)
    assert err.value.kind == kind


def test_truncated_png_and_jpeg_are_corrupt(tmp_path):
    rng = np.random.default_rng(3)
    for fmt in ("PNG", "JPEG"):
        p = tmp_path / f"t.{fmt.lower()}"
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(p, format=fmt)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 3])
        with pytest.raises(QuarantineError) as err:
            load_square(p, 16)
        assert err.value.kind == "corrupt_image", fmt


def test_writer_presized_trimmed_and_chunked(tmp_path):
    rng = np.random.default_rng(4)
    imgs = rng.integers(0, 256, (5, 16, 16), dtype=np.uint8)
    path = tmp_path / "images.h5"
    with PyramidWriter(path, capacity=8, max_res=16, attrs={"label_names": string_attr(["A", "B"])}) as w:
        for im in imgs:
            w.append(build_pyramid(im))
    with h5py.File(path, "r") as f:
        assert sorted(int(k) for k in f["images"]) == [4, 8, 16]
        for r in (4, 8, 16):
            ds = f[f"images/{r}"]
            assert ds.shape == (5, r, r) and ds.dtype == np.uint8 and ds.chunks == (1, r, r)
        np.testing.assert_array_equal(f["images/16"][:], imgs)
        np.testing.assert_array_equal(f["images/4"][2], build_pyramid(imgs[2])[4])
        assert [str(s) for s in f.attrs["label_names"]] == ["A", "B"]
        assert int(f.attrs["n_images"]) == 5

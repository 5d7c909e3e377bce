"""Atomic, reproducible output helpers."""

from __future__ import annotations

import pytest


def test_torch_save_is_byte_reproducible(tmp_path):
    import torch

    from synthcxr.utils.atomic import torch_save

    obj = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "meta": {"kimg": 1.5}}
    torch_save(obj, tmp_path / "a.pt")
    torch_save(obj, tmp_path / "sub" / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]["w"], obj["state_dict"]["w"])
    assert not list(tmp_path.glob(".tmp-*"))


def test_temporary_names_never_end_in_the_real_suffix_and_failures_leave_nothing(tmp_path):
    from synthcxr.utils.atomic import atomic_path, is_temporary

    target = tmp_path / "shard-00001.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and is_temporary(tmp.name)
            assert tmp.name.startswith(".tmp-shard-00001.parquet-") and tmp.suffix == ".partial"
            tmp.write_bytes(b"half")
            assert not list(tmp_path.glob("*.parquet"))  # a glob for real files never sees it
            raise RuntimeError("writer died")
    assert not list(tmp_path.iterdir())


def test_a_successful_write_removes_leftovers_of_killed_writers_of_the_same_target_only(tmp_path):
    from synthcxr.utils.atomic import write_text

    dead = tmp_path / ".tmp-SHA256SUMS-k1ll3d_x.partial"
    other = tmp_path / ".tmp-manifest.parquet-abcdefgh.partial"  # another target's writer may still be running
    similar = tmp_path / ".tmp-SHA256SUMS-old-abcdefgh.partial"  # the temporary of a target named SHA256SUMS-old
    for p in (dead, other, similar):
        p.write_bytes(b"partial")
    write_text(tmp_path / "SHA256SUMS", "x\n")
    assert (tmp_path / "SHA256SUMS").read_text() == "x\n"
    assert not dead.exists() and other.exists() and similar.exists()

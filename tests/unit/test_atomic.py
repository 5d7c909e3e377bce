"""Atomic, reproducible output helpers."""

from __future__ import annotations


def test_torch_save_is_byte_reproducible(tmp_path):
    import torch

    from synthcxr.utils.atomic import torch_save

    obj = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "meta": {"kimg": 1.5}}
    torch_save(obj, tmp_path / "a.pt")
    torch_save(obj, tmp_path / "sub" / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]["w"], obj["state_dict"]["w"])
    assert not list(tmp_path.glob(".tmp-*"))

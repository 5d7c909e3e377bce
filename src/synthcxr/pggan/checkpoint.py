"""Saving and loading: the resumable training checkpoint and the small generator files.

Everything stored is tensors, numbers, strings, lists and dicts, so both files load with
``torch.load(..., weights_only=True)``; nothing is unpickled as an arbitrary object.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..utils.atomic import torch_save
from .networks import Generator

CHECKPOINT_FORMAT = 1


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states in weights_only-loadable types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(_to_lists(random.getstate())),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write the training state (a killed save never leaves a truncated checkpoint)."""
    torch_save({"format": CHECKPOINT_FORMAT, "version": __version__, **state}, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise RuntimeError(f"{path}: cannot read the training checkpoint ({exc}); delete it to start over") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(f"{path}: not a synthcxr PGGAN checkpoint (format {CHECKPOINT_FORMAT}); delete it to start over")
    return ckpt


def generator_payload(G: Generator, meta: dict[str, Any]) -> dict[str, Any]:
    """``{"arch", "state_dict", "meta"}`` with CPU tensors (the file other stages read)."""
    sd = {k: v.detach().to("cpu").clone() for k, v in G.state_dict().items()}
    return {"arch": dict(G.arch), "state_dict": sd, "meta": {"version": __version__, **meta}}


def save_generator(path: str | os.PathLike, G: Generator, meta: dict[str, Any]) -> Path:
    torch_save(generator_payload(G, meta), path)
    return Path(path)


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> Generator:
    """The generator in eval mode at full resolution and alpha 1.

    Parameters keep ``requires_grad`` so latent optimisation can back-propagate through G to z.
    ``G.meta`` holds the file's metadata; for a training snapshot ``meta["res"]`` and
    ``meta["alpha"]`` say which resolution had been reached when it was taken.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: run the train_pggan stage first (snakemake train_pggan)")
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "arch" not in obj or "state_dict" not in obj:
        raise ValueError(f"{p}: not a generator file (expected keys 'arch' and 'state_dict')")
    arch = dict(obj["arch"])
    channels = arch.pop("channels", 1)
    if channels != 1:
        raise ValueError(f"{p}: generator has {channels} channels; synthcxr generators are grayscale")
    G = Generator(**arch)
    G.load_state_dict(obj["state_dict"])
    G.meta = dict(obj.get("meta", {}))
    return G.to(device).eval()

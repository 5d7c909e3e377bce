"""One protocol for every set of images a stage reads: prepared scans, a release, working shards, arrays, PNGs.

An :class:`ImageSet` is a map-style torch ``Dataset``. Item ``i`` is the dict every reader of the project
yields, the same keys as ``synthcxr.archive.stream``'s items::

    {"sample_id": str, "image": float [1, R, R] in [-1, 1], "labels": float32 [L] (NaN = unknown)}

Besides items, a set knows its ``ids`` ``[n]``, ``labels`` ``[n, L]`` over ``label_names``, ``groups``
(the patient key of each image, or None) and ``origin`` (where it came from, for messages), and reads
uint8 batches with :meth:`ImageSet.read` and :meth:`ImageSet.batches`. Sets compose as in
torchxrayvision (filter, subset, merge), each step a cheap view that reads nothing:

- :meth:`~ImageSet.subset` (positions or a mask), :meth:`~ImageSet.select_ids`,
  :meth:`~ImageSet.filter` (``require`` / ``exclude`` findings);
- :meth:`~ImageSet.relabel` (a label subset or order), :meth:`~ImageSet.at` (resize on read);
- :func:`merge` (concatenation, one label space), :meth:`~ImageSet.in_memory` (read once, keep uint8).

Images are resized the project's way (:func:`synthcxr.imaging.resize_batch`): items in float, batches
through float and back to uint8. A source subclass implements only :meth:`ImageSet.native`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .imaging import resize_batch, resize_uint8, uint8_to_float

#: The keys of every item (and of every batch of :meth:`ImageSet.batches`).
ITEM_KEYS = ("sample_id", "image", "labels")


def image_tensor(img: np.ndarray, res: int | None = None) -> torch.Tensor:
    """An item's image: uint8 ``[H, W]`` -> float ``[1, res, res]`` in [-1, 1] (resized in float when ``res`` differs)."""
    x = uint8_to_float(img).unsqueeze(0)
    if res is not None and x.shape[-1] != res:
        x = resize_batch(x[None], res)[0]
    return x


class ImageSet(Dataset):
    """A sized, indexable set of greyscale images with ids, labels and patient groups; see the module docstring."""

    def __init__(self, ids: Sequence[Any], labels: np.ndarray | None, label_names: Sequence[str], *,
                 groups: Sequence[Any] | None = None, origin: str = "<images>", res: int | None = None):
        self.ids = np.asarray([str(i) for i in ids], dtype=object)
        self.label_names = [str(n) for n in label_names]
        lab = np.zeros((len(self.ids), 0), np.float32) if labels is None else np.asarray(labels, dtype=np.float32)
        if lab.shape != (len(self.ids), len(self.label_names)):
            raise ValueError(f"{origin}: labels of shape {list(lab.shape)} for {len(self.ids)} images and "
                             f"{len(self.label_names)} label names")
        self.labels = lab
        self.groups = None if groups is None else np.asarray(groups)
        if self.groups is not None and len(self.groups) != len(self.ids):
            raise ValueError(f"{origin}: {len(self.groups)} patient keys for {len(self.ids)} images")
        self.origin = origin
        self.res = None if res is None else int(res)

    # -- what a source implements --------------------------------------------------------------------
    def native(self, positions: np.ndarray) -> np.ndarray:
        """uint8 ``[b, H, W]`` of ``positions`` (in the order given) at the source's own size."""
        raise NotImplementedError(f"{type(self).__name__} does not read images")

    # -- reading -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.label_names)} labels, from {self.origin})"

    def _position(self, i: int) -> int:
        """Item index ``i`` (negative counts from the end) as a position; IndexError naming the set."""
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.origin}: index {i} out of range for {len(self)} images")
        return i % len(self)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._position(i)
        x = image_tensor(self.native(np.array([i]))[0], self.res)
        return {"sample_id": str(self.ids[i]), "image": x, "labels": torch.from_numpy(self.labels[i].copy())}

    def read(self, positions: Iterable[int] | None = None) -> np.ndarray:
        """uint8 ``[b, R, R]`` of ``positions`` (all when None), resized to ``res`` when it is set."""
        pos = np.arange(len(self)) if positions is None else np.fromiter(positions, dtype=np.int64)
        if len(pos) == 0:
            r = self.res or 0
            return np.zeros((0, r, r), np.uint8)
        imgs = np.asarray(self.native(pos), dtype=np.uint8)
        return imgs if self.res is None else resize_uint8(imgs, self.res)

    def batches(self, batch_size: int = 256) -> Iterator[dict[str, Any]]:
        """``{"sample_id": [b] str, "image": uint8 [b, R, R], "labels": float32 [b, L]}`` in order."""
        for s in range(0, len(self), batch_size):
            pos = np.arange(s, min(s + batch_size, len(self)))
            yield {"sample_id": [str(i) for i in self.ids[pos]], "image": self.read(pos), "labels": self.labels[pos]}

    # -- composition ---------------------------------------------------------------------------------
    def subset(self, index: np.ndarray | Sequence[int]) -> ImageSet:
        """The images at ``index``: integer positions (in that order) or a boolean mask over the set."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            if len(idx) != len(self):
                raise ValueError(f"{self.origin}: a mask of {len(idx)} for {len(self)} images")
            idx = np.flatnonzero(idx)
        return View(self, positions=idx.astype(np.int64))

    def select_ids(self, ids: Iterable[str]) -> ImageSet:
        """The images of these sample ids, in the order given; raises naming ids the set lacks."""
        where = {s: i for i, s in enumerate(self.ids)}
        want = [str(s) for s in ids]
        missing = [s for s in want if s not in where]
        if missing:
            raise KeyError(f"{self.origin}: sample id(s) {missing[:5]} not found ({len(missing)} missing)")
        return self.subset(np.array([where[s] for s in want], dtype=np.int64))

    def filter(self, require: Iterable[str] = (), exclude: Iterable[str] = ()) -> ImageSet:
        """Images labelled with every ``require`` finding and none of ``exclude`` (unknown counts as absent)."""
        req, exc = list(require), list(exclude)
        missing = [n for n in req + exc if n not in self.label_names]
        if missing:
            raise KeyError(f"{self.origin}: no label(s) {missing}; it has {self.label_names}")
        keep = np.ones(len(self), bool)
        for n in req:
            keep &= self.labels[:, self.label_names.index(n)] == 1
        for n in exc:
            keep &= self.labels[:, self.label_names.index(n)] != 1
        return self.subset(keep)

    def relabel(self, names: Sequence[str]) -> ImageSet:
        """The same images with label vectors over ``names`` (a subset or reordering of ``label_names``)."""
        names = [str(n) for n in names]
        missing = [n for n in names if n not in self.label_names]
        if missing:
            raise KeyError(f"{self.origin}: no label(s) {missing}; it has {self.label_names}")
        if names == self.label_names:
            return self
        return View(self, columns=np.array([self.label_names.index(n) for n in names], dtype=np.int64))

    def at(self, res: int | None) -> ImageSet:
        """The same images, resized to ``res`` on read (None: the source's own size)."""
        return self if res == self.res else View(self, res=res)

    def in_memory(self) -> ImageSet:
        """The set read once into memory (uint8 at the source's size), for fast epochs over small sets."""
        imgs = self.native(np.arange(len(self))) if len(self) else np.zeros((0, 0, 0), np.uint8)
        return ArrayImages(imgs, self.labels, self.label_names, ids=self.ids, groups=self.groups, origin=self.origin, res=self.res)


class View(ImageSet):
    """A subset, label selection or resolution of another set; reads through it (views of views flatten)."""

    def __init__(self, base: ImageSet, positions: np.ndarray | None = None, columns: np.ndarray | None = None,
                 res: int | None | str = "same"):
        pos = np.arange(len(base)) if positions is None else np.asarray(positions, dtype=np.int64)
        if len(pos) and (pos.min() < -len(base) or pos.max() >= len(base)):
            raise IndexError(f"{base.origin}: positions outside its {len(base)} images")
        pos %= max(len(base), 1)
        cols = np.arange(len(base.label_names)) if columns is None else np.asarray(columns, dtype=np.int64)
        if isinstance(base, View):  # compose with the base's own view
            pos, cols, base = base.positions[pos], base.columns[cols], base.base
        self.base, self.positions, self.columns = base, pos, cols
        super().__init__(base.ids[pos], base.labels[pos][:, cols], [base.label_names[c] for c in cols],
                         groups=None if base.groups is None else base.groups[pos], origin=base.origin,
                         res=base.res if res == "same" else res)

    def native(self, positions: np.ndarray) -> np.ndarray:
        return self.base.native(self.positions[np.asarray(positions, dtype=np.int64)])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.res != self.base.res:
            return super().__getitem__(i)
        i = self._position(i)
        item = self.base[int(self.positions[i])]  # the base's own reading
        item["labels"] = torch.from_numpy(self.labels[i].copy())
        return item


class ArrayImages(ImageSet):
    """Images held in memory as uint8 ``[n, H, W]`` (also: generated images handed over directly)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, label_names: Sequence[str] = (), *,
                 ids: Sequence[Any] | None = None, groups: Sequence[Any] | None = None, origin: str = "<arrays>",
                 res: int | None = None):
        arr = np.asarray(images)
        if arr.ndim != 3 or arr.dtype != np.uint8:
            raise ValueError(f"{origin}: expected uint8 [N, H, W] images, got {arr.dtype} {list(arr.shape)}")
        names = [f"gen_{i:06d}" for i in range(len(arr))] if ids is None else [str(i) for i in ids]
        if len(names) != len(arr) or len(set(names)) != len(names):
            raise ValueError(f"{origin}: need {len(arr)} distinct ids, got {len(names)} ({len(set(names))} distinct)")
        self.images = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True))
        super().__init__(names, labels, label_names, groups=groups, origin=origin, res=res)

    def native(self, positions: np.ndarray) -> np.ndarray:
        return self.images[torch.as_tensor(np.asarray(positions, dtype=np.int64))].numpy()


class Merged(ImageSet):
    """Several sets one after another (see :func:`merge`)."""

    def __init__(self, parts: Sequence[ImageSet]):
        self.parts = list(parts)
        names = self.parts[0].label_names
        for p in self.parts[1:]:
            if p.label_names != names:
                raise ValueError(f"cannot merge {p.origin} (labels {p.label_names}) with {self.parts[0].origin} "
                                 f"(labels {names}): relabel them to one label space first")
        res = {p.res for p in self.parts}
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        groups = None
        if all(p.groups is not None for p in self.parts):
            groups = np.concatenate([np.asarray(p.groups, dtype=object) for p in self.parts])
        super().__init__(np.concatenate([p.ids for p in self.parts]), np.concatenate([p.labels for p in self.parts]), names,
                         groups=groups, origin=" + ".join(p.origin for p in self.parts), res=res.pop() if len(res) == 1 else None)

    def _locate(self, pos: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, pos, side="right") - 1

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._position(i)
        k = int(self._locate(np.array([i]))[0])
        return self.parts[k][i - int(self.offsets[k])]  # each part's own reading, resizing included

    def native(self, positions: np.ndarray) -> np.ndarray:
        pos = np.asarray(positions, dtype=np.int64)
        out = gather(self._locate(pos), lambda k, sel: self.parts[k].read(pos[sel] - self.offsets[k]))
        shapes = {o.shape for o in out}
        if len(shapes) > 1:
            raise ValueError(f"{self.origin}: its parts hold images of sizes {sorted(shapes)}; read them with .at(res)")
        return np.stack(out)


def gather(parts: np.ndarray, read: Callable[[int, np.ndarray], Iterable[np.ndarray]]) -> list[np.ndarray]:
    """Images of positions held by several parts (shards, merged sets), read one part at a time: ``parts[j]`` is
    position j's part and ``read(k, sel)`` yields the images of the positions ``sel`` of part k, in that order."""
    out: list[np.ndarray | None] = [None] * len(parts)
    for k in np.unique(parts):
        sel = np.flatnonzero(parts == k)
        for j, img in zip(sel, read(int(k), sel)):
            out[j] = img
    return out  # type: ignore[return-value]


def merge(*sets: ImageSet) -> ImageSet:
    """The sets concatenated in order (one label space, one resolution); a single set is returned as is."""
    if not sets:
        raise ValueError("merge needs at least one image set")
    return sets[0] if len(sets) == 1 else Merged(sets)

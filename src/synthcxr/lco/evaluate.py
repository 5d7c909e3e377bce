"""Does a second, independently trained classifier agree that LCO samples show their targets?

LCO optimises against one classifier, so its own success flag is optimistic (latents can exploit that
classifier's quirks). Re-rendering every latent and scoring it with a checker trained separately gives
an honest rate, overall and per label combination.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..classifier.evaluate import read_thresholds
from ..labels import combo_key
from .latents import latents_labels, read_latents, target_labels
from .optimize import LabelSpace, module_device, resolve_label_space, success_rule


def _rate(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if len(mask) else None


@torch.no_grad()
def checker_agrees(
    generator: torch.nn.Module, checker: torch.nn.Module, space: LabelSpace, z: np.ndarray, targets: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Per latent, whether ``checker`` (with the thresholds in ``space``) sees exactly its target row.

    ``z`` is ``[n, d]``, ``targets`` ``[n, L]`` over ``space.labels``; returns ``[n]`` bool.
    """
    used = space.used
    gdev = module_device(generator, "cpu")
    cdev = module_device(checker, "cpu")
    idx = torch.as_tensor(np.asarray(space.clf_index)[used], dtype=torch.long, device=cdev)
    probs = np.empty((len(z), int(used.sum())), dtype=np.float32)
    for s in range(0, len(z), batch_size):
        x = generator(torch.as_tensor(z[s : s + batch_size], device=gdev)).to(cdev)
        probs[s : s + batch_size] = torch.sigmoid(checker(x).index_select(1, idx)).float().cpu().numpy()
    return np.asarray(success_rule(probs, np.asarray(targets)[:, used], space.thresholds[used]), dtype=bool)


@torch.no_grad()
def agreement(
    latents_paths: Sequence[str | os.PathLike] | str | os.PathLike,
    generator: torch.nn.Module | str | os.PathLike,
    checker: torch.nn.Module | str | os.PathLike,
    thresholds: Mapping[str, float] | str | os.PathLike,
    batch_size: int = 64,
    device: str = "auto",
) -> dict[str, Any]:
    """Share of samples whose re-rendered image meets its target under ``checker`` and its thresholds.

    ``generator``/``checker`` may be loaded modules or paths to ``generator.pt``/``model.pt``;
    ``thresholds`` a mapping or a path to the checker's ``thresholds.json``. Labels come from the
    shards' ``target_*`` columns; a label the checker lacks is ignored only if it is No_Finding.
    Returns ``overall`` and ``n`` over all samples, ``overall_successful``/``n_successful`` over
    the samples LCO marked successful (those an archive keeps), and the same per combination key.
    """
    from ..utils.runtime import resolve_device

    if isinstance(latents_paths, (str, os.PathLike)):
        latents_paths = [latents_paths]
    if not latents_paths:
        raise ValueError("agreement: no latents shards given")
    dev = resolve_device(device)
    if not isinstance(generator, torch.nn.Module):
        from ..pggan import load_generator

        generator = load_generator(generator, dev)
    if not isinstance(checker, torch.nn.Module):
        from ..classifier import load_classifier

        checker = load_classifier(checker, dev)
    where = "thresholds"
    if not isinstance(thresholds, Mapping):
        where = os.fspath(thresholds)
        thresholds = read_thresholds(thresholds)
    generator.eval()
    checker.eval()

    labels = latents_labels(latents_paths[0])
    shards = []
    for p in latents_paths:
        lat = read_latents(p, labels)  # a shard lacking one of the first shard's labels fails here, naming p
        if target_labels(lat.table.columns) != labels:
            raise ValueError(f"{p}: its target columns differ from {latents_paths[0]}; shards come from different configs")
        shards.append(lat)
    targets = np.concatenate([s.targets.astype(np.float32) for s in shards])
    lco_ok = np.concatenate([s.table["success"].to_numpy(bool) for s in shards])
    z = np.concatenate([s.z for s in shards])
    space = resolve_label_space(labels, checker.label_names, thresholds, where=where)
    agree = checker_agrees(generator, checker, space, z, targets, batch_size)
    keys = np.array([combo_key(t, labels) for t in targets])
    per: dict[str, dict[str, Any]] = {}
    for k in sorted(set(keys)):
        sel = keys == k
        per[k] = {
            "n": int(sel.sum()),
            "agreement": _rate(agree[sel]),
            "n_successful": int((sel & lco_ok).sum()),
            "agreement_successful": _rate(agree[sel & lco_ok]),
        }
    return {
        "labels": labels,
        "n": int(len(agree)),
        "overall": _rate(agree),
        "n_successful": int(lco_ok.sum()),
        "overall_successful": _rate(agree[lco_ok]),
        "lco_success_rate": _rate(lco_ok),
        "per_combination": per,
    }

"""Shared pytest fixtures: small prepared datasets in the stage-1 on-disk format."""

from __future__ import annotations

import os

os.environ.setdefault("SYNTHCXR_NO_PROGRESS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from synthcxr.labels import PHANTOM_LABELS  # noqa: E402


def _pattern_images(labels: np.ndarray, names: list[str], res: int, rng: np.random.Generator) -> np.ndarray:
    """Simple learnable images: a dark 'thorax' with one bright feature per present finding."""
    n = len(labels)
    yy, xx = np.mgrid[0:res, 0:res] / (res - 1)
    base = 0.55 - 0.35 * np.exp(-(((xx - 0.5) / 0.3) ** 2 + ((yy - 0.5) / 0.35) ** 2))
    imgs = np.repeat(base[None], n, axis=0) + rng.normal(0, 0.03, (n, res, res))
    spots = {
        "Cardiomegaly": (0.5, 0.6, 0.22),
        "Effusion": (0.85, 0.2, 0.15),
        "Nodule": (0.35, 0.7, 0.06),
        "Mass": (0.3, 0.3, 0.12),
        "Pneumothorax": (0.2, 0.8, 0.12),
        "Consolidation": (0.6, 0.25, 0.12),
        "Atelectasis": (0.7, 0.75, 0.1),
    }
    for j, name in enumerate(names):
        if name not in spots:
            continue
        cy, cx, r = spots[name]
        blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2)))
        imgs += 0.45 * labels[:, j, None, None] * blob[None]
    return (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8)


def write_prepared(folder, n: int = 240, max_res: int = 32, seed: int = 0, names=PHANTOM_LABELS) -> str:
    """Write images.h5 + labels.parquet in the prepare stage's format (test fixture)."""
    rng = np.random.default_rng(seed)
    names = list(names)
    findings = [x for x in names if x != "No_Finding"]
    lab = (rng.random((n, len(findings))) < 0.25).astype(np.float32)
    full = np.zeros((n, len(names)), np.float32)
    for j, name in enumerate(findings):
        full[:, names.index(name)] = lab[:, j]
    if "No_Finding" in names:
        full[:, names.index("No_Finding")] = (lab.sum(1) == 0).astype(np.float32)
    imgs = _pattern_images(full, names, max_res, rng)
    os.makedirs(folder, exist_ok=True)
    with h5py.File(os.path.join(folder, "images.h5"), "w") as f:
        g = f.create_group("images")
        level, res = imgs.astype(np.float64), max_res
        while res >= 4:
            g.create_dataset(str(res), data=np.round(level).astype(np.uint8), chunks=(1, res, res))
            level = level.reshape(n, res // 2, 2, res // 2, 2).mean(axis=(2, 4))
            res //= 2
        f.attrs["label_names"] = names
        f.attrs["max_res"] = max_res
        f.attrs["source_format"] = "test-pattern"
    patients = np.arange(n) // 2
    split = np.where(patients % 10 < 7, "train", np.where(patients % 10 < 8, "val", "test"))
    table = pd.DataFrame(
        {
            "row": np.arange(n),
            "image_id": [f"img{i:05d}" for i in range(n)],
            "patient_key": [f"p{p:05d}" for p in patients],
            "split": split,
            "view": "PA",
            "sex": np.where(rng.random(n) < 0.5, "M", "F"),
            "age": rng.integers(20, 80, n),
        }
    )
    for j, name in enumerate(names):
        table[name] = full[:, j]
    table.to_parquet(os.path.join(folder, "labels.parquet"), index=False)
    return str(folder)


def quadrant_masks(res: int, k: int):
    """``[k, res, res]`` torch masks averaging each of the first ``k`` image quadrants (row-major)."""
    import torch

    masks = torch.zeros(k, res, res)
    h = res // 2
    for j in range(k):
        r, c = divmod(j, 2)
        masks[j, r * h : (r + 1) * h, c * h : (c + 1) * h] = 1.0 / (h * h)
    return masks


def prepared_with_random_classifier(folder, n: int = 600, res: int = 16, seed: int = 3) -> tuple[str, list[str]]:
    """A prepared phantom-label dataset in ``folder/prep`` and an untrained (seeded) small_cnn saved as
    ``folder/model.pt``, as the classifier stage writes it; returns the dataset folder and the label names."""
    import torch

    from synthcxr.classifier import Classifier
    from synthcxr.classifier.models import default_arch
    from synthcxr.utils.atomic import torch_save

    names = list(PHANTOM_LABELS)
    prep = write_prepared(os.path.join(folder, "prep"), n=n, max_res=res, seed=seed)
    torch.manual_seed(0)
    arch = default_arch("small_cnn", len(names), res, 8)
    torch_save({"arch": arch, "state_dict": Classifier(arch, names, res).state_dict(), "meta": {"label_names": names, "input_res": res}},
               os.path.join(folder, "model.pt"))
    return prep, names


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> str:
    """A 240-image prepared dataset at up to 32 px with learnable test patterns (not the phantom)."""
    return write_prepared(tmp_path_factory.mktemp("prepared"), n=240, max_res=32, seed=0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Working directory in which `snakemake --cores 2` finished the whole DAG on tests/e2e/tiny.yaml."""
    from dag import snakemake

    work = tmp_path_factory.mktemp("e2e-local")
    proc = snakemake(work, "--cores", "2")
    if proc.returncode != 0:
        logs = "\n".join(
            f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "results" / "logs").rglob("*.log"))
        )
        pytest.fail(f"tiny DAG failed:\n{proc.stderr[-6000:]}\n{logs}")
    return work

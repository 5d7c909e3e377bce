"""Patient verification network: a Siamese embedding that says whether two chest X-rays show one patient.

It is trained on pairs of real **training** images only (same patient / different patient; every patient
with at least two studies takes part), so the re-identification audit (:mod:`.reid`) can ask of every
synthetic sample whether it shows a training patient, not merely whether it copies a training image. Both
branches share one network that maps an image to a unit vector; the verification score of a pair is the
cosine of their vectors, so a sample is compared with a whole training set by one matrix product. The pair
loss is binary cross-entropy on ``scale * cosine + bias`` (both learned) over every pair in a batch of
``patients_per_batch`` patients x 2 studies, positives and negatives weighted equally.

Identity has to survive acquisition: positioning, exposure and noise change between follow-ups, and
findings come and go. Training augments each image (rotation, zoom, shift, contrast, noise) so the network
keys on what persists: rib, vessel and heart geometry.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..classifier.augment import AugmentConfig, augment_batch
from ..data.store import PreparedDataset
from ..imaging import resize_batch
from ..metrics.auroc import auroc
from ..utils.runtime import progress
from .common import real_batches, real_images, to_float

log = logging.getLogger("synthcxr")

#: Augmentation of verifier training pairs: acquisition changes between follow-ups, not anatomy.
@dataclass
class VerifierConfig:
    """``validate.reid`` keys that shape and train the verifier, plus the global seed."""

    res: int
    width: int
    embed_dim: int
    steps: int
    patients_per_batch: int
    lr: float
    weight_decay: float
    augment: dict
    align: int
    batch_size: int
    max_heldout: int
    seed: int

    def __post_init__(self) -> None:
        if self.res < 8 or self.res & (self.res - 1):
            raise ValueError(f"validate.reid.res must be a power of two >= 8, got {self.res}")
        if self.patients_per_batch < 2:
            raise ValueError(f"validate.reid.patients_per_batch must be >= 2 (negatives need two patients), got {self.patients_per_batch}")

    @property
    def augment_config(self) -> AugmentConfig:
        return _image_augment(self.augment)


class Verifier(nn.Module):
    """Image -> unit embedding. Strided conv stages down to 4 x 4, then a linear map of the whole 4 x 4 grid:
    identity lies in where things are (rib spacing, vessel branches), which global pooling would discard."""

    def __init__(self, res: int = 64, width: int = 32, embed_dim: int = 128):
        super().__init__()
        self.arch = {"res": int(res), "width": int(width), "embed_dim": int(embed_dim)}
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        c, r = width, res
        while r > 4:
            c_out = min(c * 2, 8 * width)
            layers += [
                nn.Conv2d(c, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            ]
            c, r = c_out, r // 2
        self.body = nn.Sequential(*layers)
        self.embed = nn.Linear(c * 16, embed_dim)
        # inverse temperature of the contrastive loss (learned)
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.arch["res"]:
            x = resize_batch(x, self.arch["res"])
        return F.normalize(self.embed(torch.flatten(self.body(x), 1)), dim=1)


def pair_loss(model: Verifier, emb: torch.Tensor, patient: torch.Tensor) -> torch.Tensor:
    """Contrastive loss over every pair of a batch: each image must pick its own patient's other study out of
    all the batch's images (cross-entropy over ``scale * cosine``), which trains the ranking a 1:N search needs."""
    logits = model.scale * (emb @ emb.T)
    off = ~torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    same = (patient[:, None] == patient[None, :]) & off
    logits = logits.masked_fill(~off, float("-inf"))
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(log_p.masked_fill(~same, 0.0).sum(dim=1) / same.sum(dim=1).clamp_min(1)).mean()


def eligible_patients(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """``patient_key -> prepared rows`` of patients with at least two images in ``table``."""
    groups = table.groupby("patient_key", sort=True)["row"].apply(lambda s: np.sort(s.to_numpy(np.int64)))
    return {str(k): v for k, v in groups.items() if len(v) >= 2}


def _add_shift_noise(x: torch.Tensor, aug: dict, gen: torch.Generator) -> torch.Tensor:
    """Integer-pixel shifts (up to ``shift`` of the width, border repeated) and Gaussian noise of sd ``noise``."""
    n, _, h, w = x.shape
    shift, noise = float(aug.get("shift", 0.0)), float(aug.get("noise", 0.0))
    d = torch.randint(-int(round(shift * w)), int(round(shift * w)) + 1, (n, 2), generator=gen) if shift else None
    eps = torch.randn(x.shape, generator=gen, dtype=torch.float32) if noise else None
    if d is not None:
        pad = int(d.abs().max())
        if pad:
            xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
            x = torch.stack([xp[i, :, pad + int(d[i, 0]) : pad + int(d[i, 0]) + h, pad + int(d[i, 1]) : pad + int(d[i, 1]) + w] for i in range(n)])
    if eps is not None:
        x = x + noise * 2.0 * eps.to(x.device, x.dtype)  # images span [-1, 1]: sd in units of the 0..1 range
    return x.clamp(-1.0, 1.0)


def augment_pairs(x: torch.Tensor, aug: dict, gen: torch.Generator) -> torch.Tensor:
    """The verifier's training augmentation: :func:`augment_batch` (rotation, zoom, exposure), then shift and noise."""
    return _add_shift_noise(augment_batch(x, _image_augment(aug), gen), aug, gen)


def _image_augment(aug: dict) -> AugmentConfig:
    """The classifier's augmentation keys of ``validate.reid.augment`` (the rest, shift and noise, are the verifier's)."""
    return AugmentConfig(**{f.name: aug[f.name] for f in dataclasses.fields(AugmentConfig)})


class PairSampler:
    """Batches of ``patients_per_batch`` distinct patients x 2 distinct studies, from one seeded generator."""

    def __init__(self, patients: dict[str, np.ndarray], patients_per_batch: int, seed: int):
        if len(patients) < 2:
            raise ValueError(
                f"the re-identification verifier needs training patients with >= 2 studies; found {len(patients)}. "
                "Set validate.reid.enabled: false for a collection without follow-up studies"
            )
        self.keys = sorted(patients)
        self.rows = [patients[k] for k in self.keys]
        self.p = min(int(patients_per_batch), len(self.keys))
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows [2p], patient index [2p])``: rows 2i and 2i+1 are two studies of one patient."""
        pick = self.rng.choice(len(self.keys), self.p, replace=False)
        rows, pid = [], []
        for k in pick:
            a, b = self.rng.choice(len(self.rows[k]), 2, replace=False)
            rows += [self.rows[k][a], self.rows[k][b]]
            pid += [k, k]
        return np.asarray(rows, np.int64), np.asarray(pid, np.int64)


def _read(prep: PreparedDataset, rows: np.ndarray, res: int) -> np.ndarray:
    return real_images(prep, rows, res).read()


def train_verifier(prep: PreparedDataset, cfg: VerifierConfig, device: torch.device) -> tuple[Verifier, dict[str, Any]]:
    """Train on the ``train`` split's patients with >= 2 studies; returns the model (eval mode) and a log summary."""
    torch.manual_seed(cfg.seed)
    patients = eligible_patients(prep.split("train"))
    sampler = PairSampler(patients, cfg.patients_per_batch, cfg.seed)
    model = Verifier(cfg.res, cfg.width, cfg.embed_dim).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug = dict(cfg.augment)
    model.train()
    losses = []
    bar = progress(range(cfg.steps), desc="re-id verifier", unit="step", leave=False)
    for step in bar:
        rows, pid = sampler()
        x = augment_pairs(to_float(_read(prep, rows, cfg.res)), aug, gen).to(device)
        loss = pair_loss(model, model(x), torch.from_numpy(pid).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("re-id verifier step %d/%d: pair loss %.4f", step + 1, cfg.steps, float(np.mean(losses[-100:])))
    model.eval()
    n_img = int(sum(len(v) for v in patients.values()))
    return model, {
        "train_patients": len(patients), "train_images": n_img, "steps": cfg.steps,
        "final_loss": float(np.mean(losses[-100:])) if losses else float("nan"),
    }


@torch.no_grad()
def embed_batches(model: Verifier, batches: Iterable[np.ndarray], device: torch.device, total: int | None = None,
                  desc: str = "embedding") -> torch.Tensor:
    """Unit embeddings ``[n, embed_dim]`` (float32, CPU) of uint8 image batches (any resolution)."""
    out = [model(to_float(b).to(device)).float().cpu() for b in progress(batches, total=total, desc=desc, leave=False)]
    return torch.cat(out) if out else torch.zeros(0, model.arch["embed_dim"])


def shifted_views(x: torch.Tensor, align: int) -> list[torch.Tensor]:
    """``x`` shifted by every integer offset ``(dy, dx)`` with ``|dy|, |dx| <= align`` (border repeated); offset
    (0, 0) first. Comparing every view and keeping the best score aligns a query to each reference up to
    ``align`` pixels, the way two films are registered before they are compared."""
    if align <= 0:
        return [x]
    h, w = x.shape[-2:]
    xp = F.pad(x, (align, align, align, align), mode="replicate")
    offs = [(0, 0)] + [(dy, dx) for dy in range(-align, align + 1) for dx in range(-align, align + 1) if (dy, dx) != (0, 0)]
    return [xp[..., align + dy : align + dy + h, align + dx : align + dx + w] for dy, dx in offs]


@torch.no_grad()
def embed_views(model: Verifier, images: np.ndarray, align: int, device: torch.device) -> torch.Tensor:
    """``[views, n, embed_dim]`` embeddings of uint8 ``images`` at every shift of :func:`shifted_views`
    (applied at the verifier's resolution)."""
    x = to_float(images).to(device)
    if x.shape[-1] != model.arch["res"]:
        x = resize_batch(x, model.arch["res"])
    return torch.stack([model(v).float().cpu() for v in shifted_views(x, align)])


def best_scores(views: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """Per row, the best cosine between the aligned views ``[V, n, d]`` of an image and ``ref[n]`` (``[n, d]``)."""
    return (views * ref[None]).sum(dim=2).max(dim=0).values.numpy().astype(np.float64)


def embed_rows(model: Verifier, prep: PreparedDataset, rows: np.ndarray, cfg: VerifierConfig, device: torch.device,
               desc: str = "embedding") -> torch.Tensor:
    """Embeddings of prepared images ``rows`` (read at the verifier's resolution)."""
    return embed_batches(model, real_batches(prep, rows, cfg.res, cfg.batch_size), device,
                         total=math.ceil(len(rows) / cfg.batch_size), desc=desc)


def threshold_at(negatives: np.ndarray, rate: float) -> float:
    """Smallest cut ``t`` among the scores such that at most ``rate`` of ``negatives`` score **above** it."""
    neg = np.sort(np.asarray(negatives, np.float64))
    if neg.size == 0:
        raise ValueError("no negative scores to set a false-match threshold from")
    allowed = int(math.floor(rate * neg.size))  # negatives allowed above the cut
    return float(neg[neg.size - 1 - allowed]) if allowed < neg.size else float(neg[0] - 1.0)


def pair_scores(emb: torch.Tensor, patient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of every unordered pair ``i < j`` of ``emb`` and whether it is one patient."""
    iu = np.triu_indices(len(emb), k=1)
    s = (emb @ emb.T).numpy()[iu]
    return s.astype(np.float64), (patient[iu[0]] == patient[iu[1]])


def heldout_verification(model: Verifier, prep: PreparedDataset, cfg: VerifierConfig, rate: float,
                         device: torch.device) -> dict[str, Any]:
    """ROC AUC and the pair threshold at false-match rate ``rate`` on held-out (val + test) patients' pairs.

    Patients with >= 2 held-out studies are taken (up to ``max_heldout`` images, whole patients, seeded); every
    pair of their images counts: same-patient pairs are the positives, all others the negatives.
    """
    table = prep.table[prep.table["split"].isin(["val", "test"])]
    patients = eligible_patients(table)
    if not patients:
        raise ValueError(f"{prep.labels_path}: no val/test patient has two studies; the verifier cannot be evaluated")
    keys = np.random.default_rng(cfg.seed + 1).permutation(sorted(patients))
    rows, pid, n = [], [], 0
    for i, k in enumerate(keys):
        if n + len(patients[k]) > cfg.max_heldout and n:
            break
        rows.append(patients[k])
        pid.append(np.full(len(patients[k]), i))
        n += len(patients[k])
    rows_a, pid_a = np.concatenate(rows), np.concatenate(pid)
    scores, same = pair_scores(embed_rows(model, prep, rows_a, cfg, device, desc="held-out pairs"), pid_a)
    t = threshold_at(scores[~same], rate)
    return {
        "splits": ["val", "test"],
        "n_patients": len(rows),
        "n_images": int(len(rows_a)),
        "n_same_pairs": int(same.sum()),
        "n_different_pairs": int((~same).sum()),
        "auc": auroc(same.astype(np.int8), scores),
        "false_match_rate": rate,
        "pair_threshold": t,
        "pair_false_match_rate": float((scores[~same] > t).mean()),
        "pair_true_match_rate": float((scores[same] > t).mean()),
        "same_score_median": float(np.median(scores[same])),
        "different_score_median": float(np.median(scores[~same])),
    }


def config_dict(cfg: VerifierConfig) -> dict[str, Any]:
    return asdict(cfg)

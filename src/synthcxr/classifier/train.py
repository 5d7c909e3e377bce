"""Training loop of the multi-label classifier, the same for real data and for synthetic archives.

Loss: binary cross-entropy per label, with unknown (NaN) labels masked out, so a dataset that does
not annotate a finding for some images neither rewards nor punishes predictions there. With
``class_weighted`` each label's positives are up-weighted by ``n_neg / n_pos`` of the training set
(BCE ``pos_weight``), so rare findings are not ignored; the price is that a probability of 0.5 then
means "as likely as not under a balanced prior", and a rare finding is called on images of a look-alike
(on the phantom, Mass on most Nodule scans), which ranking metrics (AUROC) do not show and the test
split's exact-match rate (``metrics.json``: ``test.exact_match``) does. Model selection (``select_on``): the
epoch with the best mean validation AUROC (``auroc``: threshold-free, prevalence-free), the lowest mean
per-label validation loss (``bce``: the training loss, class weights included, on val; it also rewards
calibration, which matters when a fixed threshold of 0.5 decides what a classifier sees), or the last
epoch (``last``); early stopping after ``patience`` epochs without improvement. Everything random
(init, batch order, augmentation) derives from ``seed + seed_offset``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .. import __version__
from ..config import ConfigError, build
from ..labels import check_labels
from ..metrics.auroc import mean_auroc, per_label_auroc
from ..utils.amp import autocast, grad_scaler
from ..utils.atomic import torch_save, write_json
from ..utils.runtime import progress, resolve_device, seed_everything, setup_logging
from .augment import AugmentConfig, augment_batch
from .evaluate import (
    THRESHOLD_RULES,
    choose_thresholds,
    exact_match,
    plot_roc,
    predict,
    split_metrics,
    thresholds_mapping,
)
from .models import Classifier, default_arch
from .sources import mix_weights, resolve_sources

log = logging.getLogger("synthcxr")

OUTPUT_FILES = ("model.pt", "metrics.json", "thresholds.json", "roc.png")

#: epoch-selection criteria (``classifier.select_on``)
SELECTION = ("auroc", "bce", "last")


#: keys of one training run that are not config keys (the checker's seed offset, TSTR's arms), with
#: their values for a plain run of the ``classifier`` section
RUN_KEYS = {"seed_offset": 0, "samples_per_epoch": None, "real_fraction": 1.0, "init_from": None, "synthetic_share": None}


@dataclass
class ClassifierConfig:
    """The ``classifier`` config section plus the global ``seed``, ``device`` and ``labels``, and the
    run keys of :data:`RUN_KEYS`."""

    name: str
    arch: str
    labels: list[str]
    input_res: int
    width: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    class_weighted: bool
    patience: int
    select_on: str
    threshold_method: str
    threshold_min_count: int
    augment: AugmentConfig
    bootstrap: int
    workers: int
    amp: str
    channels_last: bool
    seed: int
    device: str
    #: added to ``seed`` (the checker's, TSTR's seeds)
    seed_offset: int
    #: images drawn per epoch (with replacement unless it equals the training set's size); None = one pass.
    #: TSTR sets it to the real train split's size so that every arm takes the same optimisation steps.
    samples_per_epoch: int | None
    #: share of the real training patients used (nested subsets, drawn with ``seed``; TSTR's fractions)
    real_fraction: float
    #: a model.pt to start from instead of random weights (TSTR's synthetic-pretrain -> real-finetune arm)
    init_from: str | None
    #: real + synthetic sources: share of each epoch's draws taken from the synthetic ones (None: as concatenated)
    synthetic_share: float | None

    @classmethod
    def from_section(cls, sec: Mapping[str, Any]) -> "ClassifierConfig":
        """From one run's settings (:func:`~.runs.run_settings`: the ``classifier`` section, or part of it, plus
        run keys); the schema fills left-out keys and a ConfigError names a bad one."""
        sec = {k: v for k, v in dict(sec).items() if k != "checker"}
        if "labels" not in sec:
            raise ConfigError("classifier config: missing 'labels' (pass synthcxr.config.section(config, 'classifier'))")
        run = {k: sec.pop(k, v) for k, v in RUN_KEYS.items()}
        if not 0 < float(run["real_fraction"]) <= 1:
            raise ConfigError(f"classifier real_fraction: must be in (0, 1], got {run['real_fraction']}")
        cfg = build(cls, "classifier", sec, **run)
        cfg.augment = build(AugmentConfig, "classifier.augment", cfg.augment)
        cfg.labels = check_labels(cfg.labels, where="labels")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def pos_weights(labels: np.ndarray) -> np.ndarray:
    """``n_neg / n_pos`` per label over known entries (1 where a label has no positive or no negative)."""
    n_pos = np.sum(labels == 1, axis=0).astype(np.float64)
    n_neg = np.sum(labels == 0, axis=0).astype(np.float64)
    return np.where((n_pos > 0) & (n_neg > 0), n_neg / np.maximum(n_pos, 1), 1.0)


def masked_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE-with-logits over the known (non-NaN) label entries of the batch."""
    known = ~torch.isnan(target)
    loss = F.binary_cross_entropy_with_logits(
        logits, torch.where(known, target, torch.zeros_like(target)), pos_weight=pos_weight, reduction="none"
    )
    n = known.sum()
    return (loss * known).sum() / n.clamp_min(1)


def mean_label_bce(y: np.ndarray, probs: np.ndarray, pos_weight: np.ndarray | None = None, eps: float = 1e-7) -> float:
    """BCE averaged over known entries of each label, then over labels (NaN if nothing is known).

    ``pos_weight`` (one per label) up-weights positives as in training, so a class-weighted model is
    scored on the loss it was trained on. Each label counts once, as in mean AUROC, so a rare finding's
    calibration is not drowned by the thousands of negatives of the common ones.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    w = np.ones(y.shape[1]) if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    known = ~np.isnan(y)
    per = []
    for j in range(y.shape[1]):
        k = known[:, j]
        if k.any():
            t = y[k, j]
            per.append(float(-np.mean(w[j] * t * np.log(p[k, j]) + (1 - t) * np.log1p(-p[k, j]))))
    return float(np.mean(per)) if per else math.nan


def _criterion(select_on: str, epoch: int, val_auc: dict[str, float], val_bce: float) -> float:
    """Higher is better; -inf when undefined (never selected over a defined epoch)."""
    if select_on == "last":
        return float(epoch)  # each epoch beats the one before
    m = mean_auroc(val_auc) if select_on == "auroc" else -val_bce
    return -math.inf if math.isnan(m) else m


def train_classifier(
    cfg: ClassifierConfig,
    train_source: str | os.PathLike | list[str | os.PathLike],
    eval_source: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    log_file: str | os.PathLike | None = None,
    threads: int | None = None,
) -> dict:
    """Train, select an epoch on val (``select_on``), evaluate on test and write model.pt, metrics.json, thresholds.json, roc.png.

    ``train_source`` is a prepared dataset or an archive folder, or a list of them (concatenated training
    images, e.g. real + synthetic); ``eval_source`` (default: the train
    source) must be a prepared dataset whose val/test splits select and score the model. ``threads``
    caps torch's CPU threads (the rule's ``threads:``). Returns the content of ``metrics.json``.
    """
    if log_file is not None:
        setup_logging(log_file)
    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out_dir)
    seed = int(cfg.seed) + int(cfg.seed_offset)
    seed_everything(seed)
    device = resolve_device(cfg.device)
    t0 = time.time()
    # subsets depend on the run seed, not its offset: every arm and seed of TSTR sees the same patients
    src = resolve_sources(train_source, eval_source, cfg.labels, cfg.input_res, cfg.real_fraction, int(cfg.seed))
    names = src.label_names
    if len(src.train) == 0:
        raise ValueError(f"{train_source}: no training images")

    arch = default_arch(cfg.arch, len(names), cfg.input_res, cfg.width)
    model = Classifier(arch, names, cfg.input_res).to(device)
    autocast(device, cfg.amp, "classifier.amp")  # fp16 off CUDA fails here, before any work
    if cfg.init_from:
        start = load_classifier(cfg.init_from, device)
        if start.arch != arch or list(start.label_names) != names:
            raise ValueError(f"{cfg.init_from}: its architecture or labels differ from this run's ({cfg.arch}, {names}); "
                             "pretrain with the same classifier section")
        model.load_state_dict(start.state_dict())
        log.info("classifier %s starts from %s", cfg.name, cfg.init_from)
    if cfg.channels_last:  # NHWC convolutions: faster on tensor-core GPUs, the same function
        model = model.to(memory_format=torch.channels_last)
    scaler = grad_scaler(device, cfg.amp)
    pw_np = pos_weights(src.train.labels)
    pw = torch.tensor(pw_np, dtype=torch.float32, device=device) if cfg.class_weighted else None
    log.info(
        "classifier %s: %s (%d parameters) at %d px on %s; seed %d; pos_weight %s",
        cfg.name, cfg.arch, sum(p.numel() for p in model.parameters()), cfg.input_res, device, seed,
        dict(zip(names, np.round(pw_np, 2).tolist())) if cfg.class_weighted else "off",
    )

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    per_epoch = int(cfg.samples_per_epoch) if cfg.samples_per_epoch else len(src.train)
    sampler = None
    if cfg.synthetic_share is not None:
        weights = torch.as_tensor(mix_weights(src.train_parts or [], cfg.synthetic_share), dtype=torch.double)
        sampler = torch.utils.data.WeightedRandomSampler(weights, per_epoch, replacement=True,
                                                         generator=torch.Generator().manual_seed(seed))
    elif per_epoch != len(src.train):
        sampler = torch.utils.data.RandomSampler(
            src.train.dataset, replacement=True, num_samples=per_epoch, generator=torch.Generator().manual_seed(seed)
        )
    loader = DataLoader(
        src.train.dataset,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed) if sampler is None else None,
        num_workers=cfg.workers,
        drop_last=per_epoch > cfg.batch_size,  # no size-1 batches for BatchNorm
        pin_memory=device.type == "cuda",
    )
    steps = 0
    aug_gen = torch.Generator().manual_seed(seed + 1)
    best, best_epoch, best_state, since_best = -math.inf, 0, None, 0
    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total, count = 0.0, 0
        bar = progress(loader, desc=f"{cfg.name} epoch {epoch}/{cfg.epochs}", leave=False)
        for batch in bar:
            x, y = batch["image"].to(device, non_blocking=True), batch["labels"].to(device, non_blocking=True)
            if cfg.augment.active:
                x = augment_batch(x, cfg.augment, aug_gen)
            with autocast(device, cfg.amp, "classifier.amp"):
                logits = model(x)
            loss = masked_bce(logits.float(), y, pw)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            steps += 1
            total += float(loss.detach()) * len(x)
            count += len(x)
            bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        lr = opt.param_groups[0]["lr"]
        sched.step()
        p_val, y_val = predict(model, src.val.dataset, cfg.batch_size * 2, device, cfg.workers)
        val_auc = per_label_auroc(y_val, p_val, names)
        val_bce = mean_label_bce(y_val, p_val, pw_np if cfg.class_weighted else None)
        score = _criterion(cfg.select_on, epoch, val_auc, val_bce)
        history.append({
            "epoch": epoch, "train_loss": total / max(count, 1), "val_mean_auroc": mean_auroc(val_auc), "val_bce": val_bce, "lr": lr,
        })
        improved = score > best
        if improved:
            best, best_epoch, since_best = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        log.info(
            "epoch %d/%d: train loss %.4f, val mean AUROC %.4f, val BCE %.4f%s",
            epoch, cfg.epochs, history[-1]["train_loss"], history[-1]["val_mean_auroc"], val_bce,
            f" (best by {cfg.select_on})" if improved else "",
        )
        if since_best >= cfg.patience:
            log.info("early stop: no val improvement for %d epochs; best epoch %d", cfg.patience, best_epoch)
            break
    if best_state is None:  # selection criterion never defined: keep the last epoch
        log.warning("validation %s undefined at every epoch (single-class or empty val split); keeping the last epoch", cfg.select_on)
        best_epoch, best_state = len(history), copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)

    p_val, y_val = predict(model, src.val.dataset, cfg.batch_size * 2, device, cfg.workers)
    p_test, y_test = predict(model, src.test.dataset, cfg.batch_size * 2, device, cfg.workers)
    metrics = {
        "name": cfg.name,
        "labels": names,
        "train_source": [str(p) for p in train_source] if isinstance(train_source, (list, tuple)) else str(train_source),
        "train_kind": src.train_kind,
        "eval_source": str(eval_source) if eval_source is not None else str(train_source),
        "n_train": len(src.train),
        "real_fraction": cfg.real_fraction,
        "init_from": cfg.init_from,
        "synthetic_share": cfg.synthetic_share,
        "samples_per_epoch": per_epoch,
        "steps": steps,
        "best_epoch": best_epoch,
        "select_on": cfg.select_on,
        "epochs_run": len(history),
        "bootstrap": {
            "n": cfg.bootstrap, "alpha": 0.05, "method": "percentile",
            "resampling": "patients" if src.test.groups is not None else "images (no patient keys)",
        },
        "val": split_metrics(y_val, p_val, names, cfg.bootstrap, seed + 2, groups=src.val.groups),
        "test": split_metrics(y_test, p_test, names, cfg.bootstrap, seed + 3, groups=src.test.groups),
        "history": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in h.items()} for h in history],
        "seconds": round(time.time() - t0, 1),
    }
    points = choose_thresholds(y_val, p_val, names, min_count=cfg.threshold_min_count, method=cfg.threshold_method)
    rule = THRESHOLD_RULES[cfg.threshold_method]
    metrics["operating_points"] = {"method": cfg.threshold_method, "rule": rule, "split": "val", "labels": points}
    thr = thresholds_mapping(points)
    metrics["test"]["exact_match"] = exact_match(y_test, p_test, [thr[n] for n in names], names)
    meta = {
        "label_names": names,
        "input_res": cfg.input_res,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "seed": seed,
        "train_kind": src.train_kind,
        "train_source": [str(p) for p in train_source] if isinstance(train_source, (list, tuple)) else str(train_source),
        "n_train": len(src.train),
        "pos_weight": [float(v) for v in pw_np] if cfg.class_weighted else None,
        "val_mean_auroc": metrics["val"]["mean_auroc"],
        "test_mean_auroc": metrics["test"]["mean_auroc"],
        "config": {k: v for k, v in cfg.to_dict().items()},
        "version": __version__,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    plot_roc(y_test, p_test, names, out / "roc.png", f"{cfg.name}: test ROC (mean AUROC {metrics['test']['mean_auroc']:.3f})")
    write_json(out / "thresholds.json", thr)
    write_json(out / "metrics.json", metrics)
    torch_save({"arch": arch, "state_dict": state, "meta": meta}, out / "model.pt")  # last: marks completion
    log.info(
        "classifier %s done in %.0f s: best epoch %d, val mean AUROC %.4f, test mean AUROC %.4f (findings %.4f), "
        "test exact match %.3f",
        cfg.name, time.time() - t0, best_epoch, metrics["val"]["mean_auroc"] or float("nan"),
        metrics["test"]["mean_auroc"] or float("nan"), metrics["test"]["mean_auroc_findings"] or float("nan"),
        metrics["test"]["exact_match"]["rate"] or float("nan"),
    )
    return metrics


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> Classifier:
    """A trained :class:`Classifier` from ``model.pt`` (weights-only load), in eval mode on ``device``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: run the train_classifier rule first")
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    try:
        ckpt = torch.load(p, map_location=dev, weights_only=True)
    except Exception as exc:  # corrupt file or pickled objects
        raise ValueError(f"{p}: not a weights-only classifier checkpoint ({exc})") from exc
    for key in ("arch", "state_dict", "meta"):
        if key not in ckpt:
            raise ValueError(f"{p}: checkpoint lacks '{key}'; expected a model.pt written by synthcxr.classifier")
    meta = ckpt["meta"]
    model = Classifier(ckpt["arch"], meta["label_names"], meta["input_res"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(dev).eval()

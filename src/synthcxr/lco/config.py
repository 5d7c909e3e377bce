"""The ``lco`` section as the optimiser sees it: one checked dataclass of its optimisation keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..labels import check_labels
from .accept import OBJECTIVES
from ..utils.amp import AMP_MODES

MODES = ("pool", "per_sample")


@dataclass
class LCOConfig:
    """The ``lco`` config section's optimisation keys plus the global ``labels`` and ``device``."""

    labels: list[str]
    steps: int = 200
    lr: float = 0.05
    prior_weight: float = 0.05
    batch_size: int = 64
    retries: int = 3
    margin: float = 0.0
    init_candidates: int = 1
    mode: str = "pool"
    pool_factor: int = 4
    pool_block: int = 32
    memory_mb: float | None = None
    amp: str = "none"
    patience: int | None = 20
    give_up_after: int | None = 1
    topup_rounds: int = 0
    objective: str = "bce"
    device: str = "auto"

    @classmethod
    def from_section(cls, cfg: Mapping[str, Any] | "LCOConfig") -> "LCOConfig":
        if isinstance(cfg, LCOConfig):
            return cfg
        if "labels" not in cfg:
            raise ValueError("lco config: missing 'labels' (pass synthcxr.config.section(config, 'lco'))")
        out = cls(
            labels=check_labels(cfg["labels"], where="labels"),
            steps=int(cfg.get("steps", cls.steps)),
            lr=float(cfg.get("lr", cls.lr)),
            prior_weight=float(cfg.get("prior_weight", cls.prior_weight)),
            batch_size=int(cfg.get("batch_size", cls.batch_size)),
            retries=int(cfg.get("retries", cls.retries)),
            margin=float(cfg.get("margin", cls.margin)),
            init_candidates=int(cfg.get("init_candidates", cls.init_candidates)),
            mode=str(cfg.get("mode", cls.mode)),
            pool_factor=int(cfg.get("pool_factor", cls.pool_factor)),
            pool_block=int(cfg.get("pool_block", cls.pool_block)),
            memory_mb=None if cfg.get("memory_mb") is None else float(cfg["memory_mb"]),
            amp=str(cfg.get("amp", cls.amp)),
            patience=None if cfg.get("patience", cls.patience) is None else int(cfg.get("patience", cls.patience)),
            give_up_after=None if cfg.get("give_up_after", cls.give_up_after) is None else int(cfg.get("give_up_after", cls.give_up_after)),
            device=str(cfg.get("device", cls.device)),
            topup_rounds=int(cfg.get("topup_rounds", cls.topup_rounds)),
            objective=str(cfg.get("objective", cls.objective)),
        )
        if out.steps < 0 or out.batch_size < 1 or out.retries < 0 or out.lr <= 0 or out.prior_weight < 0 or out.margin < 0 or out.init_candidates < 1:
            raise ValueError(f"lco config: need steps >= 0, batch_size >= 1, retries >= 0, lr > 0, prior_weight >= 0, margin >= 0, init_candidates >= 1; got {out}")
        if out.mode not in MODES:
            raise ValueError(f"lco.mode: {out.mode!r} is not one of {', '.join(MODES)}")
        if out.pool_factor < 1 or out.pool_block < 1 or (out.memory_mb is not None and out.memory_mb <= 0):
            raise ValueError(f"lco config: need pool_factor >= 1, pool_block >= 1 and memory_mb > 0 (or null); got {out}")
        if out.patience is not None and out.patience < 1:
            raise ValueError(f"lco.patience: need a positive step count or null, got {out.patience}")
        if out.give_up_after is not None and out.give_up_after < 1:
            raise ValueError(f"lco.give_up_after: need a positive attempt count or null, got {out.give_up_after}")
        if out.topup_rounds < 0:
            raise ValueError(f"lco.topup_rounds: need 0 or more rounds, got {out.topup_rounds}")
        if out.objective not in OBJECTIVES:
            raise ValueError(f"lco.objective: {out.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if out.amp not in AMP_MODES:
            raise ValueError(f"lco.amp: {out.amp!r} is not one of {', '.join(AMP_MODES)}")
        return out

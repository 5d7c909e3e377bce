"""The ``pggan`` config section as a typed dataclass, plus the fingerprint that guards resuming."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import build
from .schedule import Schedule

#: How stream.finding_repeats turns finding_floor into repeats (part of the fingerprint when the floor is on).
FINDING_RULE = "shown-share"
#: Keys that may change between a run and its resumption without changing what is trained.
#: How training is split into jobs: neither what is trained nor recorded in generator.pt, so an interrupted
#: and resubmitted run writes the same generator bytes as an uninterrupted one.
JOB_KEYS = frozenset({"job_minutes", "stop_margin_minutes", "allocations"})
RESUME_SAFE_KEYS = frozenset({
    "run", "checkpoint_kimg", "snapshot_kimg", "log_kimg", "workers", "device", "labels", "gpus", "nodes", "total_kimg",
    "job_minutes", "stop_margin_minutes", "allocations",
})


@dataclass
class PGGANConfig:
    """Hyper-parameters of one Progressive GAN run (the ``pggan`` section plus seed/device/labels)."""

    run: str
    resolution: int
    latent_dim: int
    fmap_base: int
    fmap_max: int
    lr: float
    betas: tuple[float, float]
    adam_eps: float
    gp_weight: float
    drift: float
    ema_kimg: float
    fade_kimg: float
    stable_kimg: float
    total_kimg: float | None
    minibatch: dict[str, int]
    checkpoint_kimg: float
    snapshot_kimg: float
    log_kimg: float
    amp: bool
    workers: int
    gpus: int
    nodes: int
    finding_floor: float
    finding_max_repeat: int
    job_minutes: float | None
    stop_margin_minutes: float
    allocations: int
    seed: int
    device: str
    labels: list[str] | None

    @classmethod
    def from_section(cls, sec: Mapping[str, Any]) -> "PGGANConfig":
        """From the ``pggan`` section (or part of it; the schema fills the rest); a ConfigError names a bad key."""
        out = build(cls, "pggan", sec, labels=list(sec["labels"]) if sec.get("labels") is not None else None)
        out.betas = tuple(float(b) for b in out.betas)
        out.minibatch = {str(k): int(v) for k, v in out.minibatch.items()}
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def provenance_dict(self) -> dict[str, Any]:
        """The config recorded in generator.pt: everything but :data:`JOB_KEYS`."""
        return {k: v for k, v in self.to_dict().items() if k not in JOB_KEYS}

    def schedule(self) -> Schedule:
        """The growth schedule these settings describe."""
        return Schedule(self.resolution, self.stable_kimg, self.fade_kimg, self.minibatch, self.total_kimg)

    def batch_for(self, res: int) -> int:
        """Global minibatch at ``res``; raises naming the missing ``pggan.minibatch`` entry."""
        try:
            return int(self.minibatch[str(res)])
        except KeyError:
            raise ValueError(
                f"pggan.minibatch has no entry for resolution {res} (have {sorted(self.minibatch, key=int)}); "
                f"add \"{res}\": <batch size>"
            ) from None

    def training_dict(self) -> dict[str, Any]:
        """The keys that define what is trained (everything but :data:`RESUME_SAFE_KEYS`)."""
        d = self.to_dict()
        d["minibatch"] = {k: v for k, v in d["minibatch"].items() if int(k) <= self.resolution}
        if self.finding_floor <= 0:  # no oversampling: same fingerprint as runs from before these keys
            d.pop("finding_floor")
            d.pop("finding_max_repeat")
        else:  # how floor/max_repeat become repeats; checkpoints from the older one-pass rule are set aside
            d["finding_rule"] = FINDING_RULE
        return {k: v for k, v in d.items() if k not in RESUME_SAFE_KEYS}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.training_dict(), sort_keys=True).encode()).hexdigest()[:16]


def diff_training(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable list of training-relevant keys whose values differ."""
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k == "finding_rule":  # a fingerprint marker, not a config key: say what it means
            out.append(f"finding_floor rule: {_rule_name(old.get(k), old)} -> {_rule_name(new.get(k), new)}")
        else:
            out.append(f"pggan.{k}: {old.get(k)!r} -> {new.get(k)!r}")
    return out


def _rule_name(rule: str | None, d: dict[str, Any]) -> str:
    if rule is not None:
        return "each finding on >= finding_floor of shown images (fixed point)" if rule == FINDING_RULE else repr(rule)
    return "one pass, ceil(floor / share) (older checkpoint)" if d.get("finding_floor", 0) else "off"

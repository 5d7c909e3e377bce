"""The ``pggan`` config section as a typed dataclass, plus the fingerprint that guards resuming."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

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

    run: str = "default"
    resolution: int = 64
    latent_dim: int = 512
    fmap_base: int = 8192
    fmap_max: int = 512
    lr: float = 0.001
    betas: tuple[float, float] = (0.0, 0.99)
    adam_eps: float = 1e-8
    gp_weight: float = 10.0
    drift: float = 0.001
    ema_kimg: float = 10.0
    fade_kimg: float = 600.0
    stable_kimg: float = 600.0
    total_kimg: float | None = None
    minibatch: dict[str, int] = field(
        default_factory=lambda: {"4": 128, "8": 128, "16": 128, "32": 64, "64": 32, "128": 16, "256": 8, "512": 4, "1024": 4}
    )
    checkpoint_kimg: float = 20.0
    snapshot_kimg: float = 40.0
    log_kimg: float = 4.0
    amp: bool = False
    workers: int = 0
    gpus: int = 1
    nodes: int = 1
    finding_floor: float = 0.0
    finding_max_repeat: int = 8
    job_minutes: float | None = None
    stop_margin_minutes: float = 15.0
    allocations: int = 1
    seed: int = 0
    device: str = "auto"
    labels: list[str] | None = None

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], where: str = "pggan") -> "PGGANConfig":
        """Build from a config section; an unknown key is an error naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"unknown key(s) {[f'{where}.{k}' for k in unknown]}; allowed: {sorted(names)}")
        kw = dict(cfg)
        if "betas" in kw:
            kw["betas"] = tuple(float(b) for b in kw["betas"])
        if "minibatch" in kw:
            kw["minibatch"] = {str(k): int(v) for k, v in kw["minibatch"].items()}
        if "labels" in kw and kw["labels"] is not None:
            kw["labels"] = list(kw["labels"])
        return cls(**kw)

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

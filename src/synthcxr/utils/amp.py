"""Mixed precision as a config value: ``none`` (fp32), ``bf16`` or ``fp16`` (CUDA only) autocast, and the
gradient scaler fp16 training needs. LCO (``lco.amp``) and classifier training (``classifier.amp``) share it."""

from __future__ import annotations

import contextlib

import torch

AMP_MODES = ("none", "bf16", "fp16")


def autocast(device: torch.device, amp: str, key: str = "lco.amp"):
    """The autocast context of mode ``amp`` on ``device``; errors name the config ``key``."""
    if amp not in AMP_MODES:
        raise ValueError(f"{key}: {amp!r} is not one of {', '.join(AMP_MODES)}")
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"{key}: fp16 autocast needs a CUDA device (this job runs on {device}); use bf16 on CPU")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for fp16 training (fp16 gradients underflow without one); None otherwise."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None

"""Rejection sampling: the baseline LCO is measured against.

Draw z ~ N(0, I), render, classify, keep the latent if :func:`~synthcxr.lco.accept.accept_rule` holds
with the same ``margin`` LCO succeeds on. Its cost per accepted sample is about 1 / P(target | z ~ prior),
which explodes for rare label combinations; that is the case LCO exists for. Costs are counted in
generator forward evaluations so the two methods compare on the same unit, and counted exactly: the
draws up to and including the ``max_accept``-th accepted one, not the whole last batch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..labels import parse_combo
from .accept import LabelSpace, accept_rule, resolve_label_space
from .starts import module_device

log = logging.getLogger("synthcxr")


@dataclass
class RejectionResult:
    """Accepted latents and what they cost."""

    z: torch.Tensor  # [k, d] accepted latents (CPU, float32)
    probs: np.ndarray  # [k, L] classifier probabilities of the accepted samples (NaN for unused labels)
    g_evals: int  # draws up to the last accepted one (or all draws when fewer than max_accept were accepted)
    labels: tuple[str, ...]
    computed: int = 0  # forwards actually run (whole batches)

    @property
    def n_accepted(self) -> int:
        return int(self.z.shape[0])

    @property
    def evals_per_accept(self) -> float:
        """Generator evaluations per accepted sample (inf when nothing was accepted)."""
        return self.g_evals / self.n_accepted if self.n_accepted else float("inf")


@torch.no_grad()
def rejection_sample(
    G: torch.nn.Module,
    C: torch.nn.Module,
    thresholds: Mapping[str, float] | LabelSpace,
    target: str | Sequence[float],
    max_draws: int,
    batch_size: int,
    seed: int,
    labels: Sequence[str] | None = None,
    max_accept: int | None = None,
    margin: float | None = None,
) -> RejectionResult:
    """Draw up to ``max_draws`` prior latents (stopping once ``max_accept`` are accepted) for one target.

    ``target`` is a combination key such as ``"Cardiomegaly+Effusion"`` or a 0/1 vector over ``labels``
    (default: the classifier's ``label_names``). Draws come from one ``torch.Generator`` seeded with
    ``seed``, so the result is reproducible and independent of ``batch_size``; a draw is accepted when
    it clears every threshold by ``margin`` logits (default: the margins of a :class:`LabelSpace`
    passed as ``thresholds``, else 0).
    """
    if max_draws < 1 or batch_size < 1:
        raise ValueError(f"rejection_sample: max_draws and batch_size must be positive, got {max_draws}, {batch_size}")
    if labels is None:
        if isinstance(thresholds, LabelSpace):
            labels = thresholds.labels
        else:
            labels = getattr(C, "label_names", None)
            if labels is None:
                raise ValueError("rejection_sample: pass labels (the classifier has no .label_names)")
    labels = list(labels)
    space = thresholds if isinstance(thresholds, LabelSpace) else resolve_label_space(labels, C.label_names, thresholds)
    if margin is not None:
        space = space.with_margins(margin)
    vec = np.asarray(parse_combo(target, labels) if isinstance(target, str) else target, dtype=np.float32)
    if vec.shape != (len(labels),):
        raise ValueError(f"rejection_sample: target has {vec.shape} entries, expected {len(labels)} (labels {labels})")
    used = space.used
    idx = torch.as_tensor(np.asarray(space.clf_index)[used], dtype=torch.long)
    G.eval()
    C.eval()
    device = module_device(G, "auto")
    idx = idx.to(device)
    gen = torch.Generator().manual_seed(int(seed))
    d = int(G.latent_dim)
    kept_z: list[torch.Tensor] = []
    kept_p: list[np.ndarray] = []
    n_kept = draws = 0
    counted = None
    while draws < max_draws and (max_accept is None or n_kept < max_accept):
        b = min(batch_size, max_draws - draws)
        z = torch.randn(b, d, generator=gen)
        p = torch.sigmoid(C(G(z.to(device))).index_select(1, idx)).float().cpu().numpy()
        draws += b
        ok = accept_rule(p, np.broadcast_to(vec[used], p.shape), space.thresholds[used], space.margins[:, used])
        if max_accept is not None and n_kept + int(ok.sum()) >= max_accept:
            last = int(np.flatnonzero(ok)[max_accept - n_kept - 1])
            ok[last + 1 :] = False
            counted = draws - b + last + 1
        if ok.any():
            full = np.full((int(ok.sum()), len(labels)), np.nan, dtype=np.float32)
            full[:, used] = p[ok]
            kept_z.append(z[torch.as_tensor(ok)])
            kept_p.append(full)
            n_kept += int(ok.sum())
    z_acc = torch.cat(kept_z) if kept_z else torch.empty(0, d)
    p_acc = np.concatenate(kept_p) if kept_p else np.empty((0, len(labels)), dtype=np.float32)
    if max_accept is not None and len(z_acc) > max_accept:
        z_acc, p_acc = z_acc[:max_accept], p_acc[:max_accept]
    log.info("rejection sampling: %d accepted of %d draws", len(z_acc), draws)
    return RejectionResult(z_acc, p_acc, draws if counted is None else counted, tuple(labels), computed=draws)

"""Report figures (matplotlib, headless), each written atomically as PNG.

Every function takes plain numbers or uint8 images, so figures can be redrawn from the JSON/Parquet
outputs without rerunning any model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..utils.atomic import atomic_path  # noqa: E402


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def fid_curve(
    curve: Sequence[Mapping[str, float]],
    path: str | os.PathLike,
    heldout: float | None = None,
    generated: float | None = None,
    extractor: str = "",
) -> None:
    """FID against training progress (kimg), with the held-out real floor and the final archive's FID."""
    fig, ax = plt.subplots(figsize=(6, 4))
    if curve:
        k = [c["kimg"] for c in curve]
        v = [c["fid"] for c in curve]
        ax.plot(k, v, "o-", label="generator snapshots")
    if heldout is not None:
        ax.axhline(heldout, color="green", ls="--", label=f"held-out real vs train ({heldout:.2f})")
    if generated is not None:
        ax.axhline(generated, color="red", ls=":", label=f"archive vs train ({generated:.2f})")
    ax.set_xlabel("training progress (kimg)")
    ax.set_ylabel(f"FID ({extractor} features)" if extractor else "FID")
    ax.set_title("FID over training")
    if not curve:
        ax.text(0.5, 0.5, "no generator snapshots found", transform=ax.transAxes, ha="center", va="center")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def auroc_bars(
    labels: Sequence[str],
    series: Mapping[str, Mapping[str, Mapping[str, float]]],
    path: str | os.PathLike,
    title: str = "AUROC on the real test split",
) -> None:
    """Grouped bars per label, one group member per series (e.g. real-trained, synthetic-trained),
    with bootstrap CI whiskers. ``series[name][label] = {"auroc", "ci_low", "ci_high"}``."""
    names = list(series)
    x = np.arange(len(labels))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4))
    for i, name in enumerate(names):
        vals = np.array([series[name].get(lb, {}).get("auroc", np.nan) for lb in labels], float)
        lo = np.array([series[name].get(lb, {}).get("ci_low", np.nan) for lb in labels], float)
        hi = np.array([series[name].get(lb, {}).get("ci_high", np.nan) for lb in labels], float)
        err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        err = np.nan_to_num(err)
        ax.bar(x + (i - (len(names) - 1) / 2) * width, np.nan_to_num(vals), width, yerr=err, capsize=2, label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=35, ha="right")
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("AUROC (95% bootstrap CI)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def prevalence_bars(labels: Sequence[str], series: Mapping[str, Sequence[float]], path: str | os.PathLike) -> None:
    """Per-label prevalence, one bar per source (real train, archive targets, archive predictions)."""
    x = np.arange(len(labels))
    names = list(series)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4))
    for i, name in enumerate(names):
        ax.bar(x + (i - (len(names) - 1) / 2) * width, np.asarray(series[name], float), width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=35, ha="right")
    ax.set_ylabel("prevalence")
    ax.set_title("Label prevalence")
    ax.legend(fontsize=8)
    _save(fig, path)


def heatmaps(
    labels: Sequence[str], matrices: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "Co-occurrence"
) -> None:
    """Side-by-side annotated heatmaps of square ``[L, L]`` matrices (e.g. real, archive, difference)."""
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 1, 4.2), squeeze=False)
    for ax, (name, m) in zip(axes[0], matrices.items()):
        m = np.asarray(m, float)
        signed = (np.nanmin(m) < 0) if m.size else False
        lim = float(np.nanmax(np.abs(m))) if m.size else 1.0
        lim = lim if lim > 0 else 1.0
        im = ax.imshow(m, cmap="RdBu_r" if signed else "viridis", vmin=-lim if signed else 0, vmax=lim)
        ax.set_xticks(range(len(labels)))
        ax.set_yticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_title(name, fontsize=9)
        if len(labels) <= 10:
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white" if not signed else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    _save(fig, path)


def image_grid(
    rows: Mapping[str, Sequence[np.ndarray]], path: str | os.PathLike, ncols: int, title: str = ""
) -> None:
    """One row of uint8 images per key (row label on the left); short rows are left blank."""
    names = list(rows)
    nrows = max(len(names), 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 * ncols + 1.5, 1.25 * nrows + 0.5), squeeze=False)
    for r in range(nrows):
        imgs = list(rows[names[r]]) if names else []
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < len(imgs):
                ax.imshow(imgs[c], cmap="gray", vmin=0, vmax=255)
            if c == 0 and names:
                ax.set_ylabel(f"{names[r]} ({len(imgs)})" if len(imgs) < ncols else names[r], fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def _image_rows(rows: Sequence[Sequence[tuple]], path: str | os.PathLike, suptitle: str) -> None:
    """A grid with one row per entry of ``rows``; each cell ``(uint8 image or None, title, colour)``, a None
    image leaving its title as text in an empty cell."""
    n, m = max(len(rows), 1), max((len(r) for r in rows), default=3)
    fig, axes = plt.subplots(n, m, figsize=(2.0 * m, 2.1 * n + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if not rows:
        axes[0][m // 2].text(0.5, 0.5, "no generated samples", ha="center", va="center")
    for i, cells in enumerate(rows):
        for j, (img, title, color) in enumerate(cells):
            if img is None:
                axes[i][j].text(0.5, 0.5, title, ha="center", va="center", fontsize=7)
                continue
            axes[i][j].imshow(img, cmap="gray", vmin=0, vmax=255)
            axes[i][j].set_title(title, fontsize=7, color=color)
    fig.suptitle(suptitle, fontsize=9)
    _save(fig, path)


def pair_gallery(
    pairs: Sequence[Mapping], path: str | os.PathLike, threshold: float, title: str = "Closest generated-real pairs"
) -> None:
    """Rows of (generated, nearest real by features, nearest real by pixels) with their similarities.

    ``pairs[i]`` holds ``generated``, ``feature_nn``, ``pixel_nn`` (uint8 images), ``sample_id``,
    ``feature_sim``, ``pixel_sim``, ``flagged``. Flagged rows are titled in red.
    """
    rows = []
    for p in pairs:
        c = "red" if p["flagged"] else "black"
        rows.append([
            (p["generated"], f"{p['sample_id']}" + (" FLAGGED" if p["flagged"] else ""), c),
            (p["feature_nn"], f"feature nn (row {p['nn_feature_row']}) sim {p['feature_sim']:.3f}", c),
            (p["pixel_nn"], f"pixel nn (row {p['nn_pixel_row']}) sim {p['pixel_sim']:.3f}", c),
        ])
    _image_rows(rows, path, f"{title} (flag threshold {threshold:g})")


def counterfactual_gallery(pairs: Sequence[tuple], path: str | os.PathLike, title: str = "Paired counterfactuals") -> None:
    """Rows of (base, variant, |variant - base|) for ``pairs`` of ``(base, variant, edit)`` uint8 images."""
    import numpy as np

    rows = []
    for base, var, edit in pairs:
        diff = np.abs(var.astype(np.int16) - base.astype(np.int16))
        scaled = (255.0 * diff / max(int(diff.max()), 1)).astype(np.uint8)
        rows.append([(base, "base", "black"), (var, f"variant {edit}", "black"), (scaled, f"|difference| (max {int(diff.max())})", "black")])
    _image_rows(rows, path, f"{title}: base, variant, difference (brightest = largest change)")


def match_gallery(
    rows: Sequence[Mapping], path: str | os.PathLike, threshold: float, title: str = "Samples closest to a training patient"
) -> None:
    """Rows of (generated sample, its best-matching training image, another study of that patient).

    ``rows[i]`` holds ``generated``, ``nearest``, ``other_study`` (uint8 images; ``other_study`` may be None),
    ``sample_id``, ``score``, ``matched``, ``nn_row``, ``combination``. Matched rows are titled in red.
    """
    cells = []
    for r in rows:
        c = "red" if r["matched"] else "black"
        other = r.get("other_study")
        cells.append([
            (r["generated"], f"{r['sample_id']}" + (" MATCHED" if r["matched"] else ""), c),
            (r["nearest"], f"training row {r['nn_row']}: score {r['score']:.3f}", c),
            (other, "same patient, other study" if other is not None else "no other study", "black"),
        ])
    _image_rows(cells, path, f"{title} (match threshold {threshold:.3f})")


def delivery_bars(delivery: Mapping[str, object], path: str | os.PathLike) -> None:
    """Per finding: planned, released, failed (LCO) and withheld (audits) samples, from the delivery table."""
    per = {n: r for n, r in dict(delivery["per_finding"]).items() if r["planned"]}  # type: ignore[index]
    names = list(per)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4))
    planned = np.array([per[n]["planned"] for n in names], float)
    released = np.array([per[n]["released"] for n in names], float)
    failed = np.array([per[n]["failed"] for n in names], float)
    withheld = np.array([per[n]["withheld"] for n in names], float)
    ax.bar(x, released, 0.6, label="released", color="tab:green")
    ax.bar(x, failed, 0.6, bottom=released, label="failed (LCO)", color="tab:red")
    ax.bar(x, withheld, 0.6, bottom=released + failed, label="withheld (audits)", color="tab:orange")
    if any("withheld_with_pair" in per[n] for n in names):
        paired = np.array([per[n].get("withheld_with_pair", 0) for n in names], float)
        ax.bar(x, paired, 0.6, bottom=released + failed + withheld, label="withheld with their pair", color="tab:purple")
    for i, n in enumerate(names):
        share = per[n]["share"]
        ax.text(i, planned[i], f"{100 * share:.0f} %", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylabel("samples (a sample counts for each finding in it)")
    ax.set_title(f"Delivery: {delivery['released']} of {delivery['planned']} planned samples released")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


def auroc_vs_fraction(
    findings: Sequence[str], per_fraction: Mapping[float, Mapping[str, Mapping]], path: str | os.PathLike
) -> None:
    """One panel per finding: ensemble AUROC (with its CI) against the real fraction, one line per TSTR arm.

    ``per_fraction[fraction][arm]`` is an arm entry of tstr.json (``per_label[finding]`` with
    ``ensemble_auroc``, ``ci_low``, ``ci_high``).
    """
    fracs = sorted(per_fraction)
    arms = list(dict.fromkeys(a for f in fracs for a in per_fraction[f]))
    cols = min(4, max(1, len(findings)))
    rows = int(np.ceil(len(findings) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, findings):
        for arm in arms:
            pts = [(f, per_fraction[f][arm]["per_label"][name]) for f in fracs if arm in per_fraction[f]]
            x = np.array([f for f, _ in pts], float)
            y = np.array([np.nan if r["ensemble_auroc"] is None else r["ensemble_auroc"] for _, r in pts], float)
            lo = np.array([np.nan if r["ci_low"] is None else r["ci_low"] for _, r in pts], float)
            hi = np.array([np.nan if r["ci_high"] is None else r["ci_high"] for _, r in pts], float)
            ax.plot(x, y, "o-", label=arm, ms=3)
            ax.fill_between(x, lo, hi, alpha=0.15)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("share of real training patients", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(findings):]:
        ax.axis("off")
    axes[0][0].set_ylabel("test AUROC (95% CI)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Per-finding AUROC on the real test split against the real fraction, per TSTR arm")
    _save(fig, path)


def oracle_bars(result: Mapping[str, object], path: str | os.PathLike) -> None:
    """Per finding: share of released samples labelled with it that the oracle and the checker confirm
    (Wilson 95 % intervals), "checker fooled" marked; from oracle.json."""
    per = dict(result["released"]["per_finding"])  # type: ignore[index]
    names = [n for n, r in per.items() if r["n_requested"]]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4))
    for k, (who, colour) in enumerate((("oracle", "tab:purple"), ("checker", "tab:gray"))):
        rate = np.array([per[n][who]["rate"] for n in names], float)
        ci = np.array([per[n][who]["ci95"] for n in names], float).reshape(-1, 2)
        err = np.maximum(np.vstack([rate - ci[:, 0], ci[:, 1] - rate]), 0.0) if len(names) else None
        ax.bar(x + (k - 0.5) * 0.38, rate, 0.38, yerr=err, capsize=3, color=colour, label=f"{who} confirms")
    for i, n in enumerate(names):
        note = f"n={per[n]['n_requested']}" + ("\nchecker fooled" if per[n]["checker_fooled"] else "")
        ax.text(i, 1.02, note, ha="center", va="bottom", fontsize=7, color="tab:red" if per[n]["checker_fooled"] else "black")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("share of released samples labelled with the finding")
    truth = result.get("synthetic_labels", {}).get("share_true")  # type: ignore[union-attr]
    ax.set_title("Oracle vs checker on the release" + (f" (labels true: {100 * truth:.1f} %)" if truth is not None else ""))
    if not names:
        ax.text(0.5, 0.5, "no released samples with a finding", transform=ax.transAxes, ha="center", va="center")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)

"""The release's dataset card (``README.md``): what the archive is, how it was made, what it is for, its numbers.

The card opens with Hugging Face YAML front matter generated from archive.json (data files, features with
every label column, split size, license), so ``datasets.load_dataset(RELEASE_DIR)`` reads the release
with no arguments and no code of ours. Validation outputs are optional inputs; whatever numeric keys
fid.json / tstr.json hold are rendered generically, so the card keeps working as the validate stage adds
metrics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..validate.oracle import card_section as oracle_card_section
from ..validate.pairs import card_section as pairs_card_section
from .delivery import card_section
from .layout import FORMATS, stream_format
from .shard_parquet import hf_features


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, float | str]]:
    """``{"fid": {"value": 3.1}}`` -> ``[("fid.value", 3.1)]``; keeps numbers (not bools) and short number lists."""
    out: list[tuple[str, float | str]] = []
    if isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            out += _flatten(obj[k], f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)) and len(obj) <= 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj):
        out.append((prefix, "[" + ", ".join(f"{v:.4g}" for v in obj) + "]"))  # e.g. confidence intervals
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.append((prefix, obj))
    return out


def _metric_table(path: Path, title: str, skip: tuple[str, ...] = ()) -> str:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"### {title}\n\n{path.name} could not be read ({exc}).\n"
    head = _tstr_fractions(data) if "fractions" in data else ""
    rows = _flatten({k: v for k, v in data.items() if k not in skip})
    if not rows:
        return f"### {title}\n\n{path.name} holds no numeric values.\n"
    lines = [f"### {title}", "", f"From `{path.name}`.", "", *([head, ""] if head else []), "| metric | value |", "|---|---|"]
    for k, v in rows:
        lines.append(f"| {k} | {v if isinstance(v, str) else f'{v:.4g}'} |")
    return "\n".join(lines) + "\n"


def _tstr_fractions(data: Mapping[str, Any]) -> str:
    """Mean AUROC over findings per TSTR arm at each share of the real training patients."""
    fr = data["fractions"]
    keys = sorted(fr, key=float)
    arms = list(dict.fromkeys(a for k in keys for a in fr[k]["arms"]))
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| real patients | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for k in keys:
        means = fr[k].get("mean_auroc_findings", {})
        lines.append(f"| {100 * float(k):g} % ({fr[k].get('n_real_patients')}) | " + " | ".join(fmt(means.get(a)) for a in arms) + " |")
    return ("Mean test AUROC over findings, per arm, at each share of the real training patients (the rest of "
            f"this table is at {100 * float(keys[-1]):g} %):\n\n" + "\n".join(lines))


def _memorization_section(path: Path) -> str:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001
        return f"### Memorisation audit\n\n{path.name} could not be read ({exc}).\n"
    n = len(df)
    flagged = int(df["flagged"].astype(bool).sum()) if "flagged" in df.columns else None
    lines = ["### Memorisation audit", "", f"{n} samples audited against their nearest real training images."]
    if flagged is not None:
        lines.append(f"{flagged} flagged as too close to a training image ({100 * flagged / max(n, 1):.2f} %).")
    num = [c for c in df.columns if c not in ("flagged",) and pd.api.types.is_float_dtype(df[c])]
    for c in num:
        s = df[c].dropna()
        if len(s):
            lines.append(f"- `{c}`: median {s.median():.4g}, min {s.min():.4g}, max {s.max():.4g}")
    return "\n".join(lines) + "\n"


def _reid_section(path: Path, gate: bool) -> str:
    """The re-identification audit from reid.json: verifier quality, calibration, what it matched."""
    title = "### Patient re-identification audit"
    try:
        data = json.loads(path.read_text())
        ver, aud, smp = data["verification"], data["audit"], data["samples"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        return f"{title}\n\n{path.name} could not be read ({exc!r}).\n"
    check, follow = aud.get("heldout_check") or {}, aud.get("followup_reid") or {}
    lines = [
        title,
        "",
        f"From `{path.name}`. A patient-verification network trained on pairs of real training scans (same patient or "
        f"not) reaches ROC AUC {ver['auc']:.4f} on {ver['n_same_pairs']} same-patient and {ver['n_different_pairs']} "
        f"different-patient pairs of held-out patients. Every sample was compared with all training scans; it counts "
        f"as matched to a training patient when its best score exceeds {aud['threshold']:.4f}, the cut at which "
        f"{_pct(aud['false_match_rate'])} of unseen patients' scans (val split) are matched.",
        "",
        "| | images | matched |",
        "|---|---|---|",
        f"| synthetic samples (gate {'on' if gate else 'off'}) | {smp['n']} | {smp['n_matched']} ({_pct(smp['match_rate'])}) |",
    ]
    if check:
        lines.append(f"| unseen real patients (test split; the false-match reference) | {check['n']} | "
                     f"{check['n_matched']} ({_pct(check['match_rate'])}) |")
    if follow.get("n"):
        lines += ["", f"For scale: given one study of an unseen patient in the gallery, the audit re-identifies "
                      f"the patient from another study {_pct(follow['rate'])} of the time ({follow['n']} patients)."]
    worst = sorted(smp.get("per_combination", {}).items(), key=lambda kv: (-kv[1]["match_rate"], kv[0]))[:5]
    if worst and worst[0][1]["n_matched"]:
        lines += ["", "| label combination | samples | matched |", "|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['n_matched']} ({_pct(v['match_rate'])}) |" for k, v in worst if v["n_matched"]]
    return "\n".join(lines) + "\n"


LOW_AGREEMENT = 0.8  # below this share the card warns that a label's images often do not show it


def _oracle_section(path: Path | None, info: Mapping[str, Any]) -> str | None:
    """The ground-truth oracle's table (phantom), or the statement that the source has none."""
    fmt = ((info.get("config") or {}).get("dataset") or {}).get("format")
    if fmt is None:
        return None
    lines = oracle_card_section(json.loads(path.read_text()) if path is not None else None, str(fmt))
    return "\n".join(lines) if lines else None


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.1f}%"


def _agreement_section(path: Path) -> str:
    """Per label: how often the independent checker classifier reads the released images as their target."""
    title = "### Label reliability (independent checker classifier)"
    try:
        data = json.loads(path.read_text())
        per = data["per_label"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        return f"{title}\n\n{path.name} could not be read ({exc!r}).\n"
    lines = [
        title,
        "",
        f"From `{path.name}`. A second classifier, trained separately from the one that steered the latents, read "
        f"every image; it agreed with the whole target on {_pct(data.get('overall_successful'))} of the "
        f"{data.get('n_successful')} samples whose optimisation succeeded. Per label, over the samples whose "
        "target includes it: \"checker agrees\" asks the whole combination to match (for reference, the same "
        f"checker's exact-match rate on real test scans is {_pct(data.get('real_test_exact_match'))}); \"checker sees "
        "it\" asks for the label alone, and \"real scans\" is the same measure on real test scans that carry it (how "
        "many in brackets): it caps what the checker can confirm. The last column is how often it sees the label on "
        "un-optimised random latents (what the generator draws unsteered).",
        "",
        "| label | samples | checker agrees | checker sees it | real scans | random latents |",
        "|---|---|---|---|---|---|",
    ]
    low, blind = [], []
    for name, row in per.items():
        agree, tpr, n_pos = row.get("agreement_successful"), row.get("real_test_tpr"), row.get("real_test_n_pos")
        real = _pct(tpr) if n_pos is None else f"{_pct(tpr)} ({n_pos})"
        lines.append(f"| {name} | {row.get('n_target', 0)} | {_pct(agree)} | {_pct(row.get('seen_successful'))} | {real} | "
                     f"{_pct(row.get('prior_rate'))} |")
        if agree is not None and agree < LOW_AGREEMENT:
            low.append(name)
            if tpr is not None and tpr < LOW_AGREEMENT:
                blind.append(name)
    if low:
        lines += [
            "",
            f"**Treat these labels with care:** the checker agrees on fewer than {LOW_AGREEMENT:.0%} of the images "
            f"labelled {', '.join(low)}. Many of them may not show the finding; a generator that rarely draws a "
            "finding unsteered can only be pushed towards it until the steering classifier is satisfied.",
        ]
    if blind:
        lines += [
            "",
            f"The checker also misses {', '.join(blind)} on more than {1 - LOW_AGREEMENT:.0%} of real test scans that "
            "show it, so part of that shortfall is the checker's: with more training scans of the finding it would "
            "be a fairer judge.",
        ]
    return "\n".join(lines) + "\n"


def _size_category(n: int) -> str:
    """Hugging Face ``size_categories`` bucket of ``n`` examples."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < bound:
            return name
    return "10M<n<100M"


def _hf_dtype(feature: Mapping[str, Any]) -> str:
    return "image" if feature.get("_type") == "Image" else str(feature["dtype"])


def front_matter(info: Mapping[str, Any]) -> dict[str, Any]:
    """Hugging Face dataset-card metadata for a release: one ``train`` split over Parquet shards (else the
    WebDataset tars, else HDF5)."""
    n = int(info["counts"]["n_released"])
    cfg = info.get("config") or {}
    license_id = str((cfg.get("archive") or {}).get("license", "other")) if isinstance(cfg, Mapping) else "other"
    fmt = stream_format(info["formats"])
    meta: dict[str, Any] = {
        "pretty_name": f"synthcxr synthetic chest X-rays: {info['name']}",
        "license": license_id,
        "task_categories": ["image-classification"],
        "tags": ["synthetic", "medical", "chest-x-ray", "multi-label"],
        "size_categories": [_size_category(n)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"{fmt}/*.{FORMATS[fmt]}"}]}],
    }
    if fmt == "parquet":
        feats = hf_features(info["label_names"])
        meta["dataset_info"] = {
            "features": [{"name": k, "dtype": _hf_dtype(v)} for k, v in feats.items()],
            "splits": [{"name": "train", "num_bytes": sum(int((sh.get("bytes") or {}).get("parquet", 0)) for sh in info["shards"]), "num_examples": n}],
        }
    return meta


def render_card(
    info: Mapping[str, Any],
    fid: Path | None = None,
    tstr: Path | None = None,
    memorization: Path | None = None,
    lco_agreement: Path | None = None,
    reid: Path | None = None,
    oracle: Path | None = None,
    pairs: Path | None = None,
) -> str:
    """The card's Markdown text for archive.json contents ``info`` and optional validation files."""
    c = info["counts"]
    gen, clf = info.get("generator") or {}, info.get("classifier") or {}
    recorded = info.get("config") or {}  # the config archive.json recorded (older archives: none)
    lco = recorded.get("lco", {}) if isinstance(recorded, Mapping) else {}
    gate = "on" if info.get("memorization_gate") else "off"
    reid_gate = "on" if info.get("reid_gate") else "off"
    render = info.get("render") or {}
    fm = yaml.safe_dump(front_matter(info), sort_keys=False, default_flow_style=False)
    parts = [
        "---",
        fm.rstrip("\n"),
        "---",
        "",
        f"# Dataset card: synthetic chest X-ray archive `{info['name']}`",
        "",
        "> **Every image in this archive is synthetic.** No image shows a real patient; each was drawn by a",
        "> generative model. Do not use these images for diagnosis or present them as real radiographs.",
        "",
        "## What it is",
        "",
        f"{c['n_released']} synthetic frontal chest X-rays at {info['resolution']} x {info['resolution']} px "
        f"(8-bit grayscale), each with a multi-label target over {len(info['label_names'])} findings: "
        f"{', '.join(info['label_names'])}. Stored in {info['n_shards']} shard(s) per format "
        f"({', '.join(f'`{f}/`' for f in info['formats'])}), listed in `manifest.parquet`, checksummed in `SHA256SUMS`. "
        "The shards hold exactly the samples of the manifest, nothing withheld. `croissant.json` describes the same "
        "release in Croissant 1.0 for dataset catalogues and `mlcroissant`.",
        "",
        "## How to read it",
        "",
        "```python",
        f"import datasets; ds = datasets.load_dataset(\"path/to/release\", split=\"train\")   # {stream_format(info['formats'])} shards",
        "import pandas as pd; df = pd.read_parquet(\"path/to/release/manifest.parquet\")    # one row per sample",
        "import synthcxr.archive; arc = synthcxr.archive.open(\"path/to/release\")          # checked reader",
        "```",
        "",
        "HDF5 shards (`h5/`): `/images` uint8 `[n, R, R]`, `/labels` uint8 `[n, L]`, `/probs` float32 `[n, L]`, "
        "`/sample_id`; row `index` of shard `shard` in the manifest. WebDataset shards (`webdataset/`): per sample "
        "`<sample_id>.png` and `<sample_id>.json` (labels and probabilities by name), e.g. "
        "`webdataset.WebDataset(urls).decode(\"pil\").to_tuple(\"png\", \"json\")`. `synthcxr.archive.stream(URL)` "
        "streams any format from a local path or fsspec URL across DataLoader workers and distributed ranks. "
        "`synthcxr verify path/to/release` checks every checksum, pixel, label, id and attribute against the manifest.",
        "",
        "## How it was made",
        "",
        "1. A Progressive Growing GAN was trained on the real training split; its exponential-moving-average "
        f"generator renders every image (generator sha256 `{gen.get('sha256', 'unknown')}`).",
        "2. Latent class optimisation: for every requested label combination, a latent vector was optimised so "
        "that a multi-label classifier trained on the real data predicts exactly that combination "
        f"(classifier sha256 `{clf.get('sha256', 'unknown')}`"
        + (f"; {lco.get('steps')} steps, lr {lco.get('lr')}, prior weight {lco.get('prior_weight')}" if lco else "")
        + (f"; with an additive offset to the generator's {lco['feature_res']} x {lco['feature_res']} features "
           f"(weight {lco.get('feature_weight')}), stored after the latent in `latents.parquet`" if lco.get("feature_res") else "")
        + (f"; every image also held inside a realism gate: no farther from real scans in that classifier's features "
           f"than the {lco['realism_quantile']:g} quantile of real validation scans" if lco.get("realism_quantile") is not None else "")
        + "). The label of an image is the target of that optimisation, confirmed by the classifier's "
        "probabilities (`prob_<label>` columns), not a radiologist's reading.",
        f"3. Images were rendered in fixed micro-batches of {render.get('batch_size')}; any sample can be recreated "
        "byte-identically with `synthcxr regenerate RELEASE SAMPLE_ID --generator generator.pt` from `latents.parquet` "
        "and the generator file whose sha256 is given above.",
        "",
        "## Counts",
        "",
        "| | samples |",
        "|---|---|",
        f"| requested | {c['n_requested']} |",
        f"| released (in manifest) | {c['n_released']} |",
        f"| withheld: label optimisation failed | {c['n_failed']} |",
        f"| withheld: flagged by memorisation audit (gate {gate}) | {c['n_flagged']} |",
        f"| withheld: matched to a training patient by re-identification audit (gate {reid_gate}) | {c.get('n_reid_matched', 0)} |",
        "",
        "Withheld samples are not in this release: not in its shards, its manifest or its latents. They stay in "
        "the producing site's working area.",
        "",
        "| finding | released samples with it |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in c["per_finding"].items()),
        "",
        "| label combination | samples |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in sorted(c["per_combination"].items(), key=lambda kv: (-kv[1], kv[0]))),
        "",
        *(card_section(info["delivery"], ((info.get("config") or {}).get("lco") or {}).get("plan")) if info.get("delivery") else []),
        "## Intended use",
        "",
        "- Augmenting or pre-training chest X-ray classifiers, especially for rare label combinations.",
        "- Method development, teaching and software testing where real scans cannot be shared.",
        "- Research on generative models and their evaluation.",
        "",
        "## Limits",
        "",
        "- Labels are what the optimisation asked for and the classifier accepted; they inherit the classifier's "
        "errors and biases and were not confirmed by radiologists.",
        "- The generator reproduces the training population (scanners, views, demographics, label noise) and its "
        "artefacts; rare findings may look less varied than real ones.",
        f"- Resolution is {info['resolution']} px; fine findings may not be rendered faithfully.",
        "- A memorisation audit reduces, but cannot rule out, near-copies of training images; a re-identification "
        "audit reduces, but cannot rule out, images that show a training patient. Both are only as strong as "
        "the networks they use (their held-out numbers are below).",
        "- Not a medical device; not for clinical decisions.",
        "",
        "## Validation",
        "",
    ]
    val = [
        _agreement_section(lco_agreement) if lco_agreement else None,
        _metric_table(fid, "Fidelity and diversity (FID and related)") if fid else None,
        _metric_table(tstr, "Train on synthetic, test on real", skip=("fractions", "runs")) if tstr else None,
        _memorization_section(memorization) if memorization else None,
        _reid_section(reid, bool(info.get("reid_gate"))) if reid else None,
        _oracle_section(oracle, info),
        pairs_card_section(info, json.loads(pairs.read_text()) if pairs else None),
    ]
    val = [v for v in val if v]
    parts += val if val else ["No validation results were available when this card was written.", ""]
    parts += [
        "",
        "## Provenance",
        "",
        f"- package version {info.get('package_version')}, archive format {info.get('format_version')}, created {info.get('created')}",
        f"- generator: `{gen.get('file')}` sha256 `{gen.get('sha256')}`",
        f"- steering classifier: `{clf.get('file')}` sha256 `{clf.get('sha256')}`",
        "- full configuration: `archive.json` (key `config`)",
        "",
    ]
    return "\n".join(parts)

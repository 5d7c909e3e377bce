"""Planned against released: the delivery table, its floor (archive.min_delivery) and where it is stated."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import pytest
from archive_fixtures import LABELS, build_archive

from synthcxr.archive.delivery import DeliveryError, card_section, delivery_table, finding_mix_tv, shortfalls
from synthcxr.archive.finalize import finalize_archive
from synthcxr.archive.sample import ArchiveConfig
from synthcxr.archive.seal import seal_release
from synthcxr.labels import combo_key


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    return build_archive(tmp_path_factory.mktemp("delivery") / "demo")


def test_delivery_table_against_a_hand_count():
    names = ["Effusion", "Mass", "No_Finding"]
    t = pd.DataFrame({"Effusion": [1, 1, 1, 0, 0, 1], "Mass": [0, 1, 0, 0, 0, 1], "No_Finding": [0, 0, 0, 1, 1, 0]})
    t["combination"] = ["Effusion", "Effusion+Mass", "Effusion", "No_Finding", "No_Finding", "Effusion+Mass"]
    released = np.array([1, 0, 1, 1, 0, 0], bool)
    failed = np.array([0, 1, 0, 0, 0, 1], bool)  # row 4 was withheld by an audit
    d = delivery_table(t, names, released, failed)
    assert (d["planned"], d["released"]) == (6, 3) and d["share"] == 0.5
    assert d["per_finding"]["Effusion"] == {"planned": 4, "released": 2, "failed": 2, "withheld": 0, "share": 0.5}
    assert d["per_finding"]["Mass"] == {"planned": 2, "released": 0, "failed": 2, "withheld": 0, "share": 0.0}
    assert d["per_finding"]["No_Finding"] == {"planned": 2, "released": 1, "failed": 0, "withheld": 1, "share": 0.5}
    assert d["per_combination"]["Effusion+Mass"]["released"] == 0
    # mix: planned (4, 2, 2)/8, released (2, 0, 1)/3 -> 0.5 * (|.5-.667| + |.25-0| + |.25-.333|) = 0.25
    assert d["finding_mix_tv"] == pytest.approx(0.25, abs=1e-6)
    assert finding_mix_tv({"a": 3, "b": 1}, {"a": 3, "b": 1}) == 0.0
    below, short = shortfalls(d, 0.3)
    assert [x.split()[0] for x in below] == ["Mass"]
    assert [x.split()[0] for x in short] == ["Effusion", "No_Finding"]  # combinations planned < 3 times never warn
    below, short = shortfalls(d, 0.0)
    assert below == [] and "Mass 0 of 2 (0 %; 2 failed LCO, 0 withheld by audits)" in short


def test_delivery_counts_samples_withheld_with_their_pair_apart_from_the_audits():
    names = ["Effusion", "No_Finding"]
    t = pd.DataFrame({"Effusion": [0, 1, 0, 1, 1], "No_Finding": [1, 0, 1, 0, 0]})
    t["combination"] = ["No_Finding", "Effusion", "No_Finding", "Effusion", "Effusion"]
    released = np.array([0, 0, 1, 1, 0], bool)
    failed = np.array([0, 0, 0, 0, 1], bool)
    with_pair = np.array([0, 1, 0, 0, 0], bool)  # row 0 withheld by an audit took its variant (row 1) with it
    d = delivery_table(t, names, released, failed, with_pair)
    assert d["per_finding"]["Effusion"] == {"planned": 3, "released": 1, "failed": 1, "withheld": 0, "share": 0.333333,
                                            "withheld_with_pair": 1}
    assert d["per_finding"]["No_Finding"]["withheld"] == 1 and d["per_finding"]["No_Finding"]["withheld_with_pair"] == 0
    _, short = shortfalls(d, 0.0)
    assert "Effusion 1 of 3 (33 %; 1 failed LCO, 0 withheld by audits, 1 withheld with their pair)" in short
    assert "withheld with pair |" in "\n".join(card_section(d, {}))
    assert "withheld_with_pair" not in delivery_table(t, names, released, failed)["per_finding"]["Effusion"]


def _expected(arch) -> dict[str, tuple[int, int]]:
    """(planned, released) per finding, counted straight from the faked LCO rows and the audit table."""
    rows = arch["rows"]
    flagged = set(pd.read_parquet(arch["mem"]).query("flagged")["sample_id"])
    rel = rows["success"] & ~rows["sample_id"].isin(flagged)
    return {n: (int((rows[f"target_{n}"] == 1).sum()), int(((rows[f"target_{n}"] == 1) & rel).sum())) for n in LABELS}


def test_archive_json_card_and_log_state_planned_against_released(arch, caplog):
    d = arch["info"]["delivery"]
    want = _expected(arch)
    assert {n: (r["planned"], r["released"]) for n, r in d["per_finding"].items()} == want
    combos = arch["rows"].apply(lambda r: combo_key([r[f"target_{n}"] for n in LABELS], LABELS), axis=1)
    assert {c: v["planned"] for c, v in d["per_combination"].items()} == combos.value_counts().to_dict()
    # the released counts of archive.json agree with the manifest the release holds
    man = pd.read_parquet(arch["release"] / "manifest.parquet")
    counts = arch["info"]["counts"]
    assert counts["per_finding"] == {n: int(man[n].sum()) for n in LABELS}
    assert counts["per_combination"] == man.apply(lambda r: combo_key([r[n] for n in LABELS], LABELS), axis=1).value_counts().to_dict()
    assert d["min_delivery"] == 0.0 and d["short"], "the fixture's faked failures leave findings short"
    assert json.loads((arch["work"] / "delivery.json").read_text())["per_finding"] == d["per_finding"]
    card = (arch["release"] / "README.md").read_text()
    assert "## Delivery: planned against released" in card
    n = LABELS[0]
    assert f"| {n} | {want[n][0]} | {want[n][1]} | {100 * want[n][1] / want[n][0]:.0f} % |" in card
    with caplog.at_level(logging.INFO, logger="synthcxr"):
        seal_release(arch["release"], memorization=arch["mem"])
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("DELIVERY SHORT: ") for m in msgs)
    assert f"{n} {want[n][1]}/{want[n][0]}" in msgs[-1] and "planned samples" in msgs[-1]  # the last line says it


def test_a_release_below_min_delivery_fails_naming_the_findings_and_writes_nothing(arch, tmp_path, caplog):
    want = _expected(arch)
    worst = min(LABELS, key=lambda n: want[n][1] / want[n][0])
    floor = want[worst][1] / want[worst][0] + 1e-3  # just above the worst finding's share
    cfg = dataclasses.replace(arch["cfg"], min_delivery=floor)
    release = tmp_path / "release"
    with pytest.raises(DeliveryError) as err:
        finalize_archive(arch["work"], release, cfg, arch["lats"], arch["gen"], arch["clf"], arch["mem"], shard_size=11)
    msg = str(err.value)
    assert f"archive.min_delivery is {floor:g}" in msg and f"{worst} {want[worst][1]} of {want[worst][0]}" in msg
    assert "Nothing was released" in msg and "lco.retries" in msg and "pggan.finding_floor" in msg
    assert not release.exists() or not any(release.iterdir())
    # just below it: released, and every finding short of its plan is a loud warning
    cfg = dataclasses.replace(arch["cfg"], min_delivery=floor - 2e-3)
    with caplog.at_level(logging.WARNING, logger="synthcxr"):
        info = finalize_archive(arch["work"], release, cfg, arch["lats"], arch["gen"], arch["clf"], arch["mem"], shard_size=11)
    short = {n for n in LABELS if want[n][1] < want[n][0]}
    warned = {r.getMessage().split()[2] for r in caplog.records if r.getMessage().startswith("DELIVERY SHORT: ") and "combination" not in r.getMessage()}
    assert warned == short and info["counts"]["n_released"] == sum(1 for _ in pd.read_parquet(release / "manifest.parquet").index)


def test_min_delivery_outside_0_1_is_refused(arch):
    with pytest.raises(ValueError, match=r"'archive.min_delivery': 1.5 is greater than the maximum of 1"):
        ArchiveConfig.from_section({**dataclasses.asdict(arch["cfg"]), "min_delivery": 1.5})


def test_delivery_figure_is_a_png_of_every_planned_finding(arch, tmp_path):
    from PIL import Image

    from synthcxr.validate.figures import delivery_bars

    delivery_bars(arch["info"]["delivery"], tmp_path / "delivery.png")
    with Image.open(tmp_path / "delivery.png") as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200


def test_the_card_names_the_plan_mode_that_made_the_archive(arch):
    from synthcxr.archive.delivery import card_section

    lines = card_section(arch["info"]["delivery"], {"mode": "augment", "n_samples": 27, "min_positives": 5})
    assert "Label plan: `augment` (every finding raised to at least 5 samples (real combinations only)" in "\n".join(lines)
    assert not any(x.startswith("Label plan") for x in card_section(arch["info"]["delivery"], None))


def test_the_card_says_which_findings_the_plan_left_out_and_why():
    from synthcxr.archive.delivery import card_section

    t = pd.DataFrame({"Effusion": [1, 0], "Mass": [0, 0], "No_Finding": [0, 1], "combination": ["Effusion", "No_Finding"]})
    d = delivery_table(t, ["Effusion", "Mass", "No_Finding"], np.array([True, True]), np.array([False, False]))
    text = "\n".join(card_section(d, {"mode": "match_real", "min_checker_sensitivity": 0.8}))
    assert "**Not planned:** Mass. The plan leaves out every finding the independent checker calls on fewer than 80 %" in text
    assert "| Mass | 0 | 0 | - | 0 | 0 |" in text
    assert "(the label plan asked for none)" in "\n".join(card_section(d, {"mode": "quotas"}))

"""pggan-allocations: schedule hours and job counts against hand computations."""

import json

import pytest

from synthcxr.pggan.allocations import allocations_needed, cli, measured_rates, schedule_rows
from synthcxr.pggan.schedule import Schedule

NIH = "config/examples/nih-cxr14.yaml"


def test_allocations_needed_hand_computed():
    # NIH example at 6 img/s: 10,200 kimg / 6 / 3600 = 472.22 h = 28,333 min; 4,305 usable min per job -> 6.58
    assert allocations_needed(10_200_000 / 6 / 3600, 4320, 15) == 7
    # exactly divisible: 2 h = 120 min in 60-min usable slices is 2 jobs, not 3
    assert allocations_needed(2.0, 75, 15) == 2
    assert allocations_needed(2.0 + 1e-6, 75, 15) == 3
    assert allocations_needed(0.01, 600, 15) == 1
    with pytest.raises(ValueError, match="no training time"):
        allocations_needed(1.0, 10, 15)


def test_schedule_rows_use_measured_rate_where_known(tmp_path):
    sched = Schedule(16, 2, 2, {4: 4, 8: 4, 16: 4}, None)
    per_res = sched.nimg_per_res()
    assert per_res == {4: 2000, 8: 4000, 16: 4000}  # stable 2 kimg at 4 px; fade + stable after
    log = tmp_path / "log.jsonl"
    rows = [{"kimg": 1, "res": 4, "img/s": 100.0}, {"kimg": 2, "res": 4, "img/s": 300.0},
            {"kimg": 3, "res": 4, "img/s": 200.0}, {"kimg": 4, "res": 8, "img/s": 50.0}]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rates = measured_rates(log)
    assert rates == {4: 200.0, 8: 50.0}  # median per resolution
    out = schedule_rows(sched, 10.0, rates)
    assert [(r.res, r.img_per_s, r.source) for r in out] == [(4, 200.0, "measured"), (8, 50.0, "measured"),
                                                             (16, 10.0, "given")]
    assert sum(r.hours for r in out) == pytest.approx((2000 / 200 + 4000 / 50 + 4000 / 10) / 3600)
    with pytest.raises(ValueError, match="16 px"):
        schedule_rows(sched, None, rates)
    # a phase too short to be logged takes the next larger resolution's (slower) measured rate
    out = schedule_rows(sched, None, {8: 50.0, 16: 25.0})
    assert [(r.img_per_s, r.source) for r in out] == [(50.0, "from 8 px"), (50.0, "measured"), (25.0, "measured")]


def test_bad_log_line_names_file_and_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"res": 4, "img/s": 1.0}) + "\n" + '{"res": 8}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl:2"):
        measured_rates(log)


def test_cli_nih_example(capsys):
    assert cli(["--configfile", NIH, "--img-per-s", "6"]) == 0
    out = capsys.readouterr().out
    assert "total: 10200 kimg, 472.2 h of training" in out
    assert "7 allocation(s) needed; pggan.allocations is 12" in out


def test_cli_fails_when_allocations_too_few(capsys):
    # at 2 img/s the same schedule is 1,416.7 h = 85,000 min / 4,305 -> 19.7 -> 20 jobs
    assert cli(["--configfile", NIH, "--img-per-s", "2"]) == 1
    assert "raise it to at least 20" in capsys.readouterr().out


def test_cli_config_error_exit_2(tmp_path, capsys):
    assert cli(["--configfile", str(tmp_path / "missing.yaml"), "--img-per-s", "6"]) == 2
    assert "missing.yaml" in capsys.readouterr().err

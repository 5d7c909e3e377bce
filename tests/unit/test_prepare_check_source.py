"""check_source: the DAG refuses a dataset whose folder or label tables are missing, before queueing."""

import pytest

from synthcxr.config import ConfigError
from synthcxr.data.prepare import check_source

LABELS = ["Atelectasis", "Effusion"]


def test_missing_root_names_key_and_path(tmp_path):
    with pytest.raises(ConfigError, match=r"'dataset\.root': folder .*nowhere does not exist"):
        check_source({"name": "d", "max_res": 32, "format": "nih", "root": str(tmp_path / "nowhere")}, LABELS)


def test_root_without_label_table(tmp_path):
    with pytest.raises(ConfigError, match="Data_Entry_2017.csv"):
        check_source({"name": "d", "max_res": 32, "format": "nih", "root": str(tmp_path)}, LABELS)
    with pytest.raises(ConfigError, match="dataset.label_csv"):
        check_source({"name": "d", "max_res": 32, "format": "dicom", "root": str(tmp_path), "label_csv": "labels-2026.csv"}, LABELS)


def test_readable_sources_pass(tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n")
    check_source({"name": "d", "max_res": 32, "format": "nih", "root": str(tmp_path)}, LABELS)
    check_source({"name": "d", "max_res": 32, "format": "phantom"}, LABELS)

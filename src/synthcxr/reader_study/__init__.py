"""Reader study for radiologists: blinded real-vs-generated kit, offline reader page, scoring.

``kit`` builds ``reader_kit/`` (page + anonymised images) and a separate ``answer_key/key.csv``;
``score`` turns the CSVs the page exports into accuracy, sensitivity/specificity, binomial tests
against chance and inter-reader agreement; ``cli`` exposes both as ``synthcxr reader-study``.
"""

from .kit import (
    ImageSource,
    ReaderStudyConfig,
    archive_source,
    array_source,
    build_kit,
    build_study,
    png_folder_source,
)
from .score import (
    ReaderStudyInputError,
    cohen_kappa,
    fleiss_kappa,
    read_answers,
    read_key,
    score,
    score_files,
)

__all__ = [
    "ImageSource",
    "ReaderStudyConfig",
    "ReaderStudyInputError",
    "archive_source",
    "array_source",
    "build_kit",
    "build_study",
    "cohen_kappa",
    "fleiss_kappa",
    "png_folder_source",
    "read_answers",
    "read_key",
    "score",
    "score_files",
]

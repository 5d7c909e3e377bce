"""Reader study for radiologists: blinded real-vs-generated kit, offline reader page, scoring.

``sources`` supplies the images (generated and real), ``page`` encodes them and renders the offline page,
``kit`` builds ``reader_kit/`` and a separate ``answer_key/key.csv``; ``answers`` reads and checks the
key and the CSVs the page exports, ``stats`` holds the tests (accuracy against chance, equivalence,
rating AUC, kappas), ``score`` puts them together; ``cli`` exposes both as ``synthcxr reader-study``.
"""

from .answers import ReaderStudyInputError, read_answers, read_key
from .kit import ReaderStudyConfig, build_kit, build_study
from .score import score, score_files
from .sources import PngFolder, archive_source, array_source, png_folder_source
from .stats import cohen_kappa, fleiss_kappa

__all__ = [
    "PngFolder",
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

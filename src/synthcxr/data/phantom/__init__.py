"""Built-in procedural chest X-ray phantom with known ground truth (cohort, renderer, on-disk layouts)."""

from ...labels import PHANTOM_LABELS
from .anatomy import StudyGeometry, measure_ctr, study_geometry
from .cohort import sample_cohort, true_labels
from .config import CHESTXRAY14_PREVALENCE, CHEXNET_AUROC, FINDINGS, PhantomConfig
from .layouts import LAYOUTS, cli, write_layout
from .render import geometry_density, iter_images, render

__all__ = [
    "CHESTXRAY14_PREVALENCE",
    "CHEXNET_AUROC",
    "FINDINGS",
    "LAYOUTS",
    "PHANTOM_LABELS",
    "PhantomConfig",
    "StudyGeometry",
    "cli",
    "geometry_density",
    "iter_images",
    "measure_ctr",
    "render",
    "sample_cohort",
    "study_geometry",
    "true_labels",
    "write_layout",
]

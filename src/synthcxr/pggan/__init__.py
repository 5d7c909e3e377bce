"""Progressive Growing GAN (Karras et al. 2018) for grayscale chest X-rays: networks, training, loading."""

from .checkpoint import load_generator
from .config import PGGANConfig
from .networks import Discriminator, Generator
from .train import train_pggan

__all__ = ["Discriminator", "Generator", "PGGANConfig", "load_generator", "train_pggan"]

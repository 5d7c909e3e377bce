"""synthcxr: synthetic chest X-ray archives from a Progressive Growing GAN and latent class optimisation."""

__version__ = "0.1.0"

"""dreamfield: text to 3D and 3D editing by score distillation through a frozen latent diffusion prior."""

__version__ = "0.1.0"

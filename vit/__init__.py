"""vit: a Vision Transformer from scratch in plain PyTorch."""

__version__ = "0.1.0"

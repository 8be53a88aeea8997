"""KA-MIG: Knowledge-Augmented Masked Image Generation, as a reproducible DVC pipeline."""

__version__ = "0.1.0"

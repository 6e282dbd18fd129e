"""dmlsynth: a reproducible benchmark for deep metric learning with synthetic intra-class samples."""

__version__ = "0.1.0"

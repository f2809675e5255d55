"""scoredistill: distillation measured against exact teachers."""

__version__ = "0.1.0"

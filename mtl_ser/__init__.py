"""mtl-ser: speech emotion recognition jointly trained with CTC speech recognition."""

__version__ = "0.1.0"

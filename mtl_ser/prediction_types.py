"""What a recognizer returns, shared by the PyTorch (`mtl_ser.inference`) and the ONNX
(`mtl_ser.onnx_predictor`) recognizers; no torch needed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")


@dataclass
class WindowPrediction:
    """One window of a recording: seconds from the start, label and class probabilities."""

    start: float
    end: float
    emotion: str
    probabilities: dict[str, float]
    transcript: str | None


@dataclass
class Prediction:
    """What a recognizer says about one recording.

    ``emotion`` / ``probabilities`` are over the whole recording; ``transcript`` is None for
    a model without CTC head; ``error`` is set (and the rest empty) when the file could not
    be scored; ``abstained`` is True when its largest probability is below the confidence
    asked for (`mtl_ser.predict.apply_min_confidence`; ``emotion`` is then still the most
    probable class).
    """

    path: str | None
    emotion: str | None
    probabilities: dict[str, float]
    transcript: str | None
    duration: float | None
    windows: list[WindowPrediction] = field(default_factory=list)
    error: str | None = None
    abstained: bool = False
    # The other tasks' predictions by task name (A/V/D values, a speaker attribute's label
    # and probabilities), over the whole recording.
    tasks: dict = field(default_factory=dict)
    # The greedy CTC transcript when ``transcript`` comes from a beam decoder (the model's
    # ``ctc_decoding: beam``; evaluate scores both); None otherwise.
    greedy_transcript: str | None = None


@dataclass
class Embedding:
    """An utterance-level vector of one recording (``vector`` None and ``error`` set when the
    recording could not be embedded)."""

    path: str | None
    vector: np.ndarray | None  # [D] float32
    duration: float | None
    error: str | None = None


def window_bounds(n_samples: int, limit: float) -> list[tuple[int, int]]:
    """Splits ``n_samples`` into ceil(n_samples / limit) equal windows: [(start, end)]
    (``limit`` in samples; math.inf: one window)."""
    count = max(1, math.ceil(n_samples / limit))
    bounds = [round(k * n_samples / count) for k in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))

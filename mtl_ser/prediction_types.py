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


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A recording's value from its windows': ``[N, K]`` values and ``[N]`` weights (the
    windows' lengths) -> ``[K]`` float64, the weighted mean."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    return (values * weights[:, None]).sum(0) / weights.sum()


def describe_task_values(values: np.ndarray, info: dict) -> dict:
    """An exported task's prediction (JSON-serialisable) from its ``[K]`` values.

    Args: values: the recording's (window-averaged) values: A/V/D for a ``dimensions``
        task, class probabilities for a ``speaker_attribute`` one; info: the task's
        `Task.export_info` (``kind`` and ``dimensions`` / ``classes``).

    Returns: ``{dimension: value}`` or ``{"label", "probabilities": {class: p}}``.
    """
    if info["kind"] == "dimensions":
        return {d: float(v) for d, v in zip(info["dimensions"], values, strict=True)}
    if info["kind"] == "speaker_attribute":
        return {
            "label": info["classes"][int(np.argmax(values))],
            "probabilities": {c: float(p) for c, p in zip(info["classes"], values, strict=True)},
        }
    raise ValueError(f"task kind {info['kind']!r} has no exported prediction")


def combine_windows(
    path: str,
    duration: float,
    spans: list[tuple[float, float]],
    probs: np.ndarray,
    labels: tuple[str, ...],
    transcripts: list[str] | None,
    task_values: dict[str, np.ndarray],
    task_infos: dict[str, dict],
    greedy_transcripts: list[str] | None = None,
) -> Prediction:
    """One recording's `Prediction` from its scored windows (the PyTorch and the ONNX
    recognizers both end here).

    Args:
        path: the recording's name; duration: its seconds.
        spans: each window's (start, end) in seconds (N windows).
        probs: ``[N, C]`` emotion probabilities of the windows, classes in ``labels``' order.
        transcripts: each window's transcript (the model's decoder), or None without CTC.
        task_values: ``{task: [N, K]}`` per-window values of the other exported tasks.
        task_infos: ``{task: export_info}`` of those tasks.
        greedy_transcripts: each window's greedy transcript when the decoder is a beam
            search (None otherwise).

    Returns: the duration-weighted mean of the windows' probabilities and task values, the
    windows' transcripts joined by spaces, and one `WindowPrediction` per window.
    """
    weights = np.array([end - start for start, end in spans], dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    overall = weighted_mean(probs, weights)

    def as_dict(p):
        return {label: float(x) for label, x in zip(labels, p, strict=True)}

    windows = [
        WindowPrediction(
            start=start,
            end=end,
            emotion=labels[int(probs[k].argmax())],
            probabilities=as_dict(probs[k]),
            transcript=None if transcripts is None else transcripts[k],
        )
        for k, (start, end) in enumerate(spans)
    ]
    tasks = {
        name: describe_task_values(weighted_mean(task_values[name], weights), info)
        for name, info in task_infos.items()
    }
    return Prediction(
        path=path,
        emotion=labels[int(overall.argmax())],
        probabilities=as_dict(overall),
        transcript=None if transcripts is None else " ".join(t for t in transcripts if t),
        greedy_transcript=(
            None if greedy_transcripts is None else " ".join(t for t in greedy_transcripts if t)
        ),
        duration=duration,
        windows=windows,
        tasks=tasks,
    )


def task_output_meaning(info: dict) -> str:
    """What an exported task's per-window output holds, in words (for the ONNX folder's
    metadata and card), from its `Task.export_info`."""
    if info["kind"] == "dimensions":
        return f"[batch, {len(info['dimensions'])}] values of {', '.join(info['dimensions'])}"
    if info["kind"] == "speaker_attribute":
        return (
            f"[batch, {len(info['classes'])}] probabilities of {info.get('column', 'the')} "
            f"classes {', '.join(info['classes'])} (softmax of the head's logits)"
        )
    raise ValueError(f"task kind {info['kind']!r} has no exported output")


def task_vector(described: dict, info: dict) -> list[float]:
    """The inverse of `describe_task_values`: a recording's ``[K]`` values of an exported
    task from its prediction (A/V/D values, or class probabilities in ``classes``' order)."""
    if info["kind"] == "dimensions":
        return [described[d] for d in info["dimensions"]]
    if info["kind"] == "speaker_attribute":
        return [described["probabilities"][c] for c in info["classes"]]
    raise ValueError(f"task kind {info['kind']!r} has no exported prediction")

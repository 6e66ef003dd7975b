"""How far the emotion probabilities can be trusted: calibration error, Brier score,
temperature scaling and coverage vs accuracy (the math only; numpy in, floats out).

- `ece`: expected calibration error with equal-width confidence bins (Guo et al. 2017):
  sum over bins of (bin size / N) * |accuracy(bin) - mean confidence(bin)|, where the
  confidence of a prediction is its largest probability.
- `brier`: mean over utterances of the squared distance between the probability vector and
  the one-hot target (0 perfect, 2 worst).
- `fit_temperature`: the T > 0 that minimises the negative log-likelihood of
  softmax(logits / T) on the logits it is given (the VALIDATION set's: the caller's job;
  LBFGS on log T). Dividing by T never changes the arg max, only the confidence.
- `coverage_accuracy`: keeping only predictions whose confidence reaches a threshold, the
  share kept (coverage) and their accuracy, per threshold.
"""

from __future__ import annotations

import numpy as np

CALIBRATION_METHODS = ("none", "temperature")
DEFAULT_BINS = 15
# The range of a fitted temperature (model_spec.json accepts 1e-3 .. 1e3).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
# Confidence thresholds of the coverage / accuracy table (0 keeps everything).
COVERAGE_THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _check(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if probs.ndim != 2 or targets.shape != (probs.shape[0],) or probs.shape[0] == 0:
        raise ValueError(
            f"expected probabilities [N, C] and targets [N] with N > 0, got {list(probs.shape)} "
            f"and {list(targets.shape)}"
        )
    if targets.min() < 0 or targets.max() >= probs.shape[1]:
        raise ValueError(f"targets must lie in [0, {probs.shape[1] - 1}]")
    return probs, targets


def reliability_bins(probs, targets, bins: int = DEFAULT_BINS) -> list[dict]:
    """Per equal-width confidence bin: its edges, count, mean confidence and accuracy.

    Args: probs ``[N, C]`` probabilities; targets ``[N]`` class indices; bins >= 1.

    Returns: ``bins`` dicts ``{"low", "high", "count", "confidence", "accuracy"}``
    (confidence / accuracy None for an empty bin). A confidence equal to an inner edge
    falls in the bin above it, except 1.0, which falls in the last bin.
    """
    if int(bins) < 1:
        raise ValueError(f"calibration bins must be at least 1, got {bins}")
    probs, targets = _check(probs, targets)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    # floor(confidence * bins), not a search among the edges: linspace's 0.6000000000000001
    # would put a confidence of exactly 0.6 one bin too low.
    which = np.clip(np.floor(confidence * int(bins)).astype(np.int64), 0, int(bins) - 1)
    out = []
    for b in range(int(bins)):
        members = which == b
        count = int(members.sum())
        out.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return out


def ece(probs, targets, bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error (module docstring): probs ``[N, C]``, targets ``[N]``."""
    n = len(targets)
    return float(
        sum(
            b["count"] / n * abs(b["accuracy"] - b["confidence"])
            for b in reliability_bins(probs, targets, bins)
            if b["count"]
        )
    )


def brier(probs, targets) -> float:
    """Multi-class Brier score: mean_i sum_c (p_ic - [c == y_i])^2; probs ``[N, C]``,
    targets ``[N]``."""
    probs, targets = _check(probs, targets)
    onehot = np.eye(probs.shape[1])[targets]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis: ``[N, C]`` -> ``[N, C]``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits, targets, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / T): ``[N, C]``, ``[N]``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    targets = np.asarray(targets, dtype=np.int64)
    return float(-log_probs[np.arange(len(targets)), targets].mean())


def fit_temperature(logits, targets, max_iter: int = 100) -> float:
    """The temperature minimising the NLL of softmax(logits / T).

    Args: logits ``[N, C]`` (validation logits: never the test set's); targets ``[N]``.

    Returns: T in [`MIN_TEMPERATURE`, `MAX_TEMPERATURE`] (float). LBFGS runs on the inverse
    temperature, in which the NLL is convex, so clamping it to the range gives the best T
    within the range: an untrained model, whose best T is infinite (uniform
    probabilities), gets `MAX_TEMPERATURE`.
    """
    import torch

    _check(np.asarray(logits), targets)
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    beta = torch.ones((), dtype=torch.float64, requires_grad=True)  # 1 / T
    optimizer = torch.optim.LBFGS([beta], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * beta, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    beta = min(max(float(beta.detach()), 1 / MAX_TEMPERATURE), 1 / MIN_TEMPERATURE)
    return 1 / beta


def coverage_accuracy(probs, targets, thresholds=COVERAGE_THRESHOLDS) -> list[dict]:
    """What abstaining below a confidence threshold buys.

    Args: probs ``[N, C]``; targets ``[N]``; thresholds in [0, 1].

    Returns: per threshold ``{"threshold", "coverage", "accuracy", "kept"}``: the share of
    utterances whose largest probability is >= the threshold, their accuracy (None when
    none is kept) and their count.
    """
    probs, targets = _check(probs, targets)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    out = []
    for t in thresholds:
        kept = confidence >= t
        n = int(kept.sum())
        out.append(
            {
                "threshold": float(t),
                "coverage": n / len(targets),
                "accuracy": float(correct[kept].mean()) if n else None,
                "kept": n,
            }
        )
    return out


def calibration_summary(probs, targets, bins: int = DEFAULT_BINS) -> dict:
    """ECE, Brier, the reliability bins and the coverage / accuracy table of one set of
    probabilities ``[N, C]`` against targets ``[N]``."""
    return {
        "ece": ece(probs, targets, bins),
        "brier": brier(probs, targets),
        "bins": reliability_bins(probs, targets, bins),
        "coverage_accuracy": coverage_accuracy(probs, targets),
    }


def calibration_results(
    logits, targets, bins: int = DEFAULT_BINS, temperature: float | None = None
) -> dict:
    """The ``calibration`` entry of results.json.

    Args:
        logits: ``[N, C]`` uncalibrated emotion logits (or log-probabilities) of the set.
        targets: ``[N]`` class indices.
        bins: confidence bins of ECE and the reliability diagram.
        temperature: the temperature fitted on validation, or None (no scaling).

    Returns: ``{"method", "bins", "temperature", "before": summary, "after": summary or
    None}`` (summaries of `calibration_summary`; "after" with the temperature applied).
    """
    before = calibration_summary(softmax(logits), targets, bins)
    after = None
    if temperature is not None:
        after = calibration_summary(softmax(logits, temperature), targets, bins)
    return {
        "method": "none" if temperature is None else "temperature",
        "bins": int(bins),
        "temperature": temperature,
        "before": before,
        "after": after,
    }

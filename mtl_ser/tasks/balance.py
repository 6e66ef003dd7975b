"""Class weights against class imbalance, computed on the training split only.

``class_weighting``:

- ``none``: every utterance weighs 1 (the paper).
- ``inverse_frequency``: ``w_c = N / (K n_c)``.
- ``effective_number`` (Cui et al., CVPR 2019): ``w_c`` proportional to
  ``(1 - beta) / (1 - beta^n_c)``.

Both are scaled so that the mean weight over the training utterances is 1 (the loss keeps
the scale of the unweighted one, so learning rates and task weights keep their meaning).
A class absent from the training split gets weight 0 (nothing to learn it from).
"""

from __future__ import annotations

from collections import Counter

CLASS_WEIGHTINGS = ("none", "inverse_frequency", "effective_number")


def class_counts(labels: list[str], classes: tuple[str, ...]) -> list[int]:
    """Counts of each class (``classes``' order) among ``labels``."""
    counts = Counter(labels)
    return [counts.get(c, 0) for c in classes]


def class_weights(counts: list[int], scheme: str, beta: float = 0.999) -> list[float] | None:
    """The weight of each class, or None for ``none``.

    Args: counts: training utterances per class; scheme: one of `CLASS_WEIGHTINGS`;
    beta: the effective-number parameter, in [0, 1).

    Returns: ``[K]`` floats with ``sum_c n_c w_c = N`` (mean weight 1 over the utterances).
    """
    if scheme not in CLASS_WEIGHTINGS:
        raise ValueError(f"class_weighting must be one of {list(CLASS_WEIGHTINGS)}, not {scheme!r}")
    if scheme == "none":
        return None
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class_weighting_beta must be in [0, 1), not {beta}")
    if scheme == "inverse_frequency":
        raw = [1.0 / n if n else 0.0 for n in counts]
    else:
        raw = [(1.0 - beta) / (1.0 - beta**n) if n else 0.0 for n in counts]
    total = sum(counts)
    scale = total / sum(n * r for n, r in zip(counts, raw, strict=True))
    return [r * scale for r in raw]

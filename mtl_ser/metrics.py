"""Evaluation metrics shared by every recipe and report: WA, UA, macro-F1, confusion, WER, CER.

Definitions:
- WA (weighted accuracy): correct / total utterances.
- UA (unweighted accuracy): mean per-class recall over the classes present in the reference.
- macro-F1: mean F1 over the same classes.
- Weighted WA / UA (`weighted_wa`, `weighted_ua`): the same under per-utterance weights, many
  weightings at once (the resamples of a bootstrap, `mtl_ser.stats`).
- WER / CER: corpus-level (total edits / total reference words or characters) over the
  utterances that have a reference transcript.
"""

from __future__ import annotations

from collections.abc import Sequence

import jiwer
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict:
    """Classification metrics in a fixed class order.

    Args:
        y_true, y_pred: class ids (0..len(labels)-1), one per utterance.
        labels: class names in their fixed order.

    Returns:
        ``{"wa", "ua", "macro_f1", "per_class_recall": {name: recall or None},
        "confusion_matrix": [[...]] (rows = true, columns = predicted), "num_utterances"}``.
    """
    if len(y_true) == 0:
        raise ValueError("no utterance to score")
    ids = list(range(len(labels)))
    present = sorted(set(int(y) for y in y_true))
    recall = recall_score(y_true, y_pred, labels=ids, average=None, zero_division=0)
    return {
        "wa": float(accuracy_score(y_true, y_pred)),
        "ua": float(np.mean([recall[i] for i in present])),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        ),
        "per_class_recall": {
            name: (float(recall[i]) if i in present else None) for i, name in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "num_utterances": len(y_true),
    }


def weighted_wa(true: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """WA under utterance weights.

    Args:
        true, predicted: ``[N]`` class ids.
        weights: ``[B, N]`` non-negative weights (e.g. how often a resample holds each
            utterance); every row must have a positive sum.

    Returns: ``[B]`` the weighted share of correct utterances (all-ones weights: the WA of
    `classification_metrics`).
    """
    correct = (np.asarray(true) == np.asarray(predicted)).astype(float)
    return (weights * correct).sum(1) / weights.sum(1)


def weighted_ua(true: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """UA under utterance weights: the mean recall over the classes with positive weight in
    each row (all-ones weights: the UA of `classification_metrics`).

    Args:
        true, predicted: ``[N]`` class ids.
        weights: ``[B, N]`` non-negative weights, each row with a positive sum.

    Returns: ``[B]`` values.
    """
    true = np.asarray(true)
    correct = (true == np.asarray(predicted)).astype(float)
    recalls = []
    for c in np.unique(true):
        in_class = (true == c).astype(float)
        n_c = (weights * in_class).sum(1)
        hits = (weights * correct * in_class).sum(1)
        recalls.append(np.where(n_c > 0, hits / np.maximum(n_c, 1e-12), np.nan))
    return np.nanmean(np.stack(recalls, 1), axis=1)


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    """Corpus-level WER and CER.

    Args:
        references: non-empty normalised reference transcripts.
        hypotheses: hypotheses, same order (may be empty strings).

    Returns: ``{"wer", "cer", "num_utterances", "num_words"}``; wer / cer are None when
    there is no reference.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if any(not r.strip() for r in references):
        raise ValueError("empty reference transcript: filter utterances without text first")
    if not references:
        return {"wer": None, "cer": None, "num_utterances": 0, "num_words": 0}
    return {
        "wer": float(jiwer.wer(list(references), list(hypotheses))),
        "cer": float(jiwer.cer(list(references), list(hypotheses))),
        "num_utterances": len(references),
        "num_words": sum(len(r.split()) for r in references),
    }


def word_errors(reference: str, hypothesis: str) -> int:
    """Word edits (substitutions + deletions + insertions) of one utterance, counted as
    `error_rates` counts them (jiwer): the utterance's WER is this over its reference's
    word count."""
    out = jiwer.process_words(reference, hypothesis)
    return out.substitutions + out.deletions + out.insertions

"""Calibration math against hand-computed cases (mtl_ser/calibration.py)."""

import numpy as np
import pytest

from mtl_ser.calibration import (
    brier,
    calibration_results,
    coverage_accuracy,
    ece,
    fit_temperature,
    nll,
    reliability_bins,
    softmax,
)

# Four utterances, two classes. Confidences 0.9, 0.8, 0.6, 0.7; the first two are right.
PROBS = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
TARGETS = np.array([0, 1, 1, 0])


def test_ece_by_hand():
    # 2 bins [0, .5) [.5, 1]: all four in the upper bin: accuracy 0.5, confidence 0.75.
    assert ece(PROBS, TARGETS, bins=2) == pytest.approx(0.25)
    # 5 bins of 0.2: [.6,.8) holds 0.6 and 0.7 (both wrong): |0 - 0.65| * 2/4;
    # [.8, 1] holds 0.9 and 0.8 (both right): |1 - 0.85| * 2/4.
    assert ece(PROBS, TARGETS, bins=5) == pytest.approx(0.5 * 0.65 + 0.5 * 0.15)
    bins = reliability_bins(PROBS, TARGETS, bins=5)
    assert [b["count"] for b in bins] == [0, 0, 0, 2, 2]
    assert bins[3]["accuracy"] == 0 and bins[4]["confidence"] == pytest.approx(0.85)


def test_perfectly_calibrated_set_has_zero_ece():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert ece(probs, [0, 1]) == 0.0
    assert brier(probs, [0, 1]) == 0.0


def test_brier_by_hand():
    # (0.1^2 + 0.1^2) + (0.2^2 + 0.2^2) + (0.6^2 + 0.6^2) + (0.7^2 + 0.7^2), over 4.
    assert brier(PROBS, TARGETS) == pytest.approx((0.02 + 0.08 + 0.72 + 0.98) / 4)


def test_coverage_accuracy_by_hand():
    table = coverage_accuracy(PROBS, TARGETS, thresholds=(0.0, 0.75, 0.95))
    assert [(r["coverage"], r["accuracy"]) for r in table] == [(1.0, 0.5), (0.5, 1.0), (0.0, None)]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"probabilities \[N, C\]"):
        ece(PROBS, TARGETS[:3])
    with pytest.raises(ValueError, match="at least 1"):
        ece(PROBS, TARGETS, bins=0)


def _overconfident(seed: int, n: int = 400):
    """Logits whose arg max is right 70% of the time but whose softmax says ~99%."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 4, n)
    predicted = np.where(rng.random(n) < 0.7, targets, rng.integers(0, 4, n))
    logits = rng.normal(0, 1, (n, 4))
    logits[np.arange(n), predicted] += 8.0
    return logits, targets


def test_temperature_fit_reduces_nll_and_ece_on_an_overconfident_model():
    valid_logits, valid_targets = _overconfident(0)
    test_logits, test_targets = _overconfident(1)
    t = fit_temperature(valid_logits, valid_targets)
    assert t > 1.5  # overconfident: softened
    assert nll(valid_logits, valid_targets, t) < nll(valid_logits, valid_targets) - 0.5
    # It carries over to held-out data from the same model, arg max unchanged.
    before, after = softmax(test_logits), softmax(test_logits, t)
    assert ece(after, test_targets) < ece(before, test_targets) / 2
    assert (after.argmax(1) == before.argmax(1)).all()
    # The minimum: a nudge either way is worse.
    for other in (t * 0.9, t * 1.1):
        assert nll(valid_logits, valid_targets, other) > nll(valid_logits, valid_targets, t)


def test_temperature_depends_only_on_the_logits_it_is_given():
    valid_logits, valid_targets = _overconfident(0)
    t = fit_temperature(valid_logits, valid_targets)
    # Whatever the test set: its own best temperature differs, the fitted one does not move.
    test_logits, test_targets = _overconfident(2)
    test_logits = test_logits * 3
    assert fit_temperature(valid_logits, valid_targets) == t
    assert abs(fit_temperature(test_logits, test_targets) - t) > 1.0


def test_calibration_results_before_and_after():
    logits, targets = _overconfident(3, 50)
    out = calibration_results(logits, targets, bins=10, temperature=2.0)
    assert out["method"] == "temperature" and len(out["before"]["bins"]) == 10
    assert out["after"]["ece"] == pytest.approx(ece(softmax(logits, 2.0), targets, 10))
    assert calibration_results(logits, targets)["after"] is None


def test_temperature_stays_in_range_for_a_model_that_is_always_wrong():
    # Anti-correlated logits: the best inverse temperature is negative; clamped, T = 100.
    targets = np.arange(40) % 4
    logits = np.zeros((40, 4))
    logits[np.arange(40), targets] = -5.0
    assert fit_temperature(logits, targets) == 100.0

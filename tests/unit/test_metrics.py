"""Metrics with hand-computed answers."""

import pytest

from mtl_ser.metrics import classification_metrics, error_rates

LABELS = ("neu", "hap", "ang", "sad")


def test_wa_ua_f1_confusion():
    # neu: 3 of 4 right; hap: 1 of 2; ang: 0 of 1; sad: 1 of 1.
    y_true = [0, 0, 0, 0, 1, 1, 2, 3]
    y_pred = [0, 0, 0, 1, 1, 0, 3, 3]
    m = classification_metrics(y_true, y_pred, LABELS)
    assert m["wa"] == pytest.approx(5 / 8)
    assert m["ua"] == pytest.approx((3 / 4 + 1 / 2 + 0 + 1) / 4)
    assert m["per_class_recall"] == {"neu": 0.75, "hap": 0.5, "ang": 0.0, "sad": 1.0}
    f1 = [2 * 0.75 * 0.75 / 1.5, 0.5, 0.0, 2 * 0.5 * 1 / 1.5]  # neu P=3/4, sad P=1/2
    assert m["macro_f1"] == pytest.approx(sum(f1) / 4)
    assert m["confusion_matrix"] == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]]
    assert m["num_utterances"] == 8


def test_ua_counts_only_classes_in_the_reference():
    m = classification_metrics([0, 0, 1], [0, 3, 1], LABELS)
    assert m["ua"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["per_class_recall"]["ang"] is None


def test_error_rates_are_corpus_level():
    refs = ["A B C", "D E"]
    hyps = ["A X C", ""]
    rates = error_rates(refs, hyps)
    assert rates["wer"] == pytest.approx(3 / 5)  # 1 substitution + 2 deletions over 5 words
    assert rates["cer"] == pytest.approx((1 + 3) / (5 + 3))  # "A B C": 1 sub; "D E": 3 del
    assert rates["num_words"] == 5
    assert error_rates([], [])["wer"] is None
    with pytest.raises(ValueError, match="empty reference"):
        error_rates([""], ["A"])

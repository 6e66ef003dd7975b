"""Paired comparisons of settings in `mtl-ser report`, on hand-written runs with known answers."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from mtl_ser.paired import bootstrap, compare_settings, find_pairs, paired_tests, word_errors
from mtl_ser.report import find_results, write_report

LABELS = ["neu", "hap", "ang", "sad"]


def write_run(root, alpha, fold, predicted, ua, wer=None, hypotheses=None, seed=1):
    """One run of 8 test utterances (true labels cycle through LABELS); ``predicted`` gives
    its predictions, ``ua`` the per-fold UA written into results.json."""
    folder = root / f"alpha{alpha}" / f"fold{fold}"
    folder.mkdir(parents=True)
    true = [LABELS[i % 4] for i in range(8)]
    confusion = [[0] * 4 for _ in range(4)]
    for t, p in zip(true, predicted, strict=True):
        confusion[LABELS.index(t)][LABELS.index(p)] += 1
    results = {
        "schema": 2,
        "recipe": "mtl",
        "protocol": "loso",
        "alpha": alpha,
        "fold": fold,
        "seed": seed,
        "encoder": "random:tiny",
        "best_epoch": 3,
        "labels": LABELS,
        "wa": sum(t == p for t, p in zip(true, predicted, strict=True)) / 8,
        "ua": ua,
        "macro_f1": ua,
        "wer": wer,
        "cer": wer,
        "wer_improvised": wer,
        "confusion_matrix": confusion,
        "num_utterances": 8,
    }
    (folder / "results.json").write_text(json.dumps(results))
    with open(folder / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        header = ["id", "true", "predicted", *(f"p_{c}" for c in LABELS)]
        writer.writerow(header + ["reference", "hypothesis", "has_text", "scripted"])
        for i in range(8):
            hyp = "" if hypotheses is None else hypotheses[i]
            writer.writerow(
                [f"f{fold}_u{i}", true[i], predicted[i], 0.25, 0.25, 0.25, 0.25]
                + ["A B", hyp, True, False]
            )
    return folder


def test_paired_tests_known_values():
    out = paired_tests([0.5, 0.5, 0.5], [0.6, 0.7, 0.8])
    assert out["mean_diff"] == pytest.approx(0.2)
    assert out["std_diff"] == pytest.approx(0.1)
    assert out["t"] == pytest.approx(2 * math.sqrt(3))  # 0.2 / (0.1 / sqrt(3))
    assert out["p_t"] == pytest.approx(0.0742, abs=1e-3)  # t(df = 2) two-sided
    assert out["p_wilcoxon"] == pytest.approx(0.25)  # exact: 2 / 2^3
    same = paired_tests([0.5, 0.6], [0.5, 0.6])
    assert same["mean_diff"] == 0 and same["p_t"] is None and same["p_wilcoxon"] is None


def test_word_errors():
    assert word_errors("A B C", "A X C D") == 2
    assert word_errors("A B", "") == 2 and word_errors("", "A") == 1


def test_bootstrap_is_paired():
    true = np.array([0, 1, 2, 3] * 25)
    arrays = {"true": true, "first": true.copy(), "second": true.copy()}
    identical = bootstrap(arrays, "wa", samples=500)
    assert identical["diff"] == identical["ci_low"] == identical["ci_high"] == 0.0
    arrays["first"] = np.where(np.arange(100) % 2 == 0, true, (true + 1) % 4)  # half right
    better = bootstrap(arrays, "wa", samples=500)
    assert (better["first"], better["second"], better["diff"]) == (0.5, 1.0, 0.5)
    assert 0.35 < better["ci_low"] < 0.5 < better["ci_high"] < 0.65
    assert bootstrap(arrays, "ua", samples=500)["diff"] == pytest.approx(0.5)


def test_report_pairs_alpha_settings(tmp_path):
    true = [LABELS[i % 4] for i in range(8)]
    wrong = [LABELS[(i + 1) % 4] for i in range(8)]
    for fold, (ua0, ua1) in enumerate([(0.5, 0.6), (0.5, 0.7), (0.5, 0.8)], 1):
        half = true[:4] + wrong[4:]  # alpha 0: 4 of 8 right; alpha 0.1: all right
        write_run(tmp_path, 0.0, fold, half, ua0)
        write_run(tmp_path, 0.1, fold, true, ua1, wer=0.5, hypotheses=["A"] * 8)
    write_run(tmp_path, 0.01, 9, true, 0.9)  # shares no fold with the others: not paired
    runs = find_results([tmp_path])
    pairs = find_pairs(runs)
    assert [(p[1][1], p[2][1], p[3], len(p[4])) for p in pairs] == [(0.0, 0.1, "alpha", 3)]
    [c] = compare_settings(runs, samples=300)
    assert c.tests["ua"]["mean_diff"] == pytest.approx(0.2)
    assert c.tests["ua"]["t"] == pytest.approx(2 * math.sqrt(3))
    assert c.tests["wa"]["mean_diff"] == pytest.approx(0.5) and c.tests["wa"]["p_t"] is None
    assert "wer" not in c.tests  # alpha 0 has no WER
    assert (c.pooled["wa"]["first"], c.pooled["wa"]["second"], c.pooled["wa"]["n"]) == (
        0.5,
        1.0,
        24,
    )
    assert c.pooled["wa"]["ci_low"] > 0  # alpha 0.1 is better beyond the resampling noise
    assert "wer" not in c.pooled

    report = write_report([tmp_path], tmp_path / "report")
    assert "paired.csv" in {f.name for f in report["files"]}
    with open(tmp_path / "report/paired.csv") as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert rows["ua"]["first"] == "recipe=mtl alpha=0 encoder=random:tiny"
    assert rows["ua"]["second"] == "recipe=mtl alpha=0.1 encoder=random:tiny"
    assert (rows["ua"]["differs_in"], rows["ua"]["units"]) == ("alpha", "3")
    assert float(rows["ua"]["mean_diff"]) == pytest.approx(0.2)
    assert float(rows["wa"]["pooled_diff"]) == pytest.approx(0.5)
    markdown = (tmp_path / "report/summary.md").read_text()
    assert "## Paired comparisons" in markdown
    assert "| UA | 3 | +20.00 ± 10.00 | 0.0742 | 0.25 |" in markdown
    assert "| loso | recipe=mtl alpha=0 encoder=random:tiny | recipe=mtl alpha=0.1" in markdown
    assert "| WA | 3 | +50.00 ± 0.00 | – | 0.25 | 50.00 | 100.00 | +50.00 [" in markdown


def test_pooled_wer_when_both_settings_have_ctc(tmp_path):
    true = [LABELS[i % 4] for i in range(8)]
    write_run(tmp_path, 0.01, 1, true, 0.5, wer=1.0, hypotheses=[""] * 8)
    write_run(tmp_path, 0.1, 1, true, 0.5, wer=0.5, hypotheses=["A"] * 8)
    [c] = compare_settings(find_results([tmp_path]), samples=200)
    # Reference "A B": no hypothesis = 2 errors of 2 words, "A" = 1 of 2.
    assert (c.pooled["wer"]["first"], c.pooled["wer"]["second"]) == (1.0, 0.5)
    assert c.pooled["wer"]["diff"] == c.pooled["wer"]["ci_low"] == c.pooled["wer"]["ci_high"]
    assert c.tests["wer"]["mean_diff"] == pytest.approx(-0.5)


def test_pairs_follow_the_setting_fields():
    """Alpha 0 at Cai et al.'s lower learning rate pairs with alpha 0.1 (the paper's
    comparison); a CTC-scale change alone pairs; two changes at once do not."""

    def run(alpha, lr=5e-5, reduction="sum", fold=1):
        return {
            "recipe": "mtl",
            "protocol": "loso",
            "alpha": alpha,
            "fold": fold,
            "seed": 1,
            "encoder": "e",
            "labels": LABELS,
            "lr_encoder": lr,
            "lr_heads": lr,
            "ctc_reduction": reduction,
        }

    # At alpha = 0 there is no CTC reduction: None matches any.
    runs = [
        run(0.0, lr=1e-5, reduction=None),
        run(0.1),
        run(0.1, reduction="length_mean"),
        run(0.01, reduction="length_mean"),
    ]
    found = {(a[1], b[1], field) for _, a, b, field, _ in find_pairs(runs)}
    assert found == {
        (0.0, 0.1, "alpha"),  # learning rates differ along with alpha: allowed
        (0.1, 0.1, "ctc_reduction"),
        (0.01, 0.1, "alpha"),  # both length_mean
        (0.0, 0.01, "alpha"),
    }

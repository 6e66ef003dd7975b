"""Paired comparisons of settings in `mtl-ser report`, on hand-written runs with known answers."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from mtl_ser.paired import bootstrap, compare_settings, find_pairs, paired_tests, word_errors
from mtl_ser.report import write_report
from mtl_ser.report_rows import find_results
from mtl_ser.stats import cluster_bootstrap, cluster_weights
from tests.builders import setting_record

LABELS = ["neu", "hap", "ang", "sad"]


def write_run(
    root, alpha, fold, predicted, ua, wer=None, hypotheses=None, seed=1, speakers=None, **setting
):
    """One run of 8 test utterances (true labels cycle through LABELS); ``predicted`` gives
    its predictions, ``ua`` the per-fold UA written into results.json, ``speakers`` the
    speaker of each utterance (None: predictions.csv without a speaker column, as older
    runs wrote it), ``setting`` further setting keys."""
    folder = root / f"alpha{alpha}" / f"fold{fold}" / f"seed{seed}"
    folder.mkdir(parents=True)
    true = [LABELS[i % 4] for i in range(8)]
    confusion = [[0] * 4 for _ in range(4)]
    for t, p in zip(true, predicted, strict=True):
        confusion[LABELS.index(t)][LABELS.index(p)] += 1
    values = {"recipe": "mtl", "protocol": "loso", "alpha": alpha, "fold": fold, "seed": seed}
    values |= {"encoder": "random:tiny", **setting}
    results = {
        "schema": 2,
        "setting": setting_record(**values),
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
        header += ["reference", "hypothesis", "has_text", "scripted"]
        writer.writerow(header + ([] if speakers is None else ["speaker"]))
        for i in range(8):
            hyp = "" if hypotheses is None else hypotheses[i]
            writer.writerow(
                [f"f{fold}_u{i}", true[i], predicted[i], 0.25, 0.25, 0.25, 0.25]
                + ["A B", hyp, True, False]
                + ([] if speakers is None else [speakers[i]])
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
    assert [(p[1]["alpha"], p[2]["alpha"], p[3], len(p[4])) for p in pairs] == [
        (0.0, 0.1, "alpha", 3)
    ]
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
    assert rows["ua"]["first"] == "recipe=mtl alpha=0"
    assert rows["ua"]["second"] == "recipe=mtl alpha=0.1"
    assert (rows["ua"]["differs_in"], rows["ua"]["folds"]) == ("alpha", "3")
    assert float(rows["ua"]["mean_diff"]) == pytest.approx(0.2)
    assert float(rows["wa"]["pooled_diff"]) == pytest.approx(0.5)
    markdown = (tmp_path / "report/summary.md").read_text()
    assert "## Paired comparisons" in markdown
    assert "| UA | 3 | +20.00 ± 10.00 | 0.0742 | 0.25 |" in markdown
    assert "| loso | recipe=mtl alpha=0 | recipe=mtl alpha=0.1 | UA |" in markdown
    assert "**Unit of the tests: the fold.**" in markdown and "unit: the speaker" in markdown
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
        values = {"recipe": "mtl", "protocol": "loso", "alpha": alpha, "fold": fold, "seed": 1}
        values |= {"encoder": "e", "lr_encoder": lr, "lr_heads": lr, "ctc_reduction": reduction}
        return {
            "recipe": "mtl",
            "protocol": "loso",
            "alpha": alpha,
            "fold": fold,
            "seed": 1,
            "labels": LABELS,
            "setting": setting_record(**values),
        }

    # At alpha = 0 there is no CTC reduction: None matches any.
    runs = [
        run(0.0, lr=1e-5, reduction=None),
        run(0.1),
        run(0.1, reduction="length_mean"),
        run(0.01, reduction="length_mean"),
    ]
    found = {(a["alpha"], b["alpha"], field) for _, a, b, field, *_ in find_pairs(runs)}
    assert found == {
        (0.0, 0.1, "alpha"),  # learning rates differ along with alpha: allowed
        (0.1, 0.1, "ctc_reduction"),
        (0.01, 0.1, "alpha"),  # both length_mean
        (0.0, 0.01, "alpha"),
    }


def test_cluster_bootstrap_resamples_whole_clusters():
    """Two speakers of 3 utterances, all of A's right (1) and all of B's wrong (0). Drawing
    2 speakers with replacement gives AA, AB, BA, BB: accuracy 1, 0.5, 0.5, 0 with
    probabilities 1/4, 1/2, 1/4. Resampling the 6 utterances one by one would also give
    1/6, 2/6, ...: the support shows which one ran."""
    correct = np.array([1.0, 1, 1, 0, 0, 0])
    speakers = ["A", "A", "A", "B", "B", "B"]
    out = cluster_bootstrap(
        lambda w: (w * correct).sum(1) / w.sum(1), speakers, samples=4000, seed=1
    )
    assert out["estimate"] == 0.5 and out["clusters"] == 2 and out["samples"] == 4000
    support, counts = np.unique(out["values"], return_counts=True)
    assert support.tolist() == [0.0, 0.5, 1.0]
    assert counts / 4000 == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    assert (out["ci_low"], out["ci_high"]) == (0.0, 1.0)


def test_cluster_weights_resample_within_strata():
    """Fold 1 has one speaker (always drawn once), fold 2 three; every resample keeps each
    fold's number of speakers, and a speaker's utterances share one weight."""
    strata = [1, 1, 2, 2, 2, 2]
    clusters = ["s1", "s1", "s2", "s3", "s3", "s4"]
    weights = cluster_weights(clusters, strata, 500, np.random.default_rng(0))
    assert weights.shape == (500, 6)
    assert (weights[:, :2] == 1).all()  # fold 1's single speaker: always once
    assert (weights[:, 3] == weights[:, 4]).all()  # s3's two utterances move together
    assert (weights[:, [2, 3, 5]].sum(1) == 3).all()  # 3 speakers drawn in fold 2
    assert set(np.unique(weights[:, 2])) == {0.0, 1.0, 2.0, 3.0}


def test_paired_bootstrap_resamples_speakers_and_tests_folds(tmp_path):
    """One fold, 2 seeds; speakers s1 (utterances 0-3) and s2 (4-7). The first setting gets
    every utterance wrong, the second gets s1's right and s2's wrong: pooled WA 0 vs 0.5.
    Resampling speakers (with their utterances of both seeds) gives a difference of 0, 0.5
    or 1, so the 95% interval is [0, 1]; resampling the 16 utterances would give about
    [0.25, 0.75]. The t-test unit is the fold: the 2 seeds are one unit."""
    true = [LABELS[i % 4] for i in range(8)]
    wrong = [LABELS[(i + 1) % 4] for i in range(8)]
    speakers = ["s1"] * 4 + ["s2"] * 4
    for seed in (1, 2):
        write_run(tmp_path, 0.0, 1, wrong, 0.2, seed=seed, speakers=speakers)
        write_run(tmp_path, 0.1, 1, true[:4] + wrong[4:], 0.4, seed=seed, speakers=speakers)
    [c] = compare_settings(find_results([tmp_path]), samples=2000)
    wa = c.pooled["wa"]
    assert (wa["first"], wa["second"], wa["n"]) == (0.0, 0.5, 16)
    assert (wa["cluster_unit"], wa["clusters"]) == ("speaker", 2)
    assert (wa["ci_low"], wa["ci_high"]) == (0.0, 1.0)
    assert c.tests["ua"]["n"] == 1 and c.per_fold["ua"]["folds"] == [1]
    assert c.tests["ua"]["mean_diff"] == pytest.approx(0.2)
    assert wa["min_clusters"] == 2
    # Speakers known: no fallback note, but 2 speakers per fold is said to be few.
    assert not any("no speaker column" in note for note in c.notes)
    assert any("only 2 speaker(s) in a fold" in note for note in c.notes)


def test_seeds_of_a_fold_are_one_unit_of_the_tests(tmp_path):
    """2 folds x 2 seeds. UA first / second: fold 1 seeds (0.5, 0.5) / (0.6, 0.8), fold 2
    (0.5, 0.5) / (0.8, 0.8). Per-fold differences 0.2 and 0.3: n = 2 folds, mean 0.25, std
    sqrt(0.005) (not n = 4 runs with differences 0.1, 0.3, 0.3, 0.3)."""
    true = [LABELS[i % 4] for i in range(8)]
    second = {(1, 1): 0.6, (1, 2): 0.8, (2, 1): 0.8, (2, 2): 0.8}
    for (fold, seed), ua in second.items():
        write_run(tmp_path, 0.0, fold, true, 0.5, seed=seed)
        write_run(tmp_path, 0.1, fold, true, ua, seed=seed)
    [c] = compare_settings(find_results([tmp_path]), samples=100)
    test = c.tests["ua"]
    assert test["n"] == 2 and c.folds == [1, 2] and len(c.units) == 4
    assert test["mean_diff"] == pytest.approx(0.25)
    assert test["std_diff"] == pytest.approx(math.sqrt(0.005))
    assert c.per_fold["ua"]["second"] == [pytest.approx(0.7), pytest.approx(0.8)]
    # Without speakers in predictions.csv the bootstrap says what it resampled instead.
    assert c.pooled["wa"]["cluster_unit"] == "utterance"
    assert any("no speaker column" in note for note in c.notes)


def test_settings_that_differ_only_in_pooling_are_paired_not_merged(tmp_path):
    true = [LABELS[i % 4] for i in range(8)]
    for fold in (1, 2):
        write_run(tmp_path, 0.1, fold, true, 0.5, pooling="mean")
        write_run(tmp_path / "att", 0.1, fold, true, 0.6, pooling="attention")
    [c] = compare_settings(find_results([tmp_path]), samples=100)
    assert c.differs_in == "pooling" and c.tests["ua"]["n"] == 2
    assert (c.first_text, c.second_text) == (
        "recipe=mtl alpha=0.1 pooling=attention",
        "recipe=mtl alpha=0.1 pooling=mean",
    )
    assert c.tests["ua"]["mean_diff"] == pytest.approx(-0.1)

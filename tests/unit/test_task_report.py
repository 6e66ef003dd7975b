"""`mtl-ser report` per task: every task's metrics per setting, paired tests against a
baseline on any task metric, the ablation over any metric and task weighting, and emotion
accuracy by per-utterance WER bins; on hand-written results.json / predictions.csv files with
known answers."""

from __future__ import annotations

import csv
import json
import math

import pytest

from mtl_ser.ablation_plot import ablation_markdown, ablation_table
from mtl_ser.baseline import baseline_pairs
from mtl_ser.cli import main
from mtl_ser.paired import find_pairs
from mtl_ser.report import write_report
from mtl_ser.report_rows import aggregate, find_results, task_metric_values
from mtl_ser.wer_bins import bin_index, bin_names, parse_edges, report_bins
from tests.builders import setting_record

LABELS = ["neu", "hap", "ang", "sad"]
# Eight test utterances per run: (true, reference, greedy hypothesis, beam hypothesis).
# Their WER: 0, 0, 0.25, 0.25, 0.5, 1.0, no transcript, no transcript.
UTTERANCES = [
    ("neu", "a b c d", "a b c d", "a b c d"),
    ("hap", "a b c d", "a b c d", "a b c d"),
    ("ang", "a b c d", "a b c x", "a b c d"),
    ("sad", "a b c d", "a b c x", "a b c d"),
    ("neu", "a b c d", "a b x x", "a b c x"),
    ("hap", "a b", "x y", "a b"),
    ("ang", "", "z", "z"),
    ("sad", "", "", ""),
]


def write_run(
    root, fold, alpha=0.1, seed=1, predicted=None, task_metrics=None, gender=None, **setting
):
    """One run of `UTTERANCES`, its predictions ``predicted`` (default: all right),
    ``task_metrics`` as results.json's key (None: none, as runs of an older mtl-ser), the
    gender task's predictions ``gender`` (columns gender_true / gender_predicted: F for even
    utterances, M for odd ones, none for the last), and further ``setting`` keys (e.g.
    task_weighting)."""
    predicted = predicted or [u[0] for u in UTTERANCES]
    folder = root / f"alpha{alpha}-{json.dumps(setting, sort_keys=True)}" / f"f{fold}s{seed}"
    folder.mkdir(parents=True)
    confusion = [[0] * 4 for _ in range(4)]
    for (true, *_), p in zip(UTTERANCES, predicted, strict=True):
        confusion[LABELS.index(true)][LABELS.index(p)] += 1
    values = {"recipe": "mtl", "protocol": "loso", "alpha": alpha, "fold": fold, "seed": seed}
    values |= {"encoder": "random:tiny", **setting}
    ctc = alpha > 0
    results = {
        "schema": 2,
        "setting": setting_record(**values),
        **{k: values[k] for k in ("recipe", "protocol", "alpha", "fold", "seed", "encoder")},
        "best_epoch": 3,
        "labels": LABELS,
        "wa": sum(t[0] == p for t, p in zip(UTTERANCES, predicted, strict=True)) / 8,
        "ua": 0.5,
        "macro_f1": 0.5,
        "wer": 0.4 if ctc else None,
        "cer": 0.2 if ctc else None,
        "wer_improvised": 0.4 if ctc else None,
        "confusion_matrix": confusion,
        "num_utterances": 8,
    }
    if task_metrics is not None:
        results["task_metrics"] = task_metrics
    (folder / "results.json").write_text(json.dumps(results))
    with open(folder / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["id", "true", "predicted", *(f"p_{c}" for c in LABELS), "reference", "hypothesis"]
            + ["has_text", "scripted", "speaker", "hypothesis_beam"]
            + ([] if gender is None else ["gender_true", "gender_predicted"])
        )
        for i, ((true, ref, hyp, beam), p) in enumerate(zip(UTTERANCES, predicted, strict=True)):
            writer.writerow(
                [f"f{fold}_u{i}", true, p, 0.25, 0.25, 0.25, 0.25, ref, hyp if ctc else ""]
                + [bool(ref), False, f"spk{fold}_{i % 2}", beam if ctc else ""]
                + ([] if gender is None else [("", "FM"[i % 2])[i < 7], gender[i]])
            )
    return folder


def metrics(ua, ccc, mae, wer_beam=None, accuracy=None):
    """A run's task_metrics: emotion, CTC (with a beam decoder's WER when given), dimensions
    and gender, plus entries that are no metric to average (counts, a list)."""
    out = {
        "emotion": {"ua": ua, "wa": 0.5, "macro_f1": 0.5},
        "ctc": {"wer": 0.4, "cer": 0.2, "wer_improvised": 0.4, "cer_improvised": 0.2},
        "dimensions": {"ccc_mean": ccc, "mae_arousal": mae, "num_utterances": 8},
    }
    if wer_beam is not None:
        out["ctc"]["wer_beam"] = wer_beam
    if accuracy is not None:
        out["gender"] = {"accuracy": accuracy, "per_class": [0.5, 0.5], "num_utterances": 8}
    return out


def test_task_metrics_are_read_generically_and_averaged_over_folds(tmp_path):
    """2 folds x 2 seeds of one setting: dimensions/ccc_mean by (fold, seed) (1, 1) 0.2,
    (1, 2) 0.4, (2, 1) 0.6, (2, 2) 0.8: per-fold means 0.3 and 0.7, mean 0.5, std over folds
    sqrt(0.08) = 0.28284, seed spread sqrt(0.02) = 0.14142 (as the top-level metrics)."""
    runs = tmp_path / "runs"
    ccc = {(1, 1): 0.2, (1, 2): 0.4, (2, 1): 0.6, (2, 2): 0.8}
    for (fold, seed), value in ccc.items():
        wer_beam = 0.3 if fold == 1 else None  # a decoder only fold 1 ran
        accuracy = 0.9 if seed == 1 else math.nan  # NaN: no value
        write_run(runs, fold, seed=seed, task_metrics=metrics(0.5, value, 1.0, wer_beam, accuracy))
    for fold in (1, 2):  # uncertainty weighting: another setting, better CCC, worse MAE
        write_run(runs, fold, task_metrics=metrics(0.6, 0.9, 1.5), task_weighting="uncertainty")
    write_run(runs, 1, alpha=0.0)  # an older run: no task_metrics, no CTC

    found = find_results([runs])
    old = next(r for r in found if r["alpha"] == 0)
    assert task_metric_values(old) == {
        "emotion/wa": 1.0,
        "emotion/ua": 0.5,
        "emotion/macro_f1": 0.5,
    }
    rows = aggregate(found)
    zero, fixed, learned = sorted(rows, key=lambda r: (r.alpha, "task_weighting" in r.setting))
    assert "ctc/wer" not in zero.task_stats and zero.stat("emotion/wa")[0][0] == 1.0
    (mean, std, n), seed_std = fixed.stat("dimensions/ccc_mean")
    assert (mean, std, n) == (pytest.approx(0.5), pytest.approx(math.sqrt(0.08)), 2)
    assert seed_std == pytest.approx(math.sqrt(0.02))
    assert fixed.stat("ctc/wer_beam")[0] == (0.3, None, 1)  # from the runs that have it
    assert fixed.stat("gender/accuracy")[0] == (0.9, 0.0, 2)  # NaN left out
    assert "dimensions/num_utterances" not in fixed.task_stats
    assert "gender/per_class" not in fixed.task_stats

    write_report([runs], tmp_path / "report", wer_bins="0.25,0.5")
    with open(tmp_path / "report/summary.csv") as f:
        lines = {(r["alpha"], r["differs"]): r for r in csv.DictReader(f)}
    line = lines[("0.1", "task_weighting=(absent)")]
    assert float(line["dimensions/ccc_mean_mean"]) == pytest.approx(0.5)
    assert float(line["dimensions/ccc_mean_std"]) == pytest.approx(math.sqrt(0.08))
    assert float(line["dimensions/ccc_mean_seed_std"]) == pytest.approx(math.sqrt(0.02))
    assert line["dimensions/ccc_mean_n"] == "2" and line["ctc/wer_beam_n"] == "1"
    assert line["wa_mean"] == "1.0"  # the existing columns keep their meaning
    assert lines[("0.0", "task_weighting=(absent)")]["ctc/wer_mean"] == ""

    markdown = (tmp_path / "report/summary.md").read_text()
    section = markdown.split("## Metrics per task")[1].split("\n## ")[0]
    assert "### dimensions" in section and "### gender" in section
    assert "| ccc_mean ↑ | mae_arousal ↓ |" in section
    # The best of each metric in bold: uncertainty's CCC (higher), fixed's MAE (lower).
    assert (
        "| mtl | loso | 0.1 | task_weighting=uncertainty | 2 | **0.9000 ± 0.0000** "
        "| 1.5000 ± 0.0000 |" in section
    )
    assert (
        "| mtl | loso | 0.1 | task_weighting=(absent) | 4 | 0.5000 ± 0.2828 (seeds ± 0.1414) "
        "| **1.0000 ± 0.0000** (seeds ± 0.0000) |" in section
    )
    assert "ctc/wer_beam from 2 of 4 runs." in section
    assert "wer_beam ↓" in section and "cer_improvised ↓" in section


def test_paired_tests_against_a_baseline_on_task_metrics(tmp_path, capsys):
    """Baseline alpha = 0 against alpha 0.1 (fixed) and alpha 0.1 (uncertainty), which
    differs from it in two keys: without --baseline the second is never compared. Per fold
    dimensions/ccc_mean of uncertainty - baseline: +0.2, +0.4 (mean 0.3, std 0.1414);
    pooled emotion UA from predictions.csv: baseline all wrong, the others all right."""
    runs = tmp_path / "runs"
    wrong = [LABELS[(LABELS.index(u[0]) + 1) % 4] for u in UTTERANCES]
    for fold, (base, fixed, learned) in enumerate([(0.1, 0.2, 0.3), (0.2, 0.2, 0.6)], 1):
        write_run(
            runs,
            fold,
            alpha=0.0,
            predicted=wrong,
            task_metrics=metrics(0.0, base, 1, accuracy=4 / 7),
            gender=["F"] * 8,  # right for the 4 even utterances of the 7 with a gender
            task_weighting="fixed",
        )
        right = ["F", "M"] * 4
        for weighting, ccc in (("fixed", fixed), ("uncertainty", learned)):
            values = metrics(1.0, ccc, 1, accuracy=1.0)
            write_run(runs, fold, task_metrics=values, gender=right, task_weighting=weighting)
    # Without a baseline only settings that differ in one key are paired.
    default = [(p[1]["alpha"], p[2]["alpha"], p[3]) for p in find_pairs(find_results([runs]))]
    assert default == [(0.0, 0.1, "alpha"), (0.1, 0.1, "task_weighting")]
    report = tmp_path / "report"
    options = ["--output-folder", str(report), "--paired-metrics"]
    options.append("emotion/ua,dimensions/ccc_mean,gender/accuracy")
    assert main(["report", str(runs), "--baseline", "alpha=0", *options]) == 0
    printed = capsys.readouterr().out
    assert "dimensions/ccc_mean ↑ +0.3000 over 2 fold(s)" in printed
    with open(report / "paired.csv") as f:
        lines = {(r["second"], r["metric"]): r for r in csv.DictReader(f)}
    assert {m for _, m in lines} == {"emotion/ua", "dimensions/ccc_mean", "gender/accuracy"}
    learned = lines[("recipe=mtl alpha=0.1 task_weighting=uncertainty", "dimensions/ccc_mean")]
    assert learned["first"] == "recipe=mtl alpha=0 task_weighting=fixed"
    assert learned["differs_in"] == "alpha,task_weighting"
    assert float(learned["mean_diff"]) == pytest.approx(0.3)
    assert float(learned["std_diff"]) == pytest.approx(math.sqrt(0.02))
    assert learned["bootstrap_unit"] == "fold-level only" and learned["pooled_diff"] == ""
    ua = lines[("recipe=mtl alpha=0.1 task_weighting=uncertainty", "emotion/ua")]
    assert float(ua["mean_diff"]) == pytest.approx(1.0)
    assert (float(ua["pooled_first"]), float(ua["pooled_second"])) == (0.0, 1.0)
    assert ua["bootstrap_unit"] == "speaker" and ua["pooled_utterances"] == "16"
    # gender/accuracy pooled from gender_true / gender_predicted (the utterance without a
    # gender left out): 8 of 14 right against 14 of 14.
    gender = lines[("recipe=mtl alpha=0.1 task_weighting=uncertainty", "gender/accuracy")]
    assert float(gender["mean_diff"]) == pytest.approx(3 / 7)
    assert float(gender["pooled_first"]) == pytest.approx(4 / 7)
    assert float(gender["pooled_second"]) == 1.0 and gender["bootstrap_unit"] == "speaker"
    fixed = lines[("recipe=mtl alpha=0.1", "dimensions/ccc_mean")]
    assert float(fixed["mean_diff"]) == pytest.approx(0.05)
    markdown = (report / "summary.md").read_text()
    assert "Every setting against the baseline `alpha=0`" in markdown
    assert "Fold-level tests only (no pooled bootstrap" in markdown
    assert "| dimensions/ccc_mean ↑ | 2 | +0.3000 ± 0.1414 |" in markdown

    # The baseline by a prefix of its setting digest (summary.csv's setting_digest).
    found = find_results([runs])
    digest = next(r.key for r in aggregate(found) if r.alpha == 0)
    pairs, notes = baseline_pairs(found, digest[:6])
    assert [(p[1]["alpha"], p[2].get("task_weighting")) for p in pairs] == [
        (0.0, "fixed"),
        (0.0, "uncertainty"),
    ]
    assert notes == []
    # A baseline that matches no setting, or two of one protocol: one line, nothing written.
    nothing = tmp_path / "x"
    for spec, expected in (
        ("alpha=0.5", "--baseline 'alpha=0.5' matches no setting"),
        ("alpha=0.1", "--baseline 'alpha=0.1' matches 2 settings of protocol loso"),
    ):
        assert main(["report", str(runs), "--baseline", spec, "--output-folder", str(nothing)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err
    assert main(["report", str(runs), "--paired-metrics", "gender/ua"]) == 2
    err = capsys.readouterr().err
    assert "--paired-metrics: no run reports 'gender/ua'; metrics found: wa, ua," in err
    assert not nothing.exists() and not (runs / "summary.md").exists()


def test_task_weighting_rows_are_own_series_in_the_ablation(tmp_path):
    """Runs that differ only in task_weighting are separate rows (the setting digest) and
    separate series of the ablation over any metric: the table shows each series' best
    alpha, so a learned weighting is read against the best fixed alpha."""
    runs = tmp_path / "runs"
    ccc = {("fixed", 0.01): 0.30, ("fixed", 0.1): 0.40, ("uncertainty", 0.1): 0.45}
    ccc |= {("pcgrad", 0.1): 0.35}
    for (weighting, alpha), value in ccc.items():
        for fold in (1, 2):
            write_run(
                runs,
                fold,
                alpha=alpha,
                task_metrics=metrics(0.5, value + 0.02 * fold, 1.0),
                task_weighting=weighting,
            )
    rows = aggregate(find_results([runs]))
    assert len(rows) == 4 and len({r.key for r in rows}) == 4
    table = ablation_table(rows, ("dimensions/ccc_mean", "ctc/wer"))
    series = table["dimensions/ccc_mean"]
    assert list(series) == [
        "mtl loso task_weighting=fixed",
        "mtl loso task_weighting=pcgrad",
        "mtl loso task_weighting=uncertainty",
    ]
    assert [(a, round(m, 4), n) for a, m, _, n, _ in series["mtl loso task_weighting=fixed"]] == [
        (0.01, 0.33, 2),
        (0.1, 0.43, 2),
    ]
    assert series["mtl loso task_weighting=uncertainty"][0][:2] == (0.1, pytest.approx(0.48))
    text = ablation_markdown(rows, ("dimensions/ccc_mean",))
    assert (
        "| mtl loso task_weighting=fixed | 0.3300 ± 0.0141 | 0.4300 ± 0.0141 "
        "| 0.4300 at alpha 0.1 |" in text
    )
    assert (
        "| mtl loso task_weighting=uncertainty | – | 0.4800 ± 0.0141 | 0.4800 at alpha 0.1 |"
        in text
    )

    assert (
        "- mtl loso task_weighting=uncertainty alpha 0.1: dimensions/ccc_mean 0.4800 beats the "
        "best fixed alpha (0.1: 0.4300; difference +0.0500," in text
    )
    assert (
        "- mtl loso task_weighting=pcgrad alpha 0.1: dimensions/ccc_mean 0.3800 does not beat "
        "the best fixed alpha (0.1: 0.4300; difference -0.0500," in text
    )

    out = tmp_path / "report"
    write_report([runs], out, ablation_metrics="emotion/ua,ctc/wer,dimensions/ccc_mean")
    assert (out / "alpha_ablation.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (out / "summary.md").read_text()
    assert "### ctc/wer ↓" in markdown and "### dimensions/ccc_mean ↑" in markdown
    assert markdown.count("| mtl loso task_weighting=pcgrad |") == 3  # one line per metric
    with pytest.raises(ValueError, match="--ablation-metrics: no run reports 'gender/ua'"):
        write_report([runs], out, ablation_metrics="emotion/ua,gender/ua")


def test_bins_and_their_names():
    assert parse_edges("0.25,0.5") == parse_edges("0,0.25,0.5") == (0.25, 0.5)
    assert bin_names((0.25, 0.5)) == ["0", "(0, 0.25]", "(0.25, 0.5]", "> 0.5"]
    assert [bin_index(w, (0.25, 0.5)) for w in (0, 0.01, 0.25, 0.26, 0.5, 0.51, 3)] == [
        0,
        1,
        1,
        2,
        2,
        3,
        3,
    ]
    for bad in ("0.5,0.25", "x", "", "-1"):
        with pytest.raises(ValueError, match="--wer-bins"):
            parse_edges(bad)


def test_emotion_accuracy_by_wer_bins(tmp_path, capsys):
    """Two folds of alpha 0.1; per fold the greedy hypotheses' WERs are 0, 0, 0.25, 0.25,
    0.5, 1.0 and two utterances have no transcript. Predictions: all right but utterance 3
    (sad, WER 0.25) -> neu and utterance 5 (hap, WER 1.0) -> neu."""
    runs = tmp_path / "runs"
    predicted = [u[0] for u in UTTERANCES]
    predicted[3], predicted[5] = "neu", "neu"
    for fold in (1, 2):
        write_run(runs, fold, predicted=predicted)
        write_run(runs, fold, alpha=0.0)  # no CTC: left out with a note
    rows = aggregate(find_results([runs]))
    zero, ctc = rows
    [no_ctc, result] = report_bins(rows, (0.25, 0.5))
    assert no_ctc.bins == [] and "2 of 2 run(s) have no CTC hypotheses" in no_ctc.notes[0]
    by_bin = {b["bin"]: b for b in result.bins}
    assert list(by_bin) == ["0", "(0, 0.25]", "(0.25, 0.5]", "> 0.5", "no transcript"]
    # WER 0: neu, hap (x2 folds), all right.
    assert by_bin["0"]["utterances"] == 4
    assert (by_bin["0"]["ua"], by_bin["0"]["wa"], by_bin["0"]["classes"]) == (1.0, 1.0, 2)
    # (0, 0.25]: ang right, sad wrong: WA 1/2; UA over the 2 classes present = 1/2.
    low = by_bin["(0, 0.25]"]
    assert (low["utterances"], low["wa"], low["ua"], low["classes"]) == (4, 0.5, 0.5, 2)
    assert low["mean_wer"] == 0.25
    assert (by_bin["(0.25, 0.5]"]["utterances"], by_bin["(0.25, 0.5]"]["ua"]) == (2, 1.0)
    high = by_bin["> 0.5"]
    assert (high["utterances"], high["wa"], high["ua"], high["mean_wer"]) == (2, 0.0, 0.0, 1.0)
    apart = by_bin["no transcript"]
    assert (apart["utterances"], apart["wa"], apart["mean_wer"]) == (4, 1.0, None)

    # Another decoder's column and other edges: the beam hypotheses' WERs are 0 but for
    # utterance 4 (0.25) and 5 (0).
    out = tmp_path / "report"
    argv = ["report", str(runs), "--output-folder", str(out), "--wer-bins", "0.1"]
    assert main([*argv, "--wer-bins-hypothesis", "hypothesis_beam"]) == 0
    with open(out / "wer_bins.csv") as f:
        lines = [r for r in csv.DictReader(f) if r["alpha"] == "0.1"]
    assert [(r["bin"], r["utterances"]) for r in lines] == [
        ("0", "10"),
        ("(0, 0.1]", "0"),
        ("> 0.1", "2"),
        ("no transcript", "4"),
    ]
    assert lines[0]["hypothesis_column"] == "hypothesis_beam"
    assert float(lines[0]["ua"]) == pytest.approx((1 + 0.5 + 1 + 0) / 4)  # hap 2/4, sad 0/2
    assert lines[1]["ua"] == ""
    assert (out / "wer_bins.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (out / "summary.md").read_text()
    section = markdown.split("## Emotion accuracy by recognition quality")[1]
    assert "**UA of a bin is the mean recall over the classes present in it**" in section
    assert "| > 0.1 | 2 | 1/4 | 100.00 | 100.00 | 0.250 |" in section
    assert "no CTC hypotheses" in section

    capsys.readouterr()
    assert main([*argv, "--wer-bins-hypothesis", "hypothesis_lm"]) == 2
    err = capsys.readouterr().err
    assert "--wer-bins-hypothesis 'hypothesis_lm': no predictions.csv has this column" in err


@pytest.mark.parametrize(
    ("task_metrics", "key"),
    [([0.5], "key 'task_metrics' is [0.5]"), ({"dimensions": 0.4}, "'task_metrics.dimensions'")],
    ids=["list", "task"],
)
def test_malformed_task_metrics_are_one_line_naming_file_and_key(
    tmp_path, capsys, task_metrics, key
):
    folder = write_run(tmp_path, 1, task_metrics=task_metrics)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(folder / "results.json") in err and key in err


def test_the_folds_of_a_sweep_are_one_row_though_their_manifests_differ(tmp_path, capsys):
    """Each fold's split has manifests of its own, so manifests_digest differs between the
    folds of one sweep: grouping by it gave one row per fold (no mean over folds at all).
    Runs of one fold that differ in it were tested on other data and are refused."""
    runs = tmp_path / "runs"
    for alpha in (0.01, 0.1):
        for fold in (1, 2):
            write_run(runs, fold, alpha=alpha, manifests_digest=f"data-of-fold{fold}")
    rows = aggregate(find_results([runs]))
    assert [(r.alpha, r.n, r.folds) for r in rows] == [(0.01, 2, [1, 2]), (0.1, 2, [1, 2])]
    assert "manifests_digest" not in rows[0].setting
    pairs = find_pairs(find_results([runs]))
    assert [(p[3], p[4]) for p in pairs] == [("alpha", [(1, 1), (2, 1)])]

    write_run(runs, 1, alpha=0.1, seed=2, manifests_digest="another-corpus")
    assert main(["report", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "fold 1 runs differ in manifests_digest" in err and "refusing to average" in err

"""Per-group results (`mtl_ser.groups`, `mtl_ser.group_report`): UA / WA per group against
hand-computed cases, speaker-bootstrap intervals whose resampling support is known, and the
report's tables, CSV and figure."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from mtl_ser.cli import main
from mtl_ser.groups import attach_groups, check_columns, column_results, per_group_results
from mtl_ser.metrics import classification_metrics, weighted_ua, weighted_wa
from mtl_ser.report import write_report
from mtl_ser.results import PredictionLog, write_run_outputs
from tests.unit.test_report import write_run

LABELS = ("neu", "hap")


def make_log(rows: list[tuple[str, str, str, str]]) -> PredictionLog:
    """A log of (utterance id, speaker, true label, predicted label) rows."""
    log = PredictionLog(LABELS)
    index = {name: i for i, name in enumerate(LABELS)}
    logits = torch.full((len(rows), len(LABELS)), -5.0)
    for i, (_, _, _, pred) in enumerate(rows):
        logits[i, index[pred]] = 5.0
    log.add_batch(
        [r[0] for r in rows],
        logits,
        torch.tensor([index[r[2]] for r in rows]),
        [""] * len(rows),
        None,
        [False] * len(rows),
        [None] * len(rows),
        speakers=[r[1] for r in rows],
    )
    return log


# Speakers A and B (F), C (M). By hand: F: 5 utterances, correct neu neu neu hap, wrong hap:
# WA 4/5, recall neu 3/3, hap 1/2 -> UA 0.75. M: WA 1/2, recall neu 0, hap 1 -> UA 0.5.
# Speaker A: WA 2/3, recall neu 2/2, hap 0/1 -> UA 0.5.
HAND = [
    ("a1", "A", "neu", "neu"),
    ("a2", "A", "hap", "neu"),
    ("a3", "A", "neu", "neu"),
    ("b1", "B", "neu", "neu"),
    ("b2", "B", "hap", "hap"),
    ("c1", "C", "neu", "hap"),
    ("c2", "C", "hap", "hap"),
]
GENDER = {"A": "F", "B": "F", "C": "M"}


def records_of(rows, **extra) -> dict:
    return {u: {"spk": s, "gender": GENDER[s], **extra} for u, s, _, _ in rows}


def test_per_group_ua_wa_against_hand_computed_values(tmp_path):
    log = make_log(HAND)
    attach_groups(log, records_of(HAND), check_columns(["speaker", "gender"]))
    results = write_run_outputs(tmp_path, {"recipe": "mtl", "fold": 1}, log, [])
    assert json.loads((tmp_path / "results.json").read_text())["groups"] == results["groups"]
    gender = results["groups"]["columns"]["gender"]
    f, m = gender["groups"]["F"], gender["groups"]["M"]
    assert (f["wa"], f["ua"], f["utterances"], f["speakers"]) == (0.8, 0.75, 5, 2)
    assert (m["wa"], m["ua"], m["utterances"], m["speakers"]) == (0.5, 0.5, 2, 1)
    # One speaker: no speaker-level interval, and the reason is written down.
    assert m["ua_ci"] is None and m["ci_unit"] is None and "1 speaker" in m["note"]
    assert f["ci_unit"] == "speaker" and "2 speakers" in f["note"]  # too few: said
    a = results["groups"]["columns"]["speaker"]["groups"]["A"]
    assert a["wa"] == pytest.approx(2 / 3) and a["ua"] == 0.5
    assert a["ci_unit"] == "utterance" and a["speakers"] == 1  # a speaker's own utterances
    with open(tmp_path / "predictions.csv") as fh:
        table = {r["id"]: r for r in csv.DictReader(fh)}
    assert {u: r["gender"] for u, r in table.items()} == {u: GENDER[s] for u, s, _, _ in HAND}
    assert list(table["a1"])[-2:] == ["speaker", "gender"]  # speaker not written twice


def test_speaker_bootstrap_interval_has_the_known_support():
    """Two speakers of 4 utterances each, WA and UA 0.25 (A) and 0.75 (B): a resample of 2
    speakers is AA, AB / BA or BB, so every resampled value is 0.25, 0.5 or 0.75 (P = 1/4,
    1/2, 1/4) and the 95% interval is [0.25, 0.75]. Resampling utterances instead would
    reach values such as 0.125 and give another interval."""
    true = ["neu", "neu", "hap", "hap"] * 2
    pred = ["neu", "hap", "neu", "neu"] + ["neu", "neu", "hap", "neu"]
    index = {name: i for i, name in enumerate(LABELS)}
    speakers = ["A"] * 4 + ["B"] * 4
    found = column_results(
        "gender",
        ["F"] * 8,
        [index[x] for x in true],
        [index[x] for x in pred],
        speakers,
        [f"u{i}" for i in range(8)],
        LABELS,
    )
    f = found["groups"]["F"]
    assert (f["wa"], f["ua"], f["speakers"]) == (0.5, 0.5, 2)
    assert f["wa_ci"] == [0.25, 0.75] and f["ua_ci"] == [0.25, 0.75]
    # The weighted metrics of the bootstrap: the support is exactly those three values.
    rng = np.random.default_rng(0)
    drawn = rng.integers(0, 2, size=(500, 2))
    weights = np.stack([np.repeat(np.bincount(d, minlength=2), 4) for d in drawn]).astype(float)
    t, p = np.array([index[x] for x in true]), np.array([index[x] for x in pred])
    assert set(np.round(weighted_wa(t, p, weights), 9)) == {0.25, 0.5, 0.75}
    assert set(np.round(weighted_ua(t, p, weights), 9)) == {0.25, 0.5, 0.75}


def test_weighted_metrics_with_unit_weights_are_the_metrics_module_s():
    rng = np.random.default_rng(3)
    true, pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    ones = np.ones((1, 50))
    scores = classification_metrics(true, pred, ["a", "b", "c", "d"])
    assert weighted_wa(true, pred, ones)[0] == pytest.approx(scores["wa"])
    assert weighted_ua(true, pred, ones)[0] == pytest.approx(scores["ua"])


def test_a_column_the_corpus_lacks_is_said_not_dropped():
    log = make_log(HAND)
    records = {u: {"spk": s} for u, s, _, _ in HAND}  # a CSV corpus: no gender
    attach_groups(log, records, ("gender", "session"))
    gender = per_group_results(log)["columns"]["gender"]
    assert gender["groups"] == {} and gender["missing"] == len(HAND)
    assert "no test utterance has a 'gender'" in gender["notes"][0]


@pytest.mark.parametrize(
    "columns, message",
    [
        (["speaker", "speaker"], "given twice"),
        (["id"], "column of predictions.csv"),
        ([""], "not a column name"),
    ],
)
def test_bad_group_columns_are_refused(columns, message):
    with pytest.raises(ValueError, match=message):
        check_columns(columns)


# ----------------------------------------------------------------------------------- report
def write_predictions(folder, fold: int, correct: dict[str, int]) -> None:
    """predictions.csv of one LOSO fold: speakers SesNNF / SesNNM with 4 neu utterances
    each, ``correct[gender]`` of them right."""
    with open(folder / "predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "true", "predicted", "speaker", "gender", "scripted"])
        for gender in ("F", "M"):
            speaker = f"Ses{fold:02d}{gender}"
            for i in range(4):
                pred = "neu" if i < correct[gender] else "hap"
                writer.writerow([f"{speaker}_{i}", "neu", pred, speaker, gender, i % 2 == 0])


def test_report_pools_folds_and_counts_the_speakers_of_each_interval(tmp_path, capsys):
    root = tmp_path / "runs"
    # F speakers right on 0, 1, 2, 3, 4 of 4 utterances; M always 4 of 4.
    for fold in range(1, 6):
        folder = write_run(root, fold=fold, counts=(4 + fold - 1, 8))
        write_predictions(folder, fold, {"F": fold - 1, "M": 4})
    out = tmp_path / "report"
    report = write_report([root], out, group_columns="gender,speaker,scripted")
    names = {f.name for f in report["files"]}
    assert {"groups.csv", "groups_ua.png"} <= names
    assert (out / "groups_ua.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "groups.csv") as fh:
        table = {(r["column"], r["group"]): r for r in csv.DictReader(fh)}
    f = table[("gender", "F")]
    assert (f["utterances"], f["speakers"], f["ci_unit"]) == ("20", "5", "speaker")
    assert float(f["wa"]) == pytest.approx(10 / 20)
    # Five speakers of accuracy 0, .25, .5, .75, 1: a resample's mean lies in [0, 1] and
    # the interval is strictly inside the range yet wider than an utterance bootstrap's.
    assert 0 <= float(f["wa_low"]) < 0.5 < float(f["wa_high"]) <= 1
    m = table[("gender", "M")]
    assert (float(m["wa"]), float(m["wa_low"]), float(m["wa_high"])) == (1.0, 1.0, 1.0)
    assert table[("speaker", "Ses03F")]["ci_unit"] == "utterance"
    assert table[("scripted", "True")]["speakers"] == "10"
    text = (out / "summary.md").read_text()
    assert "## Per-group results" in text
    assert "| gender | F | 20 | 5 | 50.00 [" in text

    # The command line: another column set; one absent from predictions.csv is named.
    argv = ["report", str(root), "--output-folder", str(out), "--group-columns", "corpus"]
    assert main(argv) == 0
    assert "no column 'corpus'" in (out / "summary.md").read_text()
    assert main(["report", str(root), "--group-columns", "id"]) == 2
    assert "--group-columns: 'id' is a column of predictions.csv" in capsys.readouterr().err

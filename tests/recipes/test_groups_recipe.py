"""Per-group results of a recipe run on the demo corpus (the shared tiny run: no extra
training)."""

import csv

from mtl_ser.metrics import classification_metrics
from mtl_ser.report import write_report
from tests.recipes.helpers import read_json


def test_a_recipe_run_writes_per_group_results(mtl_run, tmp_path):
    run = mtl_run[0]
    results = read_json(run / "results.json")
    with open(run / "predictions.csv") as f:
        table = list(csv.DictReader(f))
    labels = results["labels"]
    columns = results["groups"]["columns"]
    assert list(columns) == ["speaker", "gender"]  # hparams/mtl.yaml's group_columns
    # LOSO fold 1 tests session 1: one speaker per gender, gender from the manifest.
    assert {r["speaker"]: r["gender"] for r in table} == {"Ses01F": "F", "Ses01M": "M"}
    for column in columns:
        for value, stats in columns[column]["groups"].items():
            rows = [r for r in table if r[column] == value]
            scores = classification_metrics(
                [labels.index(r["true"]) for r in rows],
                [labels.index(r["predicted"]) for r in rows],
                labels,
            )
            assert (stats["ua"], stats["wa"]) == (scores["ua"], scores["wa"]), (column, value)
            assert stats["utterances"] == len(rows) and stats["speakers"] == 1
            if column == "gender":  # one speaker: no speaker-level interval, said so
                assert stats["ua_ci"] is None and "1 speaker" in stats["note"]
            else:  # a speaker's own utterances resampled
                low, high = stats["ua_ci"]
                assert stats["ci_unit"] == "utterance" and low <= stats["ua"] <= high
    # The report of the run shows them, each interval with its number of speakers.
    write_report([run], tmp_path)
    text = (tmp_path / "summary.md").read_text()
    f = columns["gender"]["groups"]["F"]
    assert f"| gender | F | {f['utterances']} | 1 | {100 * f['ua']:.2f} |" in text
    assert (tmp_path / "groups_ua.png").read_bytes()[:4] == b"\x89PNG"

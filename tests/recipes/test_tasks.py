"""A run with four tasks (emotion, CTC, A/V/D, gender) on the demo corpus: every task's
metrics in results.json, the epoch log and predictions.csv; export and predict carry them."""

import csv
import json

import pytest

from mtl_ser.cli import main
from mtl_ser.data.manifest import load_manifest
from mtl_ser.export import export_run
from tests.recipes.helpers import ROOT, TINY, epoch_log, read_json, run_recipe

ALL_TASKS = str(ROOT / "hparams/overrides/all_tasks.yaml")


@pytest.fixture(scope="module")
def four_task_run(demo_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("four_tasks")
    run_recipe(
        "train_mtl.py",
        "mtl.yaml",
        demo_corpus,
        out,
        "--number_of_epochs=1",
        "--max_len=1.5",  # crops: a short run (CTC scores the uncropped utterances only)
        "--task_weighting=uncertainty",
        "--class_weighting=inverse_frequency",
        "--sampling=class_balanced",
        "--selection_metric=dimensions/ccc_mean",
        overrides=(TINY, ALL_TASKS),
    )
    return out


def test_a_four_task_run_writes_every_tasks_metrics(four_task_run):
    results = read_json(four_task_run / "results.json")
    assert set(results["tasks"]) == {"emotion", "ctc", "dimensions", "gender"}
    assert results["tasks"]["gender"]["classes"] == ["F", "M"]
    assert results["class_weighting"] == "inverse_frequency"
    counts = results["tasks"]["emotion"]["train_class_counts"]
    weights = results["class_weights"]
    assert sum(n * w for n, w in zip(counts, weights, strict=True)) == pytest.approx(sum(counts))
    metrics = results["task_metrics"]
    assert 0.0 <= metrics["emotion"]["ua"] <= 1.0 and metrics["ctc"]["cer"] is not None
    dims = metrics["dimensions"]
    for d in ("arousal", "valence", "dominance"):
        assert -1.0 <= dims[f"ccc_{d}"] <= 1.0 and dims[f"mae_{d}"] > 0
    assert dims["ccc_mean"] == pytest.approx(
        sum(dims[f"ccc_{d}"] for d in ("arousal", "valence", "dominance")) / 3
    )
    assert 0.0 <= metrics["gender"]["accuracy"] <= 1.0
    assert metrics["gender"]["num_utterances"] == results["num_utterances"]
    assert results["selection_metric"] == "dimensions/ccc_mean"
    assert results["task_weighting"] == "uncertainty"
    assert set(results["learned_task_weights"]) == {
        "log_var_emo",
        "log_var_ctc",
        "log_var_dimensions",
        "log_var_gender",
    }
    # The released-code keys keep their meaning.
    assert results["ctc_reduction"] == "sum" and results["ua"] == metrics["emotion"]["ua"]

    entry = epoch_log(four_task_run)[-1]
    for key in ("train_loss_dimensions", "train_loss_gender", "valid_dimensions/ccc_mean"):
        assert entry[key] is not None, key
    assert "train_log_var_dimensions" in entry

    with open(four_task_run / "predictions.csv") as f:
        row = next(csv.DictReader(f))
    assert {"dimensions_pred_arousal", "dimensions_true_valence", "gender_predicted"} <= set(row)


def test_export_and_predict_carry_every_task(four_task_run, demo_corpus, tmp_path, capsys):
    model = tmp_path / "model"
    export_run(four_task_run, model)
    records = load_manifest(four_task_run / "manifests/test.json", demo_corpus)
    wavs = [r["wav"] for r in list(records.values())[:3]]
    out = tmp_path / "p.json"
    assert main(["predict", str(model), *map(str, wavs), "--output", str(out)]) == 0
    predictions = json.loads(out.read_text())
    for p in predictions:
        assert set(p["probabilities"]) and p["transcript"] is not None
        assert set(p["tasks"]["dimensions"]) == {"arousal", "valence", "dominance"}
        assert p["tasks"]["gender"]["label"] in ("F", "M")
    # The run's own test predictions of the same files (export reproduces them).
    with open(four_task_run / "predictions.csv") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    first = rows[list(records)[0]]
    assert predictions[0]["tasks"]["dimensions"]["arousal"] == pytest.approx(
        float(first["dimensions_pred_arousal"]), abs=1e-4
    )
    csv_out = tmp_path / "p.csv"
    assert main(["predict", str(model), *map(str, wavs), "--output", str(csv_out)]) == 0
    with open(csv_out) as f:
        header = next(csv.reader(f))
    assert {"dimensions_arousal", "gender", "gender_p_F", "transcript"} <= set(header)

"""A run with four tasks (emotion, CTC, A/V/D, gender) on the demo corpus: every task's
metrics in results.json, the epoch log and predictions.csv; export and predict carry them."""

import csv
import json

import numpy as np
import pytest

from mtl_ser import load_model
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


@pytest.fixture(scope="module")
def four_task_files(four_task_run, demo_corpus):
    """The first four test recordings of the four-task run."""
    records = load_manifest(four_task_run / "manifests/test.json", demo_corpus)
    return [records[k]["wav"] for k in sorted(records)[:4]]


def test_onnx_export_predicts_every_task_as_pytorch(four_task_run, four_task_files, tmp_path):
    from mtl_ser.onnx_predictor import OnnxRecognizer

    folder = tmp_path / "onnx"
    assert main(["export", str(four_task_run), str(folder), "--format", "onnx"]) == 0
    meta = read_json(folder / "onnx_model.json")
    assert meta["outputs"][-2:] == ["dimensions", "gender"]
    assert meta["tasks"]["gender"]["classes"] == ["F", "M"]
    assert meta["tasks"]["gender"]["column"] == "gender"
    assert meta["tasks"]["dimensions"]["meaning"].startswith("[batch, 3] values of arousal")
    assert set(meta["verification"]["max_task_differences"]) == {"dimensions", "gender"}
    assert max(meta["verification"]["max_task_differences"].values()) <= 1e-4
    # Windows of 1 s: several per file, so per-window averaging is compared too.
    onnx = OnnxRecognizer(folder, window=1.0).predict_batch(four_task_files, batch_size=3)
    torch_model = load_model(four_task_run, window=1.0)
    ours = torch_model.predict_batch(four_task_files, batch_size=3)
    assert max(len(p.windows) for p in ours) >= 2
    for a, b in zip(onnx, ours, strict=True):
        assert a.error is None and a.transcript == b.transcript
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
        assert set(a.tasks) == {"dimensions", "gender"}
        assert a.tasks["dimensions"] == pytest.approx(b.tasks["dimensions"], abs=1e-4)
        assert a.tasks["gender"]["label"] == b.tasks["gender"]["label"]
        probs = a.tasks["gender"]["probabilities"]
        assert probs == pytest.approx(b.tasks["gender"]["probabilities"], abs=1e-5)


def test_hf_export_carries_every_task(four_task_run, four_task_files, tmp_path, capsys):
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from mtl_ser.data.audio import load_audio

    folder = tmp_path / "hf"
    assert main(["export", str(four_task_run), str(folder), "--format", "hf"]) == 0
    assert "other tasks as transformers classification models: dimensions/, gender/" in (
        capsys.readouterr().out
    )
    card = (folder / "README.md").read_text()
    assert "`dimensions/`: regression" in card and "`gender/`: classification of gender" in card
    ours = load_model(four_task_run)
    path = four_task_files[0]
    expected = ours.predict(path).tasks
    for task in ("dimensions", "gender"):
        extract = AutoFeatureExtractor.from_pretrained(folder / task)
        model = AutoModelForAudioClassification.from_pretrained(folder / task).eval()
        inputs = extract(load_audio(path).numpy(), sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0]
        names = [model.config.id2label[i] for i in range(logits.shape[0])]
        if task == "dimensions":
            assert model.config.problem_type == "regression"
            got = dict(zip(names, logits.tolist(), strict=True))
            assert got == pytest.approx(expected["dimensions"], abs=1e-4)
        else:
            got = dict(zip(names, torch.softmax(logits, -1).tolist(), strict=True))
            assert got == pytest.approx(expected["gender"]["probabilities"], abs=1e-5)


def ccc(pred, true):
    pred, true = np.asarray(pred), np.asarray(true)
    cov = ((pred - pred.mean()) * (true - true.mean())).mean()
    return 2 * cov / (pred.var() + true.var() + (pred.mean() - true.mean()) ** 2)


def test_evaluate_scores_every_task_the_data_has(four_task_run, demo_corpus, tmp_path, capsys):
    out = tmp_path / "eval"
    manifest = four_task_run / "manifests/test.json"
    assert main(["evaluate", str(four_task_run), str(manifest), "--output", str(out)]) == 0
    got, trained = read_json(out / "results.json"), read_json(four_task_run / "results.json")
    metrics = got["task_metrics"]
    assert set(metrics) == {"emotion", "ctc", "dimensions", "gender"}
    assert set(metrics["dimensions"]) == set(trained["task_metrics"]["dimensions"])
    assert got["tasks_not_scored"] == {}
    # The same numbers as recomputing them from the evaluation's predictions...
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    for d in ("arousal", "valence", "dominance"):
        pred = [float(r[f"dimensions_pred_{d}"]) for r in rows]
        true = [float(r[f"dimensions_true_{d}"]) for r in rows]
        assert metrics["dimensions"][f"ccc_{d}"] == pytest.approx(ccc(pred, true), abs=1e-5)
    correct = [r["gender_true"] == r["gender_predicted"] for r in rows]
    assert metrics["gender"]["accuracy"] == pytest.approx(np.mean(correct))
    assert metrics["gender"]["num_utterances"] == len(rows) == trained["num_utterances"]
    # ... and as the run's own test pass on the same manifest.
    for task in ("dimensions", "gender"):
        for key, value in trained["task_metrics"][task].items():
            assert metrics[task][key] == pytest.approx(value, abs=1e-4), (task, key)

    # A CSV with a gender column but no A/V/D: gender scored, dimensions named as not scored.
    table = tmp_path / "no_avd.csv"
    records = load_manifest(manifest, demo_corpus)
    lines = ["path,emotion,gender"] + [
        f"{r['wav']},{r['emo']},{r['gender']}" for r in list(records.values())[:4]
    ]
    table.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    out2 = tmp_path / "eval_csv"
    assert main(["evaluate", str(four_task_run), str(table), "--output", str(out2)]) == 0
    message = f"dimensions: not scored: no arousal, valence, dominance in {table}"
    assert message in capsys.readouterr().out.splitlines()
    got = read_json(out2 / "results.json")
    assert got["tasks_not_scored"] == {"dimensions": message}
    assert set(got["task_metrics"]) == {"emotion", "ctc", "gender"}
    assert got["task_metrics"]["gender"]["num_utterances"] == 4

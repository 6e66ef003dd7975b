"""Trustworthy outputs on real (tiny) trained models: calibration figures of every
evaluation, temperature scaling fitted on validation only, abstention, ONNX export."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from mtl_ser import load_model
from mtl_ser.calibration import ece, fit_temperature
from mtl_ser.cli import main
from mtl_ser.data.manifest import load_manifest
from mtl_ser.evaluate import read_items
from mtl_ser.export import LoadedModel, export_run
from mtl_ser.export_onnx import OnnxExportError, check_exportable
from tests.recipes.helpers import ROOT, TINY, read_json, run_recipe


@pytest.fixture(scope="module")
def calibrated_run(demo_corpus, tmp_path_factory):
    """A 4-epoch multi-task run with temperature scaling and 10 calibration bins, at the
    demo's learning rates (after 2 epochs the model is still near uniform, and the best
    temperature of a uniform model is the largest allowed: nothing to compare)."""
    out = tmp_path_factory.mktemp("calibrated_run")
    run_recipe(
        "train_mtl.py",
        "mtl.yaml",
        demo_corpus,
        out,
        "--number_of_epochs=4",
        "--calibration=temperature",
        "--calibration_bins=10",
        overrides=(TINY, str(ROOT / "hparams/overrides/demo.yaml")),
    )
    return out


@pytest.fixture(scope="module")
def test_files(mtl_run, demo_corpus):
    records = load_manifest(mtl_run[0] / "manifests/test.json", demo_corpus)
    return [records[k]["wav"] for k in sorted(records)]


def _recognized_logits(run, manifest):
    """Uncalibrated logits (up to a per-row constant) and targets of a manifest's utterances
    scored whole by the run's model: T * log p undoes the model's temperature."""
    model = load_model(run, window=math.inf)
    items, _, _ = read_items(manifest)
    predictions = model.predict_batch([i["wav"] for i in items], batch_size=8)
    probs = np.array([[p.probabilities[c] for c in model.labels] for p in predictions])
    targets = np.array([model.labels.index(i["label"]) for i in items])
    return np.log(probs) * model.model.temperature, targets


def test_every_test_pass_reports_calibration(mtl_run):
    out, _ = mtl_run
    results = read_json(out / "results.json")
    calibration = results["calibration"]
    assert calibration["method"] == "none" and calibration["bins"] == 15
    assert calibration["after"] is None and "temperature" not in read_json(out / "model_spec.json")
    # The figures are those of the probabilities in predictions.csv (rounded to 1e-6).
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    labels = results["labels"]
    probs = np.array([[float(r[f"p_{c}"]) for c in labels] for r in rows])
    targets = np.array([labels.index(r["true"]) for r in rows])
    assert results["ece"] == pytest.approx(ece(probs, targets, 15), abs=1e-5)
    assert results["ece"] == calibration["before"]["ece"] and 0 < results["brier"] <= 2
    assert len(calibration["before"]["bins"]) == 15
    assert calibration["before"]["coverage_accuracy"][0]["coverage"] == 1.0
    for png in ("reliability_diagram.png", "coverage_accuracy.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_temperature_is_fitted_on_validation_only_and_travels_with_the_model(
    calibrated_run, tmp_path
):
    out = calibrated_run
    results = read_json(out / "results.json")
    calibration = results["calibration"]
    temperature = calibration["temperature"]
    assert calibration["method"] == "temperature" and calibration["bins"] == 10
    assert 0.01 < temperature < 100  # fitted, not at a bound
    assert len(calibration["after"]["bins"]) == 10
    assert calibration["valid_nll_after"] <= calibration["valid_nll_before"]
    assert results["ece"] == calibration["after"]["ece"]
    # Stored with the model: run folder and export apply it.
    assert read_json(out / "model_spec.json")["temperature"] == temperature
    # The temperature is the NLL minimiser on the validation utterances (scored by the
    # chosen checkpoint), and not the one the test set would give.
    valid_logits, valid_targets = _recognized_logits(out, out / "manifests/valid.json")
    assert fit_temperature(valid_logits, valid_targets) == pytest.approx(temperature, rel=1e-3)
    test_logits, test_targets = _recognized_logits(out, out / "manifests/test.json")
    assert abs(fit_temperature(test_logits, test_targets) - temperature) > 1e-2
    # `mtl-ser evaluate` on the exported model reproduces the run's before / after figures.
    export_run(out, tmp_path / "model")
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "model"),
                str(out / "manifests/test.json"),
                "--output",
                str(tmp_path / "eval"),
                "--calibration-bins",
                "10",
            ]
        )
        == 0
    )
    evaluated = read_json(tmp_path / "eval/results.json")["calibration"]
    assert evaluated["temperature"] == temperature
    for stage in ("before", "after"):
        assert evaluated[stage]["ece"] == pytest.approx(calibration[stage]["ece"], abs=1e-4)
        assert evaluated[stage]["brier"] == pytest.approx(calibration[stage]["brier"], abs=1e-4)


def test_predict_abstains_below_the_confidence_asked_for(mtl_run, test_files, tmp_path, capsys):
    files = test_files[:6]
    main(["predict", str(mtl_run[0]), *files, "--output", str(tmp_path / "all.csv")])
    with open(tmp_path / "all.csv") as f:
        rows = list(csv.DictReader(f))
    confident = [max(float(v) for k, v in r.items() if k.startswith("p_")) for r in rows]
    threshold = float(np.median(confident))
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                str(mtl_run[0]),
                *files,
                "--output",
                str(tmp_path / "some.csv"),
                "--min-confidence",
                str(threshold),
            ]
        )
        == 0
    )
    with open(tmp_path / "some.csv") as f:
        rows = list(csv.DictReader(f))
    abstained = [r["emotion"] == "abstained" for r in rows]
    assert abstained == [c < threshold for c in confident] and 0 < sum(abstained) < len(rows)
    assert f"{sum(abstained)} abstained" in capsys.readouterr().err


def test_onnx_export_matches_pytorch_and_predicts_without_torch(mtl_run, test_files, tmp_path):
    onnx_dir = tmp_path / "onnx"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtl_ser.cli",
            "export",
            str(mtl_run[0]),
            str(onnx_dir),
            "--format",
            "onnx",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "max probability difference" in done.stdout
    meta = read_json(onnx_dir / "onnx_model.json")
    assert meta["verification"]["max_probability_difference"] <= 1e-4
    assert len(set(meta["verification"]["lengths_samples"])) == 3
    assert meta["labels"] == read_json(mtl_run[0] / "results.json")["labels"]
    assert meta["front_end"]["sample_rate"] == 16000 and meta["vocab"]
    # `mtl-ser predict` on the ONNX folder in a fresh interpreter: no model code imported
    # (the CLI's parser imports torch for `prepare`; the ONNX library path does not).
    files = test_files[:5]
    script = (
        "import sys; from mtl_ser.cli import main; "
        f"status = main(['predict', {str(onnx_dir)!r}, *{files!r}, '--output', "
        f"{str(tmp_path / 'onnx.json')!r}, '--batch-size', '2']); "
        "loaded = [m for m in ('mtl_ser.models', 'mtl_ser.inference') if m in sys.modules]; "
        "print('loaded', loaded); sys.exit(status or bool(loaded))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    script = (
        "import sys; from mtl_ser.onnx_predictor import OnnxRecognizer; "
        "from mtl_ser.predict import apply_min_confidence, write_predictions; "
        f"model = OnnxRecognizer({str(onnx_dir)!r}, threads=1); "
        f"p = model.predict_batch({files!r}); apply_min_confidence(p, 0.5); "
        f"write_predictions(p, model.labels, {str(tmp_path / 'lib.csv')!r}); "
        "sys.exit('torch' in sys.modules or any(x.error for x in p))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    onnx_predictions = json.loads((tmp_path / "onnx.json").read_text())
    torch_predictions = load_model(mtl_run[0]).predict_batch(files, batch_size=3)
    for o, t in zip(onnx_predictions, torch_predictions, strict=True):
        assert o["error"] is None and o["emotion"] == t.emotion
        assert o["transcript"] == t.transcript
        for label, p in t.probabilities.items():
            assert o["probabilities"][label] == pytest.approx(p, abs=1e-4)


def test_models_that_cannot_be_exported_are_refused_with_the_reason():
    from mtl_ser.data.text import CharVocabulary
    from mtl_ser.models.cnn import CNNEncoder, LogMelFrontEnd
    from mtl_ser.models.ssl import SSLEncoder

    def model(encoder):
        return LoadedModel({"encoder": encoder}, ("neu", "ang"), CharVocabulary(), 16000, {})

    with pytest.raises(OnnxExportError, match="CNN encoder cannot be exported.*Python loop"):
        check_exportable(model(CNNEncoder(LogMelFrontEnd(n_mels=40), [8])))
    with pytest.raises(OnnxExportError, match="padding_aware: false"):
        check_exportable(model(SSLEncoder("random:tiny", padding_aware=False)))

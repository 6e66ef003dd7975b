"""Export, loading and prediction on real (tiny) trained models and real audio files."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from mtl_ser import load_model
from mtl_ser.cli import main
from mtl_ser.data.manifest import load_manifest
from mtl_ser.export import export_run
from mtl_ser.inference import EmotionRecognizer
from tests.recipes.helpers import read_json, run_recipe


@pytest.fixture(scope="module")
def exported(mtl_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    export_run(mtl_run[0], out)
    return out


@pytest.fixture(scope="module")
def test_files(mtl_run, demo_corpus):
    """{utterance id: wav path} of the run's test split."""
    records = load_manifest(mtl_run[0] / "manifests/test.json", demo_corpus)
    return {utt: r["wav"] for utt, r in records.items()}


def run_predictions(run):
    with open(run / "predictions.csv") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def test_export_reproduces_the_runs_test_predictions(mtl_run, exported, test_files, tmp_path):
    # The folder is self-contained: it still loads after moving away from the run.
    moved = tmp_path / "moved"
    shutil.copytree(exported, moved)
    model = load_model(moved)
    labels = read_json(mtl_run[0] / "results.json")["labels"]
    assert list(model.labels) == labels
    expected = run_predictions(mtl_run[0])
    ids = sorted(test_files)
    predictions = model.predict_batch([test_files[i] for i in ids], batch_size=5)
    for utt, p in zip(ids, predictions, strict=True):
        row = expected[utt]
        assert p.error is None
        assert p.emotion == row["predicted"]
        for label in labels:
            assert p.probabilities[label] == pytest.approx(float(row[f"p_{label}"]), abs=2e-6)
        assert p.transcript == row["hypothesis"]
        assert len(p.windows) == 1


def test_run_folder_and_export_agree(mtl_run, exported, test_files):
    path = test_files[sorted(test_files)[0]]
    from_run = load_model(mtl_run[0]).predict(path)
    from_export = load_model(exported).predict(path)
    assert from_run.probabilities == from_export.probabilities
    card = (exported / "README.md").read_text()
    results = read_json(mtl_run[0] / "results.json")
    assert f"{100 * results['wa']:.2f}%" in card and "loso, 1, 1986" in card
    assert {p.name for p in exported.iterdir()} >= {
        "encoder.safetensors",
        "emotion_head.safetensors",
        "ctc_head.safetensors",
        "encoder_config.json",
        "vocab.json",
        "labels.json",
        "mtl_ser_model.json",
    }


def test_loading_needs_no_network(exported, test_files):
    code = (
        "import sys; from mtl_ser import load_model\n"
        f"print(load_model({str(exported)!r}).predict({test_files[sorted(test_files)[0]]!r}).emotion)"
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in ("neu", "hap", "ang", "sad")


def resampled_copy(source, target, rate, channels):
    audio, original = soundfile.read(str(source), dtype="float32")
    out = resample_poly(audio, rate, original) if rate != original else audio
    if channels == 2:
        out = np.stack([out, out], axis=1)
    soundfile.write(str(target), out.astype(np.float32), rate, subtype="FLOAT")
    return target


def test_other_rates_and_channels(exported, test_files, tmp_path):
    model = load_model(exported)
    source = test_files[sorted(test_files)[0]]
    original = model.predict(source)
    mono44 = model.predict(resampled_copy(source, tmp_path / "a.wav", 44100, 1))
    stereo44 = model.predict(resampled_copy(source, tmp_path / "b.wav", 44100, 2))
    stereo8 = model.predict(resampled_copy(source, tmp_path / "c.wav", 8000, 2))
    assert stereo44.probabilities == pytest.approx(mono44.probabilities, abs=1e-6)
    for label, p in original.probabilities.items():
        assert mono44.probabilities[label] == pytest.approx(p, abs=0.05)
    for prediction in (mono44, stereo8):
        assert prediction.duration == pytest.approx(original.duration, abs=1e-3)
        assert sum(prediction.probabilities.values()) == pytest.approx(1, abs=1e-5)


def test_bad_files_get_error_rows(exported, test_files, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted(test_files)[:2]
    for utt in good:
        shutil.copy(test_files[utt], folder / f"{utt}.wav")
    (folder / "corrupt.wav").write_bytes(b"RIFF1234WAVEfmt garbage")
    soundfile.write(str(folder / "empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    soundfile.write(str(folder / "short.wav"), np.zeros(80, dtype=np.float32), 16000)
    (folder / "notes.txt").write_text("not audio: not collected")
    out = tmp_path / "out.csv"
    status = main(["predict", str(exported), str(folder), "--output", str(out)])
    assert status == 1
    with open(out) as f:
        rows = {row["path"].rsplit("/", 1)[1]: row for row in csv.DictReader(f)}
    assert set(rows) == {f"{u}.wav" for u in good} | {"corrupt.wav", "empty.wav", "short.wav"}
    assert "cannot read audio" in rows["corrupt.wav"]["error"]
    assert "holds no samples" in rows["empty.wav"]["error"]
    assert "too short to score" in rows["short.wav"]["error"]
    for utt in good:
        assert rows[f"{utt}.wav"]["error"] == "" and rows[f"{utt}.wav"]["emotion"]
    assert "2 of 5 file(s) scored" in capsys.readouterr().err


def test_long_recording_is_scored_in_windows(exported, test_files, tmp_path):
    first_three = sorted(test_files)[:3]
    audio = np.concatenate([soundfile.read(test_files[u], dtype="float32")[0] for u in first_three])
    path = tmp_path / "long.wav"
    soundfile.write(str(path), audio, 16000, subtype="FLOAT")
    model = load_model(exported, window=2.5)
    prediction = model.predict(path)
    count = int(np.ceil(len(audio) / (2.5 * 16000)))
    assert len(prediction.windows) == count >= 2
    bounds = [round(k * len(audio) / count) for k in range(count + 1)]
    weights = np.diff(bounds)
    for label in model.labels:
        windows = zip(weights, prediction.windows, strict=True)
        expected = sum(w * win.probabilities[label] for w, win in windows)
        assert prediction.probabilities[label] == pytest.approx(expected / weights.sum(), abs=1e-6)
    for k, window in enumerate(prediction.windows):
        assert window.start == pytest.approx(bounds[k] / 16000)
        alone = model.predict(audio[bounds[k] : bounds[k + 1]], sample_rate=16000)
        assert window.probabilities == pytest.approx(alone.probabilities, abs=1e-5)
        assert window.transcript == alone.transcript
    joined = " ".join(w.transcript for w in prediction.windows if w.transcript)
    assert prediction.transcript == joined
    assert prediction.emotion == max(prediction.probabilities, key=prediction.probabilities.get)


def test_json_output_and_bad_output_name(exported, test_files, tmp_path):
    path = test_files[sorted(test_files)[0]]
    assert main(["predict", str(exported), path, "--output", str(tmp_path / "p.json")]) == 0
    data = json.loads((tmp_path / "p.json").read_text())
    assert data[0]["path"] == path and len(data[0]["windows"]) == 1
    assert main(["predict", str(exported), path, "--output", str(tmp_path / "p.txt")]) == 2


def test_model_without_ctc_head(demo_corpus, tmp_path, test_files):
    run = tmp_path / "ser"
    run_recipe("train_ser.py", "ser.yaml", demo_corpus, run, "--number_of_epochs=1")
    out = export_run(run, tmp_path / "ser_model")
    assert not (out / "ctc_head.safetensors").exists()
    model = load_model(out)
    assert isinstance(model, EmotionRecognizer) and not model.has_ctc
    prediction = model.predict(test_files[sorted(test_files)[0]])
    assert prediction.transcript is None
    assert "| test WER / CER | n/a / n/a |" in (out / "README.md").read_text()


def test_export_refuses_unfinished_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="export a finished run"):
        export_run(tmp_path, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="neither an exported model"):
        load_model(tmp_path)

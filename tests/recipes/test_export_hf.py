"""`mtl-ser export --format hf`: transformers alone loads the model and gives our numbers."""

import json

import pytest
import torch
import yaml

from mtl_ser import load_model
from mtl_ser.cli import main
from mtl_ser.data.audio import load_audio
from mtl_ser.data.manifest import load_manifest
from mtl_ser.export import LoadedModel
from mtl_ser.export_hf import export_hf
from mtl_ser.models.cnn import CNNEncoder
from mtl_ser.models.heads import EmotionHead
from tests.recipes.helpers import read_json


def first_test_wavs(manifests, data_root, count=5) -> list[str]:
    """The first ``count`` wav paths of ``manifests/test.json``."""
    records = load_manifest(manifests / "test.json", data_root)
    return [records[k]["wav"] for k in sorted(records)[:count]]


def hf_probabilities(folder, files) -> list[dict]:
    """Class probabilities from transformers' audio-classification pipeline (waveforms
    read as mtl_ser reads them: transformers needs ffmpeg to decode files itself)."""
    from transformers import pipeline

    classify = pipeline("audio-classification", model=str(folder), top_k=None)
    out = []
    for path in files:
        scores = classify({"raw": load_audio(path).numpy(), "sampling_rate": 16000})
        out.append({s["label"]: s["score"] for s in scores})
    return out


def assert_same_as_mtl_ser(run, folder, files):
    """pipeline(...) gives ``load_model(run).predict`` probabilities within 1e-5."""
    ours = load_model(run)
    theirs = hf_probabilities(folder, files)
    for path, probabilities in zip(files, theirs, strict=True):
        expected = ours.predict(path).probabilities
        assert probabilities.keys() == expected.keys()
        for label, p in expected.items():
            assert probabilities[label] == pytest.approx(p, abs=1e-5), (path, label)


@pytest.fixture(scope="module")
def hf_folder(mtl_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "model"
    assert main(["export", str(mtl_run[0]), str(out), "--format", "hf"]) == 0
    return out


def test_pipeline_gives_mtl_sers_probabilities(mtl_run, demo_corpus, hf_folder):
    run = mtl_run[0]
    assert_same_as_mtl_ser(run, hf_folder, first_test_wavs(run / "manifests", demo_corpus))
    config = json.loads((hf_folder / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForSequenceClassification"]
    assert list(config["id2label"].values()) == read_json(run / "results.json")["labels"]
    extractor = json.loads((hf_folder / "preprocessor_config.json").read_text())
    assert extractor["do_normalize"] is True and extractor["return_attention_mask"] is True


def test_auto_classes_and_padded_batches(mtl_run, demo_corpus, hf_folder):
    """AutoModelForAudioClassification with the exported feature extractor; a padded batch
    is pooled over true frames (the attention mask), close to one-by-one scoring."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    files = first_test_wavs(mtl_run[0] / "manifests", demo_corpus, 3)
    model = AutoModelForAudioClassification.from_pretrained(hf_folder).eval()
    extractor = AutoFeatureExtractor.from_pretrained(hf_folder)
    waves = [load_audio(f).numpy() for f in files]
    ours = load_model(mtl_run[0]).predict_batch(files)
    with torch.no_grad():
        for wave, prediction in zip(waves, ours, strict=True):
            inputs = extractor(wave, sampling_rate=16000, return_tensors="pt")
            probs = model(**inputs).logits.softmax(-1)[0].tolist()
            assert probs == pytest.approx(list(prediction.probabilities.values()), abs=1e-5)
        batch = extractor(waves, sampling_rate=16000, return_tensors="pt", padding=True)
        batched = model(**batch).logits.softmax(-1)
    expected = torch.tensor([list(p.probabilities.values()) for p in ours])
    # transformers' first-layer GroupNorm sees the padding: close, not exact.
    assert (batched - expected).abs().max() < 0.05


def test_ctc_folder_gives_our_log_probabilities_and_transcripts(mtl_run, demo_corpus, hf_folder):
    from transformers import AutoModelForCTC, pipeline

    run = mtl_run[0]
    files = first_test_wavs(run / "manifests", demo_corpus, 3)
    ctc = AutoModelForCTC.from_pretrained(hf_folder / "ctc").eval()
    ours = load_model(run)
    asr = pipeline("automatic-speech-recognition", model=str(hf_folder / "ctc"))
    encoder, head = ours.modules["encoder"], ours.modules["ctc_head"]
    for path in files:
        wave = load_audio(path)
        with torch.no_grad():
            enc = encoder(wave[None], torch.ones(1))
            expected = head(enc.hidden, enc.layers)
            normalized = (wave - wave.mean()) / torch.sqrt(wave.var(correction=0) + 1e-7)
            logits = ctc(normalized[None]).logits
        torch.testing.assert_close(logits.log_softmax(-1), expected, atol=1e-4, rtol=1e-4)
        text = asr({"raw": wave.numpy(), "sampling_rate": 16000})["text"]
        assert text == ours.predict(path).transcript
    vocab = json.loads((hf_folder / "ctc" / "vocab.json").read_text())
    assert vocab["<blank>"] == 0 and vocab["|"] == 1 and vocab["A"] == 3


def test_model_card_metadata(mtl_run, hf_folder):
    card = (hf_folder / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    results = read_json(mtl_run[0] / "results.json")
    assert meta["pipeline_tag"] == "audio-classification" and meta["library_name"] == "transformers"
    entry = meta["model-index"][0]["results"][0]
    assert entry["dataset"]["args"] == {"protocol": "loso", "fold": 1, "labels": results["labels"]}
    metrics = {m["type"]: m["value"] for m in entry["metrics"]}
    assert metrics["accuracy"] == results["wa"] and metrics["recall"] == results["ua"]
    assert metrics["wer"] == results["wer"]
    assert 'pipeline("audio-classification"' in card and "ctc" in card


def test_models_without_a_transformers_equivalent_are_refused(mtl_run, tmp_path, monkeypatch):
    """A CNN encoder or attentive pooling cannot become a transformers classifier: a clear
    error, nothing half-written."""
    import mtl_ser.export_hf as export_hf_module

    base = load_model(mtl_run[0]).model
    cnn = CNNEncoder({"n_mels": 40}, channels=[4])
    attentive = EmotionHead(base.modules["encoder"].output_size, "attentive", n_classes=4)
    for modules, message in (
        ({**base.modules, "encoder": cnn}, "needs a transformers encoder; .* CNNEncoder"),
        ({**base.modules, "emotion_head": attentive}, "'attentive' pooling"),
    ):
        model = LoadedModel(modules, base.labels, base.vocab, 16000, base.info, base.spec)
        monkeypatch.setattr(export_hf_module, "load_run", lambda run, m=model: m)
        with pytest.raises(ValueError, match=message):
            export_hf(mtl_run[0], tmp_path / "out")
        assert not (tmp_path / "out").exists()

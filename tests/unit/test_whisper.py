"""Whisper's encoder: transformers' numbers in padded_30s mode, batch-independent true-length
mode, checkpoint loading that keeps every encoder weight and refuses other types."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from mtl_ser.models.encoders import build_encoder
from mtl_ser.models.whisper import RANDOM_PRESETS, WhisperEncoder


def _waves(*seconds, seed=0):
    gen = torch.Generator().manual_seed(seed)
    waves = [0.1 * torch.randn(int(s * 16000), generator=gen) for s in seconds]
    batch = torch.zeros(len(waves), max(w.shape[0] for w in waves))
    for i, w in enumerate(waves):
        batch[i, : w.shape[0]] = w
    lens = torch.tensor([w.shape[0] / batch.shape[1] for w in waves])
    return waves, batch, lens


@pytest.mark.parametrize("mel_bins", [80, 128])
def test_padded_30s_is_transformers_feature_extractor_and_encoder(mel_bins):
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        **{**RANDOM_PRESETS["whisper-tiny"], "num_mel_bins": mel_bins}
    )
    encoder = WhisperEncoder(config.to_dict(), whisper_input="padded_30s", front_end=None).eval()
    assert encoder.front_end.mel_filters.shape[1] == mel_bins
    waves, batch, lens = _waves(3.0, 2.2)
    extractor = transformers.WhisperFeatureExtractor(feature_size=mel_bins)
    features = extractor([w.numpy() for w in waves], sampling_rate=16000, return_tensors="pt")
    mel, frames = encoder.front_end(batch, torch.round(lens * batch.shape[1]).long(), True)
    assert torch.allclose(mel, features.input_features, atol=1e-5)
    with torch.no_grad():
        ours = encoder(batch, lens)
        theirs = encoder.model(features.input_features, output_hidden_states=True)
    assert torch.allclose(ours.hidden, theirs.last_hidden_state, atol=1e-5)
    assert ours.hidden.shape[1] == 1500  # the 30 s window
    assert ours.lengths.tolist() == [150, 110]  # 50 Hz: the heads read the utterance only
    assert len(ours.layers) == encoder.num_layers == len(theirs.hidden_states)


def test_true_length_batched_equals_alone_and_costs_its_own_frames():
    torch.manual_seed(0)
    encoder = WhisperEncoder("random:whisper-tiny").eval()
    waves, batch, lens = _waves(1.0, 2.5, 0.37, seed=1)
    with torch.no_grad():
        batched = encoder(batch, lens)
        assert batched.hidden.shape[1] == 125  # the longest utterance's frames, not 1500
        for i, wave in enumerate(waves):
            alone = encoder(wave[None], torch.ones(1))
            n = int(alone.lengths[0])
            assert (
                int(batched.lengths[i])
                == n
                == int(encoder.output_lengths(torch.tensor([len(wave)]))[0])
            )
            for ours, theirs in zip(batched.layers, alone.layers, strict=True):
                assert torch.allclose(ours[i, :n], theirs[0, :n], atol=1e-4)


def _save_whisper(folder, mel_bins=80):
    config = transformers.WhisperConfig(
        **{**RANDOM_PRESETS["whisper-tiny"], "num_mel_bins": mel_bins}
    )
    model = transformers.WhisperForConditionalGeneration(config)
    model.save_pretrained(folder)
    transformers.WhisperFeatureExtractor(feature_size=mel_bins).save_pretrained(folder)
    return model


def test_checkpoint_folder_loads_every_encoder_weight_and_its_mel_settings(tmp_path):
    saved = _save_whisper(tmp_path / "w", mel_bins=128)
    encoder = build_encoder(str(tmp_path / "w"), encoder_type="whisper")
    assert isinstance(encoder, WhisperEncoder)
    assert encoder.front_end.settings["feature_size"] == 128
    expected = saved.model.encoder.state_dict()
    loaded = encoder.model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert not any("decoder" in name for name, _ in encoder.named_parameters())


def test_checkpoint_missing_an_encoder_weight_is_refused(tmp_path):
    _save_whisper(tmp_path / "w")
    weights = tmp_path / "w" / "model.safetensors"
    state = load_file(str(weights))
    del state["model.encoder.layers.1.fc1.weight"]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing from the checkpoint.*layers.1.fc1.weight"):
        build_encoder(str(tmp_path / "w"))


def test_other_types_asked_for_as_whisper_and_back_are_errors_naming_both(tmp_path):
    _save_whisper(tmp_path / "w")
    with pytest.raises(ValueError, match="is a 'whisper' model, but encoder_type 'wavlm'"):
        build_encoder(str(tmp_path / "w"), encoder_type="wavlm")
    with pytest.raises(ValueError, match="is a 'hubert' model, but encoder_type 'whisper'"):
        build_encoder("random:hubert-tiny", encoder_type="whisper")


def test_emotion_and_ctc_heads_train_on_whisper_frames():
    from mtl_ser.models.heads import CTCHead, EmotionHead

    torch.manual_seed(0)
    encoder = build_encoder("random:whisper-tiny", encoder_type="whisper")
    emotion = EmotionHead(64, pooling="attentive", layers="weighted", num_layers=encoder.num_layers)
    emotion.set_num_classes(4)
    ctc = CTCHead(64, n_tokens=29)
    _, batch, lens = _waves(1.0, 0.6)
    out = encoder.train()(batch, lens)
    logits = emotion(out.hidden, out.lengths, out.layers)
    log_probs = ctc(out.hidden, out.layers)
    assert logits.shape == (2, 4) and log_probs.shape == (2, 50, 29)
    (logits.sum() + log_probs.logsumexp(-1).sum()).backward()
    assert encoder.model.conv1.weight.grad is not None
    assert encoder.model.layers[0].fc1.weight.grad.abs().sum() > 0


def test_export_spec_rebuilds_the_same_encoder_in_either_mode():
    from mtl_ser.export import module_spec
    from mtl_ser.model_spec import build_module, validate_spec

    torch.manual_seed(0)
    encoder = WhisperEncoder("random:whisper-tiny", whisper_input="padded_30s").eval()
    spec = json.loads(json.dumps(module_spec(encoder)))  # as model_spec.json holds it
    full = {
        "format": 1,
        "modules": {
            "encoder": spec,
            "emotion_head": {
                "class": "mtl_ser.models.heads.EmotionHead",
                "kwargs": {"input_size": 64, "n_classes": 4},
            },
        },
        "labels": ["a", "b", "c", "d"],
        "vocab": ["_"],
        "sample_rate": 16000,
        "channels": "mean",
    }
    validate_spec(full, "test")
    rebuilt = build_module(spec).eval()
    rebuilt.load_state_dict(encoder.state_dict())
    assert rebuilt.whisper_input == "padded_30s"
    _, batch, lens = _waves(0.5)
    with torch.no_grad():
        assert torch.equal(rebuilt(batch, lens).hidden, encoder(batch, lens).hidden)

"""The wav2vec2 encoder: padding invariance, true output lengths, model sources."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from mtl_ser.models.heads import EmotionHead
from mtl_ser.models.wav2vec2 import Wav2Vec2Encoder, masked_group_norm, normalize_per_utterance

LENGTHS = [16000, 9000, 4321]


def padded_batch(lengths=LENGTHS, seed=0):
    """Random waveforms zero-padded into ``[B, S]`` with relative lengths ``[B]``."""
    gen = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wavs[i, :n] = 0.1 * torch.randn(n, generator=gen)
    return wavs, torch.tensor(lengths, dtype=torch.float) / max(lengths)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return Wav2Vec2Encoder("random:tiny").eval()


def test_padded_batch_equals_each_utterance_alone(encoder):
    wavs, rel = padded_batch()
    heads = {}
    for pooling in ("mean", "attentive"):
        torch.manual_seed(1)
        heads[pooling] = EmotionHead(encoder.output_size, pooling=pooling, n_classes=4).eval()
    with torch.no_grad():
        hidden, frames = encoder(wavs, rel)
        batch_out = {p: h(hidden, frames) for p, h in heads.items()}
        for i, n in enumerate(LENGTHS):
            alone, alone_frames = encoder(wavs[i : i + 1, :n], torch.ones(1))
            assert alone_frames.item() == frames[i].item() == alone.shape[1]
            torch.testing.assert_close(hidden[i, : frames[i]], alone[0], atol=1e-5, rtol=1e-4)
            for pooling, head in heads.items():
                torch.testing.assert_close(
                    batch_out[pooling][i], head(alone, alone_frames)[0], atol=1e-5, rtol=1e-4
                )


def test_plain_group_norm_would_leak_padding(encoder):
    """The reason for the masked first-layer norm: Hugging Face's own forward pass with an
    attention mask still differs between padded and single runs for group-norm models."""
    wavs, rel = padded_batch()
    model = encoder.model
    n = LENGTHS[2]
    mask = (torch.arange(wavs.shape[1])[None] < torch.tensor(LENGTHS)[:, None]).long()
    with torch.no_grad():
        normalized = normalize_per_utterance(wavs, torch.tensor(LENGTHS))
        batch = model(normalized, attention_mask=mask).last_hidden_state
        alone = model(normalized[2:3, :n]).last_hidden_state
    frames = alone.shape[1]
    assert (batch[2, :frames] - alone[0]).abs().max() > 1e-3


def test_output_lengths_are_the_conv_formula(encoder):
    wavs, rel = padded_batch()
    _, frames = encoder(wavs, rel)
    expected = []
    for n in LENGTHS:
        config = encoder.model.config
        for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
            n = (n - kernel) // stride + 1
        expected.append(n)
    assert frames.tolist() == expected
    assert frames.dtype == torch.long


def test_masked_group_norm_matches_group_norm_on_unpadded_input():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 8)
    norm.weight.data.uniform_()
    norm.bias.data.uniform_()
    x = torch.randn(2, 8, 30)
    full = masked_group_norm(x, torch.tensor([30, 30]), norm)
    torch.testing.assert_close(full, norm(x))
    part = masked_group_norm(x, torch.tensor([30, 12]), norm)
    torch.testing.assert_close(part[1, :, :12], norm(x[1:2, :, :12])[0])


def test_normalize_per_utterance_ignores_padding():
    wavs = torch.tensor([[1.0, 3.0, 0.0, 0.0], [2.0, 4.0, 6.0, 8.0]])
    out = normalize_per_utterance(wavs, torch.tensor([2, 4]))
    torch.testing.assert_close(out[0], torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    assert out[1].mean().abs() < 1e-6 and (out[1].pow(2).mean() - 1).abs() < 1e-5


def test_frozen_parts(tmp_path):
    enc = Wav2Vec2Encoder("random:tiny", freeze_feature_encoder=True)
    assert not any(p.requires_grad for p in enc.model.feature_extractor.parameters())
    assert all(p.requires_grad for p in enc.model.encoder.parameters())
    # The masking embedding never gets a gradient here, so it is frozen (DDP needs that).
    assert not enc.model.masked_spec_embed.requires_grad
    frozen = Wav2Vec2Encoder("random:tiny", freeze=True).train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())


def test_loads_from_a_save_pretrained_folder(tmp_path):
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(config).save_pretrained(tmp_path / "w2v2")
    a = Wav2Vec2Encoder(str(tmp_path / "w2v2")).eval()
    b = Wav2Vec2Encoder(str(tmp_path / "w2v2")).eval()
    wavs, rel = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(a(wavs, rel)[0], b(wavs, rel)[0])
    assert a.output_size == 32


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(OSError, match="has no config.json"):
        Wav2Vec2Encoder(str(tmp_path))


def test_missing_hub_model_explains_how_to_provide_it(tmp_path):
    code = (
        "from mtl_ser.models.wav2vec2 import Wav2Vec2Encoder\n"
        f"Wav2Vec2Encoder('facebook/wav2vec2-base', save_path={str(tmp_path)!r})\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "could not load the wav2vec2 model 'facebook/wav2vec2-base'" in done.stderr
    assert "save_pretrained" in done.stderr and "random:tiny" in done.stderr


def test_unknown_random_preset():
    with pytest.raises(ValueError, match="unknown random preset 'huge'"):
        Wav2Vec2Encoder("random:huge")

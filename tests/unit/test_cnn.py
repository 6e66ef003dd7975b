"""The CNN baseline: log-mel front end, padding-aware conv blocks, output shapes and lengths."""

import pytest
import torch

from mtl_ser.models.cnn import CNNEncoder, LogMelFrontEnd, MaskedBatchNorm2d
from mtl_ser.models.heads import EmotionHead

LENGTHS = [16000, 9000, 4321, 700]  # samples; 700 gives fewer frames than 2 ** blocks


def padded(lengths, seed=0, feature_dim=None):
    """Random zero-padded waveforms ``[B, S]`` (or features ``[B, T, F]``) + relative lengths."""
    gen = torch.Generator().manual_seed(seed)
    shape = (len(lengths), max(lengths)) + ((feature_dim,) if feature_dim else ())
    x = torch.zeros(shape)
    for i, n in enumerate(lengths):
        x[i, :n] = 0.1 * torch.randn((n,) + shape[2:], generator=gen)
    return x, torch.tensor(lengths, dtype=torch.float) / max(lengths)


def trained_encoder(channels=(8, 16, 32), n_mels=40, seed=0) -> CNNEncoder:
    """An encoder after a few training steps (running statistics away from 0 / 1) with
    random batch-norm affine parameters, in eval mode."""
    torch.manual_seed(seed)
    encoder = CNNEncoder(LogMelFrontEnd(n_mels=n_mels), channels)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    for step in range(3):
        feats, rel = padded([120, 90, 40, 17], seed=step, feature_dim=n_mels)
        out, _, _ = encoder(feats, rel)
        optimizer.zero_grad()
        out.pow(2).mean().backward()
        optimizer.step()
    for module in encoder.modules():
        if isinstance(module, MaskedBatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-1.0, 1.0)
    return encoder.eval()


def test_front_end_shapes_and_normalisation():
    front_end = LogMelFrontEnd(n_mels=40)
    wav = 0.1 * torch.randn(16000)
    feats = front_end.features(wav)
    # Centred STFT, 10 ms hop: 1 + 16000 // 160 frames.
    assert feats.shape == (101, 40) and feats.dtype == torch.float32
    assert front_end.output_lengths(torch.tensor([16000, 159])).tolist() == [101, 1]
    torch.testing.assert_close(feats.mean(0), torch.zeros(40), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.std(0, correction=0), torch.ones(40), atol=1e-4, rtol=0)
    raw = LogMelFrontEnd(n_mels=40, normalize="none").features(wav)
    assert raw.max() - raw.min() <= 80.0 + 1e-3  # decibels, floored at top_db below the max
    torch.testing.assert_close((raw - raw.mean(0)) / raw.std(0, correction=0), feats)
    with pytest.raises(ValueError, match="normalize"):
        LogMelFrontEnd(normalize="global")


def test_front_end_batch_equals_each_utterance_alone():
    """No log of padded silence and no statistics over padding."""
    front_end = LogMelFrontEnd(n_mels=40)
    wavs, rel = padded(LENGTHS)
    feats, feat_rel = front_end(wavs, rel)
    frames = torch.round(feat_rel * feats.shape[1]).long()
    assert frames.tolist() == front_end.output_lengths(torch.tensor(LENGTHS)).tolist()
    for i, n in enumerate(LENGTHS):
        torch.testing.assert_close(feats[i, : frames[i]], front_end.features(wavs[i, :n]))
        assert not feats[i, frames[i] :].any()


def test_front_end_has_no_state():
    """The data pipeline and the encoder share one front end: moving the encoder to a GPU
    must not move anything the pipeline's loader workers use."""
    assert not list(LogMelFrontEnd().state_dict())


@pytest.mark.parametrize("pooling", ["mean", "attentive"])
def test_padded_batch_equals_each_utterance_alone(pooling):
    encoder = trained_encoder()
    torch.manual_seed(1)
    head = EmotionHead(encoder.output_size, pooling=pooling, dropout=0.5, n_classes=4).eval()
    wavs, rel = padded(LENGTHS)
    with torch.no_grad():
        hidden, frames, _ = encoder(wavs, rel)
        logits = head(hidden, frames)
        for i, n in enumerate(LENGTHS):
            alone, alone_frames, _ = encoder(wavs[i : i + 1, :n], torch.ones(1))
            assert alone_frames.item() == frames[i].item() == alone.shape[1]
            torch.testing.assert_close(hidden[i, : frames[i]], alone[0], atol=1e-5, rtol=1e-4)
            assert not hidden[i, frames[i] :].any()  # padding stays zero
            torch.testing.assert_close(
                logits[i], head(alone, alone_frames)[0], atol=1e-5, rtol=1e-4
            )


def test_features_and_waveforms_give_the_same_output():
    """Training feeds cached features, inference feeds waveforms."""
    encoder = trained_encoder()
    wavs, rel = padded(LENGTHS)
    with torch.no_grad():
        from_wavs, frames, _ = encoder(wavs, rel)
        feats, feat_rel = encoder.front_end(wavs, rel)
        from_feats, feat_frames, _ = encoder(feats, feat_rel)
    assert frames.tolist() == feat_frames.tolist()
    torch.testing.assert_close(from_wavs, from_feats)


def test_output_shape_and_lengths():
    encoder = CNNEncoder(LogMelFrontEnd(n_mels=40), [8, 16, 32])
    feats, rel = padded([100, 57, 9, 3], feature_dim=40)
    out, frames, _ = encoder(feats, rel)
    # Each block halves time and frequency (floor); an utterance keeps at least one frame.
    assert out.shape == (4, 12, 32 * 5) and encoder.output_size == 160
    assert frames.dtype == torch.long and frames.tolist() == [12, 7, 1, 1]
    assert encoder.output_lengths(torch.tensor([16000, 700])).tolist() == [12, 1]
    assert encoder.feature_output_lengths(torch.tensor([100, 57, 9, 3])).tolist() == [12, 7, 1, 1]
    # A batch shorter than 2 ** blocks frames still has one output frame.
    out, frames, _ = encoder(feats[:, :3], torch.ones(4))
    assert out.shape == (4, 1, 160) and frames.tolist() == [1, 1, 1, 1]


def test_channel_widths_are_one_setting():
    front_end = LogMelFrontEnd(n_mels=80)
    assert CNNEncoder(front_end).output_size == 512 * 5  # 64-128-256-512, the study's best
    assert CNNEncoder(front_end, [64, 128, 256, 512, 1024]).output_size == 1024 * 2
    assert CNNEncoder(front_end, [64, 128, 256]).output_size == 256 * 10
    with pytest.raises(ValueError, match="halve 80 mel bands to nothing"):
        CNNEncoder(front_end, [8] * 7)
    with pytest.raises(ValueError, match=r"features \[B, T, 80\]"):
        CNNEncoder(front_end)(torch.zeros(2, 10, 40), torch.ones(2))


def test_masked_batch_norm_trains_on_true_frames_only():
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(3)
    masked = MaskedBatchNorm2d(3)
    true_frames = torch.randn(2, 3, 5, 4)
    padded_input = torch.cat([true_frames, torch.full((2, 3, 4, 4), 7.0)], dim=2)
    mask = torch.arange(9)[None] < torch.tensor([5, 5])[:, None]
    expected = plain(true_frames)
    out = masked(padded_input, mask)
    torch.testing.assert_close(out[:, :, :5], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    # Unequal lengths: the statistics are those of the concatenated true frames.
    lengths = torch.tensor([5, 2])
    mask = torch.arange(5)[None] < lengths[:, None]
    out = MaskedBatchNorm2d(3)(true_frames, mask)
    valid = torch.cat([true_frames[0], true_frames[1, :, :2]], dim=1)  # [C, 7, F]
    mean = valid.mean(dim=(1, 2))
    std = valid.var(dim=(1, 2), correction=0).add(1e-5).sqrt()
    torch.testing.assert_close(
        out[1, :, :2], (true_frames[1, :, :2] - mean[:, None, None]) / std[:, None, None]
    )
    # Eval mode: plain batch norm with the running statistics.
    masked.eval()
    plain.eval()
    torch.testing.assert_close(masked(padded_input, mask), plain(padded_input))


def test_export_kwargs_rebuild_the_same_model():
    encoder = trained_encoder()
    rebuilt = CNNEncoder(**encoder.export_kwargs())
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    rebuilt.eval()
    wavs, rel = padded(LENGTHS)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(wavs, rel)[:2], encoder(wavs, rel)[:2])

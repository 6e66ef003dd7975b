"""`padding_aware: False` reproduces the released Cai et al. code's batched forward."""

import torch

from mtl_ser.models.heads import EmotionHead
from mtl_ser.models.ssl import SSLEncoder, normalize_per_utterance


def batch():
    gen = torch.Generator().manual_seed(0)
    wavs = torch.randn(2, 8000, generator=gen)
    wavs[1, 4000:] = 0.0  # the second utterance is half as long
    return wavs, torch.tensor([1.0, 0.5])


def test_released_padding_equals_the_hugging_face_forward_without_mask():
    torch.manual_seed(0)
    encoder = SSLEncoder("random:tiny", padding_aware=False).eval()
    wavs, rel = batch()
    with torch.no_grad():
        out = encoder(wavs, rel)
        lengths = torch.round(rel * wavs.shape[1]).long()
        released = encoder.model(normalize_per_utterance(wavs, lengths)).last_hidden_state
    torch.testing.assert_close(out.hidden, released, atol=1e-5, rtol=1e-5)
    # Every utterance reports the padded frame count: pooling and CTC see the padding.
    assert out.lengths.tolist() == [out.hidden.shape[1]] * 2


def test_released_padding_makes_outputs_depend_on_the_batch():
    torch.manual_seed(0)
    aware = SSLEncoder("random:tiny").eval()
    released = SSLEncoder("random:tiny", padding_aware=False).eval()
    released.load_state_dict(aware.state_dict())
    head = EmotionHead(aware.output_size, n_classes=4).eval()
    wavs, rel = batch()
    with torch.no_grad():
        alone = head(*aware(wavs[1:, :4000], torch.tensor([1.0]))[:2])
        batched_aware = head(*aware(wavs, rel)[:2])[1:]
        batched_released = head(*released(wavs, rel)[:2])[1:]
    torch.testing.assert_close(batched_aware, alone, atol=1e-5, rtol=1e-5)
    assert (batched_released - alone).abs().max() > 1e-2
    assert released.export_kwargs()["padding_aware"] is False
    assert "padding_aware" not in aware.export_kwargs()

"""The self-supervised encoders: padding invariance for every backbone, hidden layers, model
sources and the checks that keep a checkpoint from loading partially or as another model."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from mtl_ser.models import ssl
from mtl_ser.models.heads import EmotionHead
from mtl_ser.models.ssl import SSLEncoder, masked_group_norm, normalize_per_utterance

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
    return SSLEncoder("random:tiny").eval()


def test_padded_batch_equals_each_utterance_alone(encoder):
    wavs, rel = padded_batch()
    heads = {}
    for pooling in ("mean", "attentive"):
        torch.manual_seed(1)
        heads[pooling] = EmotionHead(encoder.output_size, pooling=pooling, n_classes=4).eval()
    with torch.no_grad():
        hidden, frames, _ = encoder(wavs, rel)
        batch_out = {p: h(hidden, frames) for p, h in heads.items()}
        for i, n in enumerate(LENGTHS):
            alone, alone_frames, _ = encoder(wavs[i : i + 1, :n], torch.ones(1))
            assert alone_frames.item() == frames[i].item() == alone.shape[1]
            torch.testing.assert_close(hidden[i, : frames[i]], alone[0], atol=1e-5, rtol=1e-4)
            for pooling, head in heads.items():
                torch.testing.assert_close(
                    batch_out[pooling][i], head(alone, alone_frames)[0], atol=1e-5, rtol=1e-4
                )


def test_our_padding_awareness_rests_on_the_per_utterance_first_layer(encoder, monkeypatch):
    """Our encoder with the first layer run on the padded batch (its GroupNorm's statistics
    over the padding, as Hugging Face's forward does) gives a padded utterance another
    output than alone: `first_conv_layer` is what makes
    `test_padded_batch_equals_each_utterance_alone` hold."""
    wavs, rel = padded_batch()
    n = LENGTHS[2]
    monkeypatch.setattr(ssl, "first_conv_layer", lambda layer, x, lengths: layer(x[:, None]))
    with torch.no_grad():
        hidden, frames, _ = encoder(wavs, rel)
        alone, _, _ = encoder(wavs[2:3, :n], torch.ones(1))
    assert (hidden[2, : frames[2]] - alone[0]).abs().max() > 1e-3


def test_output_lengths_are_the_conv_formula(encoder):
    wavs, rel = padded_batch()
    _, frames, _ = encoder(wavs, rel)
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


def test_masked_group_norm_is_the_native_norm_per_utterance_and_zero_padding():
    """Each utterance's frames get exactly (bitwise) what GroupNorm gives them alone and
    padded frames are 0, without the masked full-batch statistics it used to build."""
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(8, 8)
    norm.weight.data.uniform_()
    norm.bias.data.uniform_()
    x = torch.randn(3, 8, 40)
    out = masked_group_norm(x, torch.tensor([40, 25, 7]), norm)
    for b, n in enumerate([40, 25, 7]):
        assert torch.equal(out[b, :, :n], norm(x[b : b + 1, :, :n])[0])
        assert not out[b, :, n:].any()


def test_traced_masked_group_norm_keeps_lengths_dynamic():
    """Traced (as the ONNX export traces it), the norm is one masked computation whose graph
    serves other lengths and batch sizes than the tracing example, with the per-utterance
    results."""
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(8, 8)
    norm.weight.data.uniform_()
    norm.bias.data.uniform_()
    x, lengths = torch.randn(3, 8, 50), torch.tensor([50, 21, 4])

    class Norm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = norm

        def forward(self, x, n):
            return masked_group_norm(x, n, self.norm)

    traced = torch.jit.trace(Norm(), (torch.randn(2, 8, 30), torch.tensor([30, 9])))
    torch.testing.assert_close(traced(x, lengths), masked_group_norm(x, lengths, norm))


def test_normalize_per_utterance_ignores_padding():
    wavs = torch.tensor([[1.0, 3.0, 0.0, 0.0], [2.0, 4.0, 6.0, 8.0]])
    out = normalize_per_utterance(wavs, torch.tensor([2, 4]))
    torch.testing.assert_close(out[0], torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    assert out[1].mean().abs() < 1e-6 and (out[1].pow(2).mean() - 1).abs() < 1e-5


def test_frozen_parts(tmp_path):
    enc = SSLEncoder("random:tiny", freeze_feature_encoder=True)
    assert not any(p.requires_grad for p in enc.model.feature_extractor.parameters())
    assert all(p.requires_grad for p in enc.model.encoder.parameters())
    # The masking embedding never gets a gradient here, so it is frozen (DDP needs that).
    assert not enc.model.masked_spec_embed.requires_grad
    frozen = SSLEncoder("random:tiny", freeze=True).train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize("padding_aware", [True, False])
@pytest.mark.parametrize(
    "preset",
    ["wav2vec2-tiny", "wav2vec2-lv60-tiny", "hubert-tiny", "wavlm-tiny", "data2vec-audio-tiny"],
)
def test_frozen_feature_encoder_records_no_autograd_graph(preset, padding_aware):
    """In training mode a frozen feature encoder's convolutions run without autograd (each
    transformers feature encoder marks its input as requiring grad unless its private
    ``_freeze_parameters`` was called, which differentiated the waveform for nothing),
    while the transformer still gets gradients."""
    torch.manual_seed(0)
    enc = SSLEncoder(
        f"random:{preset}", freeze_feature_encoder=True, padding_aware=padding_aware
    ).train()
    conv_outputs = []  # (layer index, output); padding-aware, the first runs per utterance
    for i, layer in enumerate(enc.model.feature_extractor.conv_layers):
        layer.conv.register_forward_hook(lambda m, a, out, i=i: conv_outputs.append((i, out)))
    wavs, rel = padded_batch()
    out = enc(wavs, rel)
    layers = enc.model.feature_extractor.conv_layers
    assert {i for i, _ in conv_outputs} == set(range(len(layers)))
    graphs = [i for i, x in conv_outputs if x.grad_fn is not None or x.requires_grad]
    assert not graphs, f"{preset}: convolutions {graphs} recorded an autograd graph"
    out.hidden.pow(2).mean().backward()
    assert all(p.grad is None for p in enc.model.feature_extractor.parameters())
    trained = [p for p in enc.model.encoder.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)


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
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(tmp_path / "w2v2")
    a = SSLEncoder(str(tmp_path / "w2v2")).eval()
    b = SSLEncoder(str(tmp_path / "w2v2")).eval()
    wavs, rel = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(a(wavs, rel)[0], b(wavs, rel)[0])
    assert a.output_size == 32


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(OSError, match="has no config.json"):
        SSLEncoder(str(tmp_path))


def test_missing_hub_model_explains_how_to_provide_it(tmp_path):
    code = (
        "from mtl_ser.models.ssl import SSLEncoder\n"
        f"SSLEncoder('facebook/wav2vec2-base', save_path={str(tmp_path)!r})\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "could not load the encoder model 'facebook/wav2vec2-base'" in done.stderr
    assert "save_pretrained" in done.stderr and "random:tiny" in done.stderr


def test_unknown_random_preset():
    with pytest.raises(ValueError, match="unknown random preset 'huge'"):
        SSLEncoder("random:huge")


# ------------------------------------------------------------------- every backbone
PRESETS = {
    # preset: (model_type, attention implementation, padding-aware part exercised)
    "tiny": ("wav2vec2", "sdpa"),  # GroupNorm-first feature encoder
    "wav2vec2-lv60-tiny": ("wav2vec2", "sdpa"),  # LayerNorm feature encoder, pre-norm layers
    "hubert-tiny": ("hubert", "sdpa"),
    "wavlm-tiny": ("wavlm", "eager"),  # gated relative position bias
    "data2vec-audio-tiny": ("data2vec-audio", "sdpa"),  # stacked positional convolutions
}


def tiny(preset, **kwargs):
    torch.manual_seed(0)
    return SSLEncoder(f"random:{preset}", **kwargs).eval()


@pytest.mark.parametrize("preset", PRESETS)
def test_every_backbone_is_padding_aware(preset):
    encoder = tiny(preset)
    model_type, attention = PRESETS[preset]
    assert encoder.model_type == model_type
    assert encoder.model.config._attn_implementation == attention
    torch.manual_seed(1)
    head = EmotionHead(
        encoder.output_size, n_classes=4, layers="weighted", num_layers=encoder.num_layers
    ).eval()
    head.layer_sum.weights.data.normal_()
    wavs, rel = padded_batch()
    with torch.no_grad():
        batch = encoder(wavs, rel)
        logits = head(*batch)
        assert len(batch.layers) == encoder.num_layers == 3
        for i, n in enumerate(LENGTHS):
            alone = encoder(wavs[i : i + 1, :n], torch.ones(1))
            t = alone.lengths.item()
            assert batch.lengths[i].item() == t == alone.hidden.shape[1]
            torch.testing.assert_close(batch.hidden[i, :t], alone.hidden[0], atol=1e-5, rtol=1e-4)
            for layer, layer_alone in zip(batch.layers, alone.layers, strict=True):
                torch.testing.assert_close(layer[i, :t], layer_alone[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(logits[i], head(*alone)[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("preset", ["wav2vec2-lv60-tiny", "wavlm-tiny"])
def test_hidden_layers_are_hugging_faces_hidden_states(preset):
    """Our layers are transformers' ``hidden_states`` (what its weighted layer sum reads),
    and ``hidden`` its last_hidden_state, which differ for pre-norm (stable) models."""
    encoder = tiny(preset)
    wav = 0.1 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = encoder(wav, torch.ones(1))
        normalized = normalize_per_utterance(wav, torch.tensor([8000]))
        theirs = encoder.model(
            normalized if encoder.normalize_waveform else wav, output_hidden_states=True
        )
    torch.testing.assert_close(ours.hidden, theirs.last_hidden_state, atol=1e-5, rtol=1e-4)
    assert len(ours.layers) == len(theirs.hidden_states)
    for a, b in zip(ours.layers, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = {}
    for checkpointing in (False, True):
        encoder = tiny("wavlm-tiny", gradient_checkpointing=checkpointing, mask_time_prob=0.0)
        encoder.train()
        flags = [getattr(m, "gradient_checkpointing", False) for m in encoder.modules()]
        assert any(flags) == checkpointing
        wavs, rel = padded_batch()
        torch.manual_seed(3)  # the same dropout masks in both runs
        out = encoder(wavs, rel)
        (out.hidden.pow(2).mean() + out.layers[1].mean()).backward()
        grads[checkpointing] = {
            n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None
        }
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) > 20
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, atol=1e-6, rtol=1e-4, msg=name)


def save_checkpoint(folder, preset, do_normalize=False):
    """A tiny random model of ``preset`` saved as transformers does, with its feature
    extractor's preprocessor_config.json."""
    encoder = tiny(preset)
    encoder.model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(folder)
    return encoder


def test_checkpoint_of_another_type_is_an_error_naming_both(tmp_path):
    save_checkpoint(tmp_path / "wavlm", "wavlm-tiny")
    with pytest.raises(ValueError, match="is a 'wavlm' model, but encoder_type 'wav2vec2'"):
        SSLEncoder(str(tmp_path / "wavlm"), encoder_type="wav2vec2")
    # Without an expected type the checkpoint loads as what it is, every weight used.
    loaded = SSLEncoder(str(tmp_path / "wavlm"))
    assert loaded.model_type == "wavlm" and loaded.normalize_waveform is False
    with pytest.raises(ValueError, match="encoder_type 'wav2vec3' is not one of"):
        SSLEncoder(str(tmp_path / "wavlm"), encoder_type="wav2vec3")


def test_unsupported_model_type_is_refused(tmp_path):
    from transformers import Wav2Vec2ConformerConfig

    Wav2Vec2ConformerConfig(hidden_size=32, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'wav2vec2-conformer', which mtl_ser does not"):
        SSLEncoder(str(tmp_path))


def test_partial_loads_are_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    save_checkpoint(tmp_path, "hubert-tiny", do_normalize=True)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(str(weights))
    # Pretraining-only tensors are listed exceptions: still a complete encoder.
    save_file({**tensors, "quantizer.codevectors": torch.zeros(2, 3)}, str(weights))
    assert SSLEncoder(str(tmp_path)).normalize_waveform is True
    dropped = {k: v for k, v in tensors.items() if "encoder.layers.1." not in k}
    save_file(dropped, str(weights))
    with pytest.raises(
        ValueError, match=r"tensor\(s\) missing from the checkpoint \(encoder.layers.1"
    ):
        SSLEncoder(str(tmp_path))
    save_file({**tensors, "encoder.extra.weight": torch.zeros(2)}, str(weights))
    with pytest.raises(ValueError, match="in the checkpoint but not in the model .encoder.extra"):
        SSLEncoder(str(tmp_path))


def test_normalisation_follows_the_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "a", "tiny", do_normalize=True)
    assert SSLEncoder(str(tmp_path / "a")).normalize_waveform is True
    assert SSLEncoder(str(tmp_path / "a"), normalize_waveform=False).normalize_waveform is False
    (tmp_path / "a" / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="has no preprocessor_config.json.*set normalize_waveform"):
        SSLEncoder(str(tmp_path / "a"))
    assert tiny("wavlm-tiny").normalize_waveform is False  # the family's base convention
    assert tiny("tiny").normalize_waveform is True


def test_data2vec_positional_convolutions_would_leak_padding():
    """The reason for re-zeroing padded frames between data2vec-audio's positional
    convolutions: without it a padded batch differs from the utterance alone."""
    encoder = tiny("data2vec-audio-tiny")
    for layer in encoder.model.encoder.pos_conv_embed.layers:
        layer._forward_pre_hooks.clear()
    wavs, rel = padded_batch()
    with torch.no_grad():
        batch = encoder(wavs, rel)
        alone = encoder(wavs[2:3, : LENGTHS[2]], torch.ones(1))
    t = alone.lengths.item()
    assert (batch.hidden[2, :t] - alone.hidden[0]).abs().max() > 1e-2


def test_hub_configs_with_legacy_keys_export_a_loadable_spec(tmp_path):
    """Hub config.json files carry keys of older transformers versions; the exported spec
    keeps the config class's own keys only, so the allow-list accepts it."""
    import json

    from mtl_ser.export import module_spec
    from mtl_ser.model_spec import build_module, validate_spec

    save_checkpoint(tmp_path, "tiny", do_normalize=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(gradient_checkpointing=True, feat_extract_dropout=0.0, torch_dtype="float32")
    (tmp_path / "config.json").write_text(json.dumps(config))
    encoder = SSLEncoder(str(tmp_path))
    head = {
        "class": "mtl_ser.models.heads.EmotionHead",
        "kwargs": {"input_size": 64, "n_classes": 2},
    }
    spec = {
        "format": 1,
        "modules": {"encoder": module_spec(encoder), "emotion_head": head},
        "labels": ["a", "b"],
        "vocab": ["<blank>", "A"],
        "sample_rate": 16000,
        "channels": "mean",
    }
    checked = validate_spec(json.loads(json.dumps(spec)), "spec.json")
    rebuilt = build_module(checked["modules"]["encoder"])
    rebuilt.load_state_dict(encoder.state_dict())
    wavs, rel = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt.eval()(wavs, rel).hidden, encoder.eval()(wavs, rel).hidden
        )


def test_first_conv_layer_is_the_batch_layer_with_per_utterance_statistics():
    """`first_conv_layer` (each utterance convolved alone) equals the batch convolution
    followed by `masked_group_norm` and the activation, padded frames 0, and trains the
    convolution (gradients reach its weight through the per-utterance pieces)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(1, 8, kernel_size=10, stride=5, bias=False)
    layer = torch.nn.Module()
    layer.conv, layer.layer_norm, layer.activation = conv, torch.nn.GroupNorm(8, 8), F.gelu
    lengths = torch.tensor([400, 237, 16])
    wavs = torch.randn(3, 400) * (torch.arange(400)[None] < lengths[:, None])
    out = ssl.first_conv_layer(layer, wavs, lengths)
    frames = torch.div(lengths - 10, 5, rounding_mode="floor") + 1
    reference = F.gelu(masked_group_norm(conv(wavs[:, None]), frames, layer.layer_norm))
    assert out.shape == reference.shape == (3, 8, 79)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4)
    assert out[1, :, frames[1] :].abs().max() == 0 and out[2, :, 2:].abs().max() == 0
    out.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0

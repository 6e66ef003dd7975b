"""The wav2vec 2.0 encoder, padding-aware from waveform to last hidden layer.

Batched inference must give every utterance the output it gets alone. The Hugging Face model
does not quite: wav2vec2-base normalises its first convolution with a GroupNorm over time
(one group per channel), whose statistics include the zero padding. This wrapper runs the
same layers but computes those statistics over each utterance's own frames, normalises each
waveform over its own samples, and passes the frame-level attention mask to the
transformer, so padded batches and single utterances agree to float tolerance.

``source`` is a hub id (``facebook/wav2vec2-base``), a local ``save_pretrained`` folder, or
``random:<preset>`` for a randomly initialised model built from a config (``random:tiny`` for
tests and the CPU demo, ``random:base`` for a base-sized model without download).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from mtl_ser.models.masking import lengths_to_mask, masked_mean

RANDOM_PRESETS = {
    # Small enough for 2 CPU cores: ~0.2 M parameters, 20 ms frames like the real model.
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32, 32, 32, 32, 32, 32, 32),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    ),
    # The facebook/wav2vec2-base architecture (transformers' defaults), randomly initialised.
    "base": dict(),
}


def _missing_model_message(source: str, save_path: str | None, err: Exception) -> str:
    return (
        f"could not load the wav2vec2 model {source!r} ({type(err).__name__}: {err}).\n"
        "Provide it in one of these ways:\n"
        f"  - run once with network access; it is then cached in {save_path or 'the HF cache'}\n"
        '  - on a machine with access: python -c "from transformers import Wav2Vec2Model, '
        f"Wav2Vec2FeatureExtractor as F; m='{source}'; "
        "Wav2Vec2Model.from_pretrained(m).save_pretrained('w2v2'); "
        "F.from_pretrained(m).save_pretrained('w2v2')\", copy the folder and pass "
        "--wav2vec2_source=path/to/w2v2\n"
        "  - for tests and the CPU demo, a random model: --wav2vec2_source=random:tiny"
    )


def build_wav2vec2(
    source: str | dict, save_path: str | None = None, **config_overrides
) -> Wav2Vec2Model:
    """Creates the Hugging Face model.

    Args:
        source: hub id, local folder with config.json + weights, ``random:<preset>``, or a
            Wav2Vec2Config as a dict (random weights, to be loaded from an export).
        save_path: hub cache folder for downloads (None: the default HF cache).
        **config_overrides: Wav2Vec2Config attributes to override (layerdrop, mask_time_prob...).

    Returns: a Wav2Vec2Model. Raises OSError with instructions when a pretrained model can't
    be found.
    """
    if isinstance(source, dict):
        return Wav2Vec2Model(Wav2Vec2Config.from_dict({**source, **config_overrides}))
    if source.startswith("random:"):
        preset = source.split(":", 1)[1]
        if preset not in RANDOM_PRESETS:
            raise ValueError(f"unknown random preset {preset!r}; use one of {list(RANDOM_PRESETS)}")
        return Wav2Vec2Model(Wav2Vec2Config(**{**RANDOM_PRESETS[preset], **config_overrides}))
    local = Path(source)
    if local.exists() and not (local / "config.json").is_file():
        raise OSError(f"{local} has no config.json: not a save_pretrained folder")
    try:
        return Wav2Vec2Model.from_pretrained(source, cache_dir=save_path, **config_overrides)
    except OSError as err:
        raise OSError(_missing_model_message(source, save_path, err)) from err


class Wav2Vec2Encoder(nn.Module):
    """Waveforms -> last hidden layer of wav2vec 2.0, with true output lengths.

    Args:
        source: see `build_wav2vec2`.
        save_path: hub cache folder.
        freeze: freeze the whole model (kept in eval mode).
        freeze_feature_encoder: freeze only the convolutional feature encoder.
        normalize_waveform: zero-mean unit-variance per utterance over its own samples (what
            the wav2vec2-base feature extractor does).
        layerdrop: transformer layer drop probability (0 keeps DDP free of unused parameters).
        mask_time_prob: SpecAugment-style time masking probability during training.
    """

    def __init__(
        self,
        source: str,
        save_path: str | None = None,
        freeze: bool = False,
        freeze_feature_encoder: bool = False,
        normalize_waveform: bool = True,
        layerdrop: float = 0.0,
        mask_time_prob: float = 0.05,
    ):
        super().__init__()
        self.model = build_wav2vec2(
            source, save_path, layerdrop=layerdrop, mask_time_prob=mask_time_prob
        )
        self.freeze = freeze
        self.normalize_waveform = normalize_waveform
        config = self.model.config
        self.output_size = config.hidden_size
        self._group_norm_first = config.feat_extract_norm == "group"
        if config.add_adapter:
            raise ValueError("wav2vec2 models with an adapter are not supported")
        # Never trained here, and a parameter without gradient breaks DDP: the masking
        # embedding keeps its pretrained value.
        if getattr(self.model, "masked_spec_embed", None) is not None:
            self.model.masked_spec_embed.requires_grad_(False)
        if freeze:
            self.model.requires_grad_(False)
        elif freeze_feature_encoder:
            self.model.feature_extractor.requires_grad_(False)

    def export_kwargs(self) -> dict:
        """Constructor arguments that rebuild this architecture offline (weights apart)."""
        return {
            "source": self.model.config.to_dict(),
            "normalize_waveform": self.normalize_waveform,
        }

    def train(self, mode: bool = True):
        """A frozen encoder stays in eval mode (no dropout, no masking)."""
        super().train(mode and not self.freeze)
        return self

    def output_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Frames produced from ``sample_lengths`` samples (LongTensor ``[B]`` -> ``[B]``)."""
        return self.model._get_feat_extract_output_lengths(sample_lengths).long()

    def _features(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Convolutional features ``[B, T', C]``, first-layer statistics over true frames."""
        x = wavs[:, None]
        for i, layer in enumerate(self.model.feature_extractor.conv_layers):
            if i == 0 and self._group_norm_first:
                x = layer.conv(x)
                k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
                frames = torch.div(lengths - k, s, rounding_mode="floor") + 1
                x = masked_group_norm(x, frames, layer.layer_norm)
                x = layer.activation(x)
            else:
                x = layer(x)
        return x.transpose(1, 2)

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        """Encodes a padded batch.

        Args:
            wavs: ``[B, S]`` float waveforms at 16 kHz, zero-padded.
            wav_lens: ``[B]`` relative lengths in (0, 1] (SpeechBrain convention).

        Returns:
            (hidden ``[B, T, D]``, lengths ``[B]`` LongTensor of true frame counts).
        """
        lengths = torch.round(wav_lens * wavs.shape[1]).long()
        if self.normalize_waveform:
            wavs = normalize_per_utterance(wavs, lengths)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            features = self._features(wavs, lengths)
            frames = self.output_lengths(lengths).clamp(max=features.shape[1])
            mask = lengths_to_mask(frames, features.shape[1])
            hidden, _ = self.model.feature_projection(features)
            hidden = self.model._mask_hidden_states(hidden, attention_mask=mask.long())
            hidden = self.model.encoder(hidden, attention_mask=mask).last_hidden_state
        return hidden, frames


def normalize_per_utterance(wavs: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-7):
    """Zero mean, unit variance over each row's first ``lengths[b]`` samples; padding -> 0.

    Args: wavs ``[B, S]``; lengths ``[B]`` LongTensor. Returns: ``[B, S]``.
    """
    mask = lengths_to_mask(lengths, wavs.shape[1])
    mean = masked_mean(wavs.unsqueeze(-1), mask).squeeze(-1)
    centered = (wavs - mean[:, None]) * mask
    var = masked_mean(centered.unsqueeze(-1) ** 2, mask).squeeze(-1)
    return centered / torch.sqrt(var[:, None] + eps)


def masked_group_norm(x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm whose statistics ignore padded frames.

    Args:
        x: ``[B, C, T]`` features.
        lengths: ``[B]`` true frame counts.
        norm: the GroupNorm whose groups, eps and affine parameters are used.

    Returns: ``[B, C, T]`` in ``x``'s dtype; equal to ``norm`` applied to each utterance alone
    on its frames. The statistics are computed in float32 whatever the activation dtype: in
    fp16 the sum of squares over a long utterance overflows (NaN at 30 s on the base
    architecture) and bf16 loses the mean's precision.
    """
    batch, channels, time = x.shape
    groups = norm.num_groups
    dtype = x.dtype
    x = x.float()
    mask = lengths_to_mask(lengths, time)[:, None, None, :].to(x.dtype)  # [B, 1, 1, T]
    grouped = x.reshape(batch, groups, channels // groups, time)
    count = mask.sum(dim=-1, keepdim=True).clamp(min=1) * (channels // groups)
    mean = (grouped * mask).sum(dim=(2, 3), keepdim=True) / count
    var = (((grouped - mean) * mask) ** 2).sum(dim=(2, 3), keepdim=True) / count
    out = ((grouped - mean) * torch.rsqrt(var + norm.eps)).reshape(batch, channels, time)
    if norm.affine:
        out = out * norm.weight.float()[None, :, None] + norm.bias.float()[None, :, None]
    return out.to(dtype)

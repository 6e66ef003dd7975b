"""Self-supervised speech encoders (wav2vec 2.0, HuBERT, WavLM, data2vec-audio), padding-aware.

One factory, `mtl_ser.models.backbones.build_ssl_model`, maps a checkpoint's ``model_type``
to its Hugging Face classes; one wrapper, `SSLEncoder`, runs any of them so that a batched utterance
gets the output it gets alone. The Brain never asks which backbone it holds.

What padding-awareness takes, per feature encoder (all in `SSLEncoder._padding_aware_*`):

- GroupNorm-first feature encoders (wav2vec2-base, HuBERT-base, WavLM): the first
  convolution's GroupNorm normalises over time, padding included; `first_conv_layer` runs
  that layer on each utterance's own samples, so the statistics are over its own frames.
- LayerNorm feature encoders (wav2vec2-large-lv60, data2vec-audio): normalise per frame, and
  the valid convolutions never read past an utterance's end: nothing to do.
- The transformer gets the frame-level attention mask (SDPA where transformers has it).
  WavLM's gated relative position bias depends on the query frame and the distance only, so
  the key-padding mask is all it needs.
- data2vec-audio's positional embedding is a stack of convolutions with LayerNorm: padded
  frames become non-zero after the first one and leak into the next; they are re-zeroed
  before each.
- Waveforms are normalised per utterance over its own samples when the checkpoint's feature
  extractor normalises (``do_normalize`` in its preprocessor_config.json).

``source`` is a hub id, a local ``save_pretrained`` folder (config.json, weights and
preprocessor_config.json), ``random:<preset>`` (`backbones.RANDOM_PRESETS`, for tests
and CPU demos), or a config dict (rebuilding an exported model).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from mtl_ser.models.backbones import build_ssl_model, checkpoint_normalizes
from mtl_ser.models.masking import lengths_to_mask, masked_mean
from mtl_ser.models.outputs import EncoderOutput


class SSLEncoder(nn.Module):
    """Waveforms -> hidden layers of a self-supervised encoder, with true output lengths.

    Args:
        source: see `build_ssl_model`.
        save_path: hub cache folder.
        encoder_type: the expected ``model_type`` (wav2vec2, hubert, wavlm, data2vec-audio);
            None accepts any supported one.
        freeze: freeze the whole model (kept in eval mode).
        freeze_feature_encoder: freeze only the convolutional feature encoder.
        normalize_waveform: zero-mean unit-variance per utterance over its own samples. None
            takes ``do_normalize`` from the checkpoint's preprocessor_config.json (the
            family's convention for random presets); a checkpoint without that file needs
            an explicit True / False.
        layerdrop: transformer layer drop probability (0 keeps DDP free of unused parameters
            and every layer present for a weighted layer sum); None keeps the checkpoint's
            own value (what the released Cai et al. code trained with).
        mask_time_prob: SpecAugment-style time masking probability during training.
        gradient_checkpointing: recompute each layer's activations in the backward pass
            (less memory for long utterances, about a third more compute).
        padding_aware: True (default): a batched utterance gets the output it gets alone.
            False reproduces the released Cai et al. code with more than one utterance per
            batch: the first GroupNorm's statistics and the transformer's attention include
            the padding, and every utterance reports the padded frame count, so mean pooling
            and CTC run over the padding too. Results then depend on batch composition.
    """

    def __init__(
        self,
        source: str | dict,
        save_path: str | None = None,
        encoder_type: str | None = None,
        freeze: bool = False,
        freeze_feature_encoder: bool = False,
        normalize_waveform: bool | None = None,
        layerdrop: float | None = 0.0,
        mask_time_prob: float = 0.05,
        gradient_checkpointing: bool = False,
        padding_aware: bool = True,
    ):
        super().__init__()
        self.padding_aware = bool(padding_aware)
        overrides = {"mask_time_prob": mask_time_prob}
        if layerdrop is not None:
            overrides["layerdrop"] = layerdrop
        self.model, self.backbone = build_ssl_model(
            source, save_path, expected_type=encoder_type, **overrides
        )
        config = self.model.config
        if getattr(config, "add_adapter", False):
            raise ValueError("encoders with an adapter (add_adapter) are not supported")
        self.normalize_waveform = self._resolve_normalization(source, save_path, normalize_waveform)
        self.freeze = freeze
        self.output_size = config.hidden_size
        # Hidden layers in Hugging Face's ``hidden_states`` order: the first transformer
        # layer's input, then every layer's output.
        self.num_layers = config.num_hidden_layers + 1
        first_norm = getattr(self.model.feature_extractor.conv_layers[0], "layer_norm", None)
        self._group_norm_first = isinstance(first_norm, nn.GroupNorm)
        # Never trained here, and a parameter without gradient breaks DDP: the masking
        # embedding keeps its pretrained value.
        if getattr(self.model, "masked_spec_embed", None) is not None:
            self.model.masked_spec_embed.requires_grad_(False)
        # A frozen feature encoder runs without autograd (`conv_features`): transformers'
        # feature encoders mark their *input* as requiring grad in training mode unless
        # their private ``_freeze_parameters`` was called, so frozen weights alone still
        # record every convolution and differentiate the waveform for nothing.
        self.frozen_features = bool(freeze or freeze_feature_encoder)
        if freeze:
            self.model.requires_grad_(False)
        elif freeze_feature_encoder:
            self.model.feature_extractor.requires_grad_(False)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self._collected: list | None = None  # hidden layers, while a forward pass collects
        self._frame_mask: torch.Tensor | None = None  # [B, T] during a forward pass
        for layer in self.model.encoder.layers:
            layer.register_forward_hook(self._collect_layer)
        if self.backbone.stacked_positional_conv:
            for layer in self.model.encoder.pos_conv_embed.layers:
                layer.register_forward_pre_hook(self._zero_padded_frames)

    def _resolve_normalization(self, source, save_path, explicit: bool | None) -> bool:
        if explicit is not None:
            return bool(explicit)
        if isinstance(source, dict):
            raise ValueError("an encoder built from a config needs normalize_waveform")
        if source.startswith("random:"):
            return self.backbone.normalize
        found = checkpoint_normalizes(source, save_path)
        if found is None:
            raise ValueError(
                f"{source!r} has no preprocessor_config.json, so whether its waveforms are "
                "normalised is unknown: set normalize_waveform to True or False (wav2vec2-base "
                "and data2vec-audio normalise; HuBERT and WavLM base checkpoints do not)"
            )
        return found

    @property
    def model_type(self) -> str:
        return self.backbone.model_type

    def export_kwargs(self) -> dict:
        """Constructor arguments that rebuild this architecture offline (weights apart):
        the config's attributes that its class defines (hub configs also carry keys of
        older transformers versions, which nothing reads) and the normalisation."""
        known = set(self.backbone.cls("config")().to_dict())
        known -= {"_name_or_path", "transformers_version", "architectures", "dtype"}
        config = {k: v for k, v in self.model.config.to_dict().items() if k in known}
        kwargs = {"source": config, "normalize_waveform": self.normalize_waveform}
        if not self.padding_aware:  # only then: specs of padding-aware models stay as they were
            kwargs["padding_aware"] = False
        return kwargs

    def train(self, mode: bool = True):
        """A frozen encoder stays in eval mode (no dropout, no masking)."""
        super().train(mode and not self.freeze)
        return self

    def output_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Frames produced from ``sample_lengths`` samples (LongTensor ``[B]`` -> ``[B]``)."""
        return self.model._get_feat_extract_output_lengths(sample_lengths).long()

    # ----------------------------------------------------------- the padding-aware path
    def _padding_aware_features(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Convolutional features ``[B, T', C]``, first-layer statistics over true frames."""
        x = wavs[:, None]
        for i, layer in enumerate(self.model.feature_extractor.conv_layers):
            if i == 0 and self._group_norm_first:
                x = first_conv_layer(layer, wavs, lengths)
            else:
                x = layer(x)
        return x.transpose(1, 2)

    def _zero_padded_frames(self, module, args):
        """Forward pre-hook of a positional convolution: padded frames in as zeros."""
        if self._frame_mask is None:
            return None
        (x,) = args  # [B, D, T]
        return (x * self._frame_mask[:, None, :].to(x.dtype),)

    def _collect_layer(self, module, args, output):
        """Forward hook of each transformer layer: records the hidden layers."""
        if self._collected is None:
            return
        if not self._collected:
            self._collected.append(args[0])
        self._collected.append(output[0] if isinstance(output, tuple) else output)

    @contextlib.contextmanager
    def _tracking(self, mask: torch.Tensor):
        self._frame_mask, self._collected = mask, []
        try:
            yield
        finally:
            self._frame_mask, self._collected = None, None

    def conv_features(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolutional feature encoder's output (waveforms normalised first when the
        checkpoint does).

        Args: wavs ``[B, S]`` float waveforms at 16 kHz, zero-padded; wav_lens ``[B]``
        relative lengths in (0, 1] (SpeechBrain convention).

        Returns: (features ``[B, T, C]``, true frame counts ``[B]``); without autograd
        history when the feature encoder is frozen (whatever the backbone and the mode).
        """
        lengths = torch.round(wav_lens * wavs.shape[1]).long()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_features):
            if self.normalize_waveform:
                wavs = normalize_per_utterance(wavs, lengths)
            if self.padding_aware:
                features = self._padding_aware_features(wavs, lengths)
                frames = self.output_lengths(lengths).clamp(max=features.shape[1])
            else:  # the released code: every frame of the padded batch counts
                features = self.model.feature_extractor(wavs).transpose(1, 2)
                frames = torch.full_like(lengths, features.shape[1])
        return features, frames

    def forward(
        self, inputs: torch.Tensor, input_lens: torch.Tensor, from_features: bool = False
    ) -> EncoderOutput:
        """Encodes a padded batch.

        Args:
            inputs: ``[B, S]`` float waveforms at 16 kHz, zero-padded; or, with
                ``from_features``, the `conv_features` of such waveforms ``[B, T, C]``
                (e.g. read from the encoder cache: the rest of the encoder runs on them).
            input_lens: ``[B]`` relative lengths in (0, 1] (SpeechBrain convention) of
                the samples, or of the frames with ``from_features``.

        Returns: `EncoderOutput`: ``hidden`` ``[B, T, D]`` (the last hidden state),
        ``lengths`` ``[B]`` true frame counts, ``layers`` ``num_layers`` x ``[B, T, D]``.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            if from_features:
                features = inputs
                frames = torch.round(input_lens * inputs.shape[1]).long()
            else:
                features, frames = self.conv_features(inputs, input_lens)
            mask = lengths_to_mask(frames, features.shape[1])
            projected = self.model.feature_projection(features)
            if isinstance(projected, tuple):  # (hidden, normalised features) except HuBERT
                projected = projected[0]
            hidden = self.model._mask_hidden_states(projected, attention_mask=mask.long())
            # The released code's all-valid mask is no mask: passing it would only send the
            # attention down the slower masked path.
            attention_mask = mask if self.padding_aware else None
            with self._tracking(attention_mask):
                hidden = self.model.encoder(hidden, attention_mask=attention_mask)
                hidden = hidden.last_hidden_state
                layers = tuple(self._collected)
        return EncoderOutput(hidden, frames, layers)


def normalize_per_utterance(wavs: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-7):
    """Zero mean, unit variance over each row's first ``lengths[b]`` samples; padding -> 0.

    Args: wavs ``[B, S]``; lengths ``[B]`` LongTensor. Returns: ``[B, S]``.
    """
    mask = lengths_to_mask(lengths, wavs.shape[1])
    mean = masked_mean(wavs.unsqueeze(-1), mask).squeeze(-1)
    centered = (wavs - mean[:, None]) * mask
    var = masked_mean(centered.unsqueeze(-1) ** 2, mask).squeeze(-1)
    return centered / torch.sqrt(var[:, None] + eps)


def first_conv_layer(layer: nn.Module, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The first layer of a GroupNorm-first feature encoder (transformers'
    ``conv`` -> ``layer_norm`` (a GroupNorm over time) -> ``activation``), padding-aware.

    Args: layer: the feature encoder's first conv layer; wavs ``[B, S]`` zero-padded
    waveforms; lengths ``[B]`` samples.

    Returns: ``[B, C, T]`` (T the padded batch's frame count): each utterance's frames as
    it gets them alone (its own samples convolved, the GroupNorm's statistics over its own
    frames, in float32 as `masked_group_norm`), later frames 0. An utterance shorter than
    the kernel gets one frame of it and its zero padding, as the batch's first frame would.

    Each utterance runs alone because that is also the cheapest exact way: no convolution,
    normalisation or activation over the padding and no strided copies (on 2 CPU threads,
    8 utterances of IEMOCAP-like lengths: 50 ms instead of the whole padded batch's 135 ms
    for transformers' own layer, 155 ms for the batch convolution + `masked_group_norm`).
    A traced graph (ONNX export) takes the batch form, which keeps lengths dynamic.
    """
    conv, norm = layer.conv, layer.layer_norm
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        frames = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return layer.activation(masked_group_norm(conv(wavs[:, None]), frames, norm))
    samples = wavs.shape[1]
    out = None
    for b, n in enumerate(lengths.clamp(min=kernel, max=samples).tolist()):
        y = conv(wavs[b : b + 1, None, :n])  # [1, C, frames of n samples]
        if out is None:
            out = y.new_zeros(wavs.shape[0], y.shape[1], (samples - kernel) // stride + 1)
        out[b : b + 1, :, : y.shape[2]] = layer.activation(_group_norm_float32(y, norm))
    return out


def _group_norm_float32(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm`` applied to ``x`` ``[1, C, n]`` (no padding) with float32 statistics,
    returned in ``x``'s dtype (see `masked_group_norm` for why float32)."""
    weight = None if norm.weight is None else norm.weight.float()
    bias = None if norm.bias is None else norm.bias.float()
    return F.group_norm(x.float(), norm.num_groups, weight, bias, norm.eps).to(x.dtype)


def masked_group_norm(x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm whose statistics ignore padded frames.

    Args:
        x: ``[B, C, T]`` features.
        lengths: ``[B]`` true frame counts.
        norm: the GroupNorm whose groups, eps and affine parameters are used.

    Returns: ``[B, C, T]`` in ``x``'s dtype: each utterance's first ``lengths[b]`` frames
    normalised by ``norm`` applied to them alone (the same kernel, so equal to the
    utterance run alone), padded frames 0 (nothing valid reads them: the following
    convolutions are valid ones and the transformer masks them). One native GroupNorm per
    utterance instead of masked statistics over the whole batch: no full-size temporaries.
    The statistics are computed in float32 whatever the activation dtype: in fp16 the sum
    of squares over a long utterance overflows (NaN at 30 s on the base architecture) and
    bf16 loses the mean's precision.
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        # The loop below reads the lengths on the host: a traced graph (ONNX export) would
        # freeze them; the masked-statistics form keeps the batch and time axes dynamic.
        return _masked_statistics_group_norm(x, lengths, norm)
    out = torch.empty_like(x)
    for b, n in enumerate(lengths.clamp(min=1, max=x.shape[2]).tolist()):
        out[b : b + 1, :, :n] = _group_norm_float32(x[b : b + 1, :, :n], norm)
        out[b, :, n:] = 0
    return out


def _masked_statistics_group_norm(
    x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm
) -> torch.Tensor:
    """`masked_group_norm` as one traceable computation (no host reads): group statistics
    over each utterance's valid frames through a mask, in float32. ``[B, C, T]`` ->
    ``[B, C, T]`` in ``x``'s dtype, padded frames 0; equal to the per-utterance form up to
    float rounding."""
    batch, channels, time = x.shape
    groups = norm.num_groups
    mask = lengths_to_mask(lengths, time)[:, None, None, :].float()  # [B, 1, 1, T]
    grouped = x.float().reshape(batch, groups, channels // groups, time)
    count = mask.sum(dim=-1, keepdim=True).clamp(min=1) * (channels // groups)
    mean = (grouped * mask).sum(dim=(2, 3), keepdim=True) / count
    var = (((grouped - mean) * mask) ** 2).sum(dim=(2, 3), keepdim=True) / count
    out = ((grouped - mean) * torch.rsqrt(var + norm.eps) * mask).reshape(batch, channels, time)
    if norm.affine:
        keep = mask.reshape(batch, 1, time)
        out = (out * norm.weight.float()[None, :, None] + norm.bias.float()[None, :, None]) * keep
    return out.to(x.dtype)

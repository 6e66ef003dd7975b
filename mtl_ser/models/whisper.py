"""Whisper's encoder as a backbone: log-mel front end in torch, true-length or 30 s input.

`WhisperEncoder` runs the encoder of any ``WhisperModel`` / ``WhisperForConditionalGeneration``
checkpoint (the decoder is dropped: the heads read the encoder) with the same interface as
`mtl_ser.models.ssl.SSLEncoder`: waveforms in, `EncoderOutput` (last hidden state, true frame
counts, every hidden layer) out, at 50 frames per second.

The front end is `WhisperLogMel`: transformers' ``WhisperFeatureExtractor`` computation
(centred STFT with reflection, Slaney mel filters, log10, floor at max - 8 dB, (x + 4) / 4)
in torch, batched and on the encoder's device, with the settings (80 or 128 mel bins, hop,
FFT size, window length) read from the checkpoint's ``preprocessor_config.json``.

``whisper_input``:

- ``true_length`` (default): the mel frames of each utterance only. The positional
  embeddings are sliced to the batch's longest utterance and attention is masked to each
  utterance's own frames; each utterance's STFT reflects at its own end and its padded mel
  frames and stem outputs are zero, so a batched utterance gets the output it gets alone.
  An utterance of 3 s costs about a tenth of a 30 s window.
- ``padded_30s``: what Whisper was trained on and what transformers does: every utterance
  is padded (or cut) to 30 s and the encoder attends over the padding. The heads still pool
  and align over the utterance's own frames.

Utterances longer than the 30 s window are cut to it in both modes (with a warning), as
Whisper's own feature extractor does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import transformers
from torch import nn

from mtl_ser.models.masking import lengths_to_mask
from mtl_ser.models.outputs import EncoderOutput

logger = logging.getLogger(__name__)

MODEL_TYPE = "whisper"
WHISPER_INPUTS = ("true_length", "padded_30s")
# WhisperFeatureExtractor's settings that the front end uses (transformers' defaults: 80 mel
# bins, 16 kHz, 10 ms hop, 25 ms window, 30 s chunks).
FRONT_END_KEYS = ("feature_size", "sampling_rate", "hop_length", "n_fft", "chunk_length")
DEFAULT_FRONT_END = {
    "feature_size": 80,
    "sampling_rate": 16000,
    "hop_length": 160,
    "n_fft": 400,
    "chunk_length": 30,
}
# Checkpoint tensors that are not the encoder: the decoder and the LM head tied to its
# embeddings (WhisperForConditionalGeneration). Everything else must load as saved.
DECODER_PREFIXES = ("decoder.", "proj_out.")

# Why `mtl-ser export --format hf` refuses Whisper models.
WHISPER_HF_NOTE = (
    "transformers has no equivalent of a Whisper emotion model: its "
    "WhisperForAudioClassification pools over the whole padded 30 s window (our heads pool "
    "over the utterance's own frames) and it has no Whisper CTC model"
)

_DECODER_TINY = dict(decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128)
# ``random:<name>`` -> WhisperConfig arguments. "whisper-tiny": ~0.1 M encoder parameters for
# tests; "whisper-base": openai/whisper-base's encoder architecture, random (no download).
RANDOM_PRESETS = {
    "whisper-tiny": dict(
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        num_mel_bins=80,
        **_DECODER_TINY,
    ),
    "whisper-base": dict(
        d_model=512,
        encoder_layers=6,
        encoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_layers=6,
        decoder_attention_heads=8,
        decoder_ffn_dim=2048,
        num_mel_bins=80,
    ),
}


class WhisperLogMel(nn.Module):
    """Waveforms -> Whisper's log-mel spectrogram, per utterance over its own samples.

    Args: the ``WhisperFeatureExtractor`` settings of `FRONT_END_KEYS`.
    """

    def __init__(self, feature_size, sampling_rate, hop_length, n_fft, chunk_length):
        super().__init__()
        self.settings = dict(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            hop_length=hop_length,
            n_fft=n_fft,
            chunk_length=chunk_length,
        )
        self.hop_length, self.n_fft = hop_length, n_fft
        self.n_samples = chunk_length * sampling_rate
        # The very filters transformers' extractor uses ([n_fft // 2 + 1, n_mels]).
        filters = transformers.WhisperFeatureExtractor(**self.settings).mel_filters
        # Derived from the settings: not part of the weights.
        self.register_buffer("mel_filters", torch.tensor(filters, dtype=torch.float32), False)
        self.register_buffer("window", torch.hann_window(n_fft), False)

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Mel frames of utterances of ``lengths`` samples (``[B]`` -> ``[B]``)."""
        return torch.div(lengths, self.hop_length, rounding_mode="floor")

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor, padded_30s: bool = False):
        """Args: wavs ``[B, S]`` zero-padded; lengths ``[B]`` samples (at most the window).
        ``padded_30s``: each utterance padded with zeros to the 30 s window first (as
        transformers does); otherwise only its own samples count.

        Returns: (log-mel ``[B, n_mels, F]``, frames ``[B]``). In true-length mode frames
        past an utterance's end are 0 and F is the longest utterance's frame count.
        """
        if padded_30s:
            wavs = nn.functional.pad(wavs, (0, self.n_samples - wavs.shape[1]))
            ends = torch.full_like(lengths, self.n_samples)
        else:
            ends = lengths
        # Centred STFT with each utterance reflected at its own end: index i of the padded
        # signal reads sample |i - pad| mirrored back inside [0, end).
        pad = self.n_fft // 2
        index = torch.arange(-pad, wavs.shape[1] + pad, device=wavs.device)[None, :]
        last = (ends - 1).clamp(min=0)[:, None]
        index = index.abs()
        index = torch.where(index > last, 2 * last - index, index).clamp(min=0)
        index = torch.minimum(index, last)
        signal = torch.gather(wavs.float(), 1, index)
        stft = torch.stft(
            signal,
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=False,
            return_complex=True,
        )
        power = stft[..., :-1].abs() ** 2  # [B, n_freq, F]; the last frame dropped, as Whisper
        mel = self.mel_filters.T @ power
        log_spec = torch.clamp(mel, min=1e-10).log10()
        frames = self.frames(ends)
        valid = lengths_to_mask(frames, log_spec.shape[-1])[:, None, :]  # [B, 1, F]
        peak = log_spec.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)
        log_spec = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
        return log_spec * valid, frames


def _whisper_classes():
    return transformers.WhisperConfig, transformers.WhisperModel


def read_front_end(source: str, save_path: str | None = None) -> dict:
    """The front-end settings of a checkpoint's ``preprocessor_config.json``.

    Raises ValueError naming the checkpoint when it has none (its mel settings are unknown).
    """
    path = Path(source) / "preprocessor_config.json"
    if not Path(source).is_dir():
        path = transformers.utils.cached_file(
            source,
            "preprocessor_config.json",
            cache_dir=save_path,
            _raise_exceptions_for_missing_entries=False,
        )
    if path is None or not Path(path).is_file():
        raise ValueError(
            f"{source!r} has no preprocessor_config.json, so its log-mel settings are unknown: "
            "save the checkpoint's WhisperFeatureExtractor beside it (save_pretrained)"
        )
    saved = json.loads(Path(path).read_text())
    return {key: saved.get(key, DEFAULT_FRONT_END[key]) for key in FRONT_END_KEYS}


def load_whisper_encoder(source: str, save_path: str | None, **config_overrides):
    """The encoder (``transformers.WhisperEncoder``) of a Whisper checkpoint.

    Every checkpoint tensor but the decoder's (`DECODER_PREFIXES`) must load into it as saved
    (`mtl_ser.models.backbones` checks): a checkpoint without a decoder (an audio classifier)
    loads too. Raises ValueError naming the checkpoint and both types when it is not Whisper.
    """
    from mtl_ser.models.backbones import (
        ModelNotFoundError,
        _check_loading_info,
        _missing_model_message,
    )

    config_class, model_class = _whisper_classes()
    try:
        config = transformers.AutoConfig.from_pretrained(source, cache_dir=save_path)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(_missing_model_message(source, save_path, err)) from err
    check_type(config.model_type, MODEL_TYPE, repr(source))
    try:
        model, info = model_class.from_pretrained(
            source,
            cache_dir=save_path,
            attn_implementation="sdpa",
            output_loading_info=True,
            **config_overrides,
        )
    except OSError as err:
        raise ModelNotFoundError(_missing_model_message(source, save_path, err)) from err
    info = {
        what: [k for k in info.get(what, ()) if not str(k).startswith(DECODER_PREFIXES)]
        for what in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    _check_loading_info(source, info)
    return model.encoder


def check_type(model_type: str, expected: str | None, where: str) -> None:
    """Raises ValueError naming both types when ``expected`` is given and differs."""
    if expected is not None and model_type != expected:
        raise ValueError(
            f"the checkpoint {where} is a {model_type!r} model, but encoder_type {expected!r} "
            "was asked for: set encoder_type to the checkpoint's type (or null) or use "
            "another checkpoint"
        )


class WhisperEncoder(nn.Module):
    """Waveforms -> hidden layers of Whisper's encoder, with true output lengths (50 Hz).

    Args:
        source: hub id or ``save_pretrained`` folder of a Whisper checkpoint (config.json,
            weights, preprocessor_config.json), ``random:whisper-tiny`` /
            ``random:whisper-base``, or a WhisperConfig as a dict (rebuilding an export).
        save_path: hub cache folder.
        whisper_input: ``true_length`` | ``padded_30s`` (module docstring).
        front_end: the log-mel settings (`FRONT_END_KEYS`); None reads them from the
            checkpoint (random presets: transformers' defaults with the preset's mel bins).
        freeze: freeze the whole encoder (kept in eval mode).
        freeze_feature_encoder: freeze the convolutional stem (conv1, conv2).
        layerdrop: encoder layer drop probability; None keeps the checkpoint's.
        gradient_checkpointing: recompute each layer's activations in the backward pass.
    """

    def __init__(
        self,
        source: str | dict,
        save_path: str | None = None,
        whisper_input: str = "true_length",
        front_end: dict | None = None,
        freeze: bool = False,
        freeze_feature_encoder: bool = False,
        layerdrop: float | None = 0.0,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        if whisper_input not in WHISPER_INPUTS:
            raise ValueError(
                f"whisper_input must be one of {list(WHISPER_INPUTS)}, not {whisper_input!r}"
            )
        self.whisper_input = whisper_input
        overrides = {} if layerdrop is None else {"encoder_layerdrop": layerdrop}
        config_class, _ = _whisper_classes()
        if isinstance(source, dict) or source.startswith("random:"):
            if isinstance(source, dict):
                check_type(source.get("model_type"), MODEL_TYPE, "config")
                config = config_class.from_dict({**source, **overrides})
            else:
                preset = source.split(":", 1)[1]
                if preset not in RANDOM_PRESETS:
                    raise ValueError(
                        f"unknown random Whisper preset {preset!r}; use one of "
                        f"{['random:' + p for p in RANDOM_PRESETS]}"
                    )
                config = config_class(**{**RANDOM_PRESETS[preset], **overrides})
            config._attn_implementation = "sdpa"
            self.model = transformers.models.whisper.modeling_whisper.WhisperEncoder(config)
            if front_end is None:
                front_end = {**DEFAULT_FRONT_END, "feature_size": config.num_mel_bins}
        else:
            self.model = load_whisper_encoder(source, save_path, **overrides)
            if front_end is None:
                front_end = read_front_end(source, save_path)
        config = self.model.config
        if front_end["feature_size"] != config.num_mel_bins:
            raise ValueError(
                f"the feature extractor of {source!r} makes {front_end['feature_size']} mel "
                f"bins but the encoder reads {config.num_mel_bins}"
            )
        self.front_end = WhisperLogMel(**front_end)
        self.freeze = freeze
        self.padding_aware = True  # in both modes an utterance's output ignores the batch
        self.output_size = config.d_model
        self.num_layers = config.encoder_layers + 1
        # 30 s of audio = max_source_positions encoder frames: the positional table's length.
        self.max_frames = config.max_source_positions
        if freeze:
            self.model.requires_grad_(False)
        elif freeze_feature_encoder:
            self.model.conv1.requires_grad_(False)
            self.model.conv2.requires_grad_(False)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self._warned_long = False

    @property
    def model_type(self) -> str:
        return MODEL_TYPE

    def export_kwargs(self) -> dict:
        """Constructor arguments that rebuild this architecture offline (weights apart)."""
        config_class, _ = _whisper_classes()
        known = set(config_class().to_dict())
        known -= {"_name_or_path", "transformers_version", "architectures", "dtype"}
        config = {k: v for k, v in self.model.config.to_dict().items() if k in known}
        return {
            "source": config,
            "front_end": dict(self.front_end.settings),
            "whisper_input": self.whisper_input,
        }

    def train(self, mode: bool = True):
        """A frozen encoder stays in eval mode (no dropout)."""
        super().train(mode and not self.freeze)
        return self

    def output_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames of ``sample_lengths`` samples (``[B]`` -> ``[B]``; the stem's
        stride-2 convolution makes ceil(mel frames / 2), at most the 30 s window's)."""
        mel = self.front_end.frames(sample_lengths.clamp(max=self.front_end.n_samples))
        return torch.div(mel + 1, 2, rounding_mode="floor").long()

    def conv_features(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        """The convolutional stem's output.

        Args: wavs ``[B, S]`` float waveforms at 16 kHz, zero-padded; wav_lens ``[B]``
        relative lengths in (0, 1].

        Returns: (features ``[B, T, D]``, true frame counts ``[B]``); T is 1500 (30 s) in
        padded_30s mode, the longest utterance's count otherwise.
        """
        lengths = torch.round(wav_lens * wavs.shape[1]).long()
        if wavs.shape[1] > self.front_end.n_samples:
            if not self._warned_long:
                logger.warning(
                    "Whisper reads at most %d s: longer utterances are cut to it",
                    self.front_end.n_samples // self.front_end.settings["sampling_rate"],
                )
                self._warned_long = True
            wavs = wavs[:, : self.front_end.n_samples]
            lengths = lengths.clamp(max=self.front_end.n_samples)
        padded = self.whisper_input == "padded_30s"
        mel, mel_frames = self.front_end(wavs, lengths, padded_30s=padded)
        mel = mel.to(self.model.conv1.weight.dtype)
        x = nn.functional.gelu(self.model.conv1(mel))
        if not padded:
            # conv2 reads one frame past the end: zero there, as for the utterance alone.
            x = x * lengths_to_mask(mel_frames, x.shape[-1])[:, None, :].to(x.dtype)
        x = nn.functional.gelu(self.model.conv2(x)).transpose(1, 2)
        return x, self.output_lengths(lengths)

    def forward(
        self, inputs: torch.Tensor, input_lens: torch.Tensor, from_features: bool = False
    ) -> EncoderOutput:
        """Encodes a padded batch.

        Args:
            inputs: ``[B, S]`` float waveforms at 16 kHz, zero-padded; or, with
                ``from_features``, the `conv_features` of such waveforms ``[B, T, D]``.
            input_lens: ``[B]`` relative lengths in (0, 1] of the samples (or of the frames
                with ``from_features``).

        Returns: `EncoderOutput`: ``hidden`` ``[B, T, D]`` (after the final LayerNorm),
        ``lengths`` ``[B]`` true frame counts, ``layers`` ``num_layers`` x ``[B, T, D]``
        (the positional-embedded input, each layer's output, the last one normalised: as
        transformers' ``hidden_states``). T is 1500 in padded_30s mode.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            if from_features:
                features = inputs
                frames = torch.round(input_lens * inputs.shape[1]).long()
            else:
                features, frames = self.conv_features(inputs, input_lens)
            model = self.model
            time = features.shape[1]
            hidden = features + model.embed_positions.weight[:time]
            hidden = nn.functional.dropout(hidden, p=model.dropout, training=self.training)
            mask = None
            if self.whisper_input == "true_length":
                keep = lengths_to_mask(frames, time)[:, None, None, :]  # [B, 1, 1, T]
                mask = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
                mask = mask.masked_fill(~keep, torch.finfo(hidden.dtype).min)
            layers = [hidden]
            for layer in model.layers:
                if self.training and model.layerdrop > 0 and torch.rand([]) < model.layerdrop:
                    layers.append(hidden)
                    continue
                hidden = layer(hidden, mask)
                layers.append(hidden)
            hidden = model.layer_norm(hidden)
            layers[-1] = hidden
        return EncoderOutput(hidden, frames, tuple(layers))

"""The CNN baseline of the original student study: log-mel spectrogram -> 3x3 conv blocks.

Two parts:

- `LogMelFrontEnd`: waveform -> log-mel filterbank features (SpeechBrain's STFT and
  Filterbank, optionally normalised per utterance). In training the data pipeline runs it
  through the feature cache (mtl_ser/data/feature_cache.py), so features are computed once
  per file.
- `CNNEncoder`: the encoder interface of `SSLEncoder` (padded batch + relative lengths
  -> `EncoderOutput`: ``[B, T', D]`` + true frame counts, no hidden layers; ``output_size``,
  ``output_lengths``). It takes
  waveforms ``[B, S]`` (run through its own front end, as inference does) or the front end's
  features ``[B, T, F]`` (cached, as training does); the shared `EmotionHead` pools and
  classifies its output.

The encoder is padding-aware: in eval mode a padded batch gives every utterance exactly the
output it gets alone. Padded positions are zero on entry and are set back to zero after every
block (batch norm would shift them, and the next 3x3 convolution would read them at the
edges of the true frames); lengths follow every pooling (floor division, as the pooling
does). In training mode batch-norm statistics are taken over true positions only.
"""

from __future__ import annotations

import speechbrain
import torch
import torch.nn.functional as F
from speechbrain.processing.features import STFT, Filterbank, spectral_magnitude
from torch import nn

from mtl_ser.models.masking import lengths_to_mask
from mtl_ser.models.outputs import EncoderOutput

# Bump when LogMelFrontEnd computes different numbers for the same settings: the version is
# part of the feature cache key, so old cache entries are then recomputed.
FRONT_END_VERSION = 1
NORMALIZATIONS = ("utterance", "none")


class LogMelFrontEnd(nn.Module):
    """Waveform -> log-mel filterbank features.

    Args:
        sample_rate: rate of the input waveforms (Hz).
        n_fft: FFT size (samples).
        win_length: analysis window (ms).
        hop_length: frame shift (ms).
        n_mels: number of mel bands F.
        f_min, f_max: band limits (Hz); f_max None is sample_rate / 2.
        log_mel: decibels (10 log10 of the mel power) or linear mel power.
        top_db: dynamic range kept below each utterance's maximum (dB; with ``log_mel``).
        normalize: "utterance" (zero mean, unit variance per band over the utterance's own
            frames) or "none".

    Every argument is in `settings`, which keys the feature cache.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        win_length: float = 25.0,
        hop_length: float = 10.0,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float | None = None,
        log_mel: bool = True,
        top_db: float = 80.0,
        normalize: str = "utterance",
    ):
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, not {normalize!r}")
        f_max = sample_rate / 2 if f_max is None else f_max
        # Constructor arguments (JSON): rebuild the front end (export) and key the cache.
        self.kwargs = {
            "sample_rate": int(sample_rate),
            "n_fft": int(n_fft),
            "win_length": float(win_length),
            "hop_length": float(hop_length),
            "n_mels": int(n_mels),
            "f_min": float(f_min),
            "f_max": float(f_max),
            "log_mel": bool(log_mel),
            "top_db": float(top_db),
            "normalize": normalize,
        }
        self.settings = {
            "class": type(self).__name__,
            "version": FRONT_END_VERSION,
            # The numbers come from these libraries: an upgrade recomputes the cache.
            "speechbrain": speechbrain.__version__,
            "torch": torch.__version__,
            **self.kwargs,
        }
        self.sample_rate = int(sample_rate)
        self.n_mels = int(n_mels)
        self.frames_per_second = 1000.0 / hop_length
        self.normalize = normalize
        self.stft = STFT(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length
        )
        self.hop_samples = self.stft.hop_length
        self.filterbank = Filterbank(
            sample_rate=sample_rate,
            n_fft=n_fft,
            n_mels=n_mels,
            f_min=f_min,
            f_max=f_max,
            log_mel=log_mel,
            top_db=top_db,
        )

    @torch.no_grad()
    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """One utterance: waveform ``[S]`` -> features ``[T, F]`` float32."""
        feats = self.filterbank(spectral_magnitude(self.stft(wav[None].float())))[0]
        if self.normalize == "utterance":
            feats = (feats - feats.mean(dim=0)) / feats.std(dim=0, correction=0).clamp(min=1e-5)
        return feats.contiguous()

    def output_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Frames of waveforms of ``sample_lengths`` samples (centred STFT): ``[B]`` -> ``[B]``."""
        return torch.div(sample_lengths, self.hop_samples, rounding_mode="floor") + 1

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        """A padded batch, each utterance computed on its own samples only (no log of padded
        silence, no statistics over padding).

        Args: wavs ``[B, S]``; wav_lens ``[B]`` relative lengths.
        Returns: (features ``[B, T, F]`` zero-padded, relative lengths ``[B]``).
        """
        lengths = torch.round(wav_lens * wavs.shape[1]).long()
        feats = [self.features(wav[:n]) for wav, n in zip(wavs, lengths.tolist(), strict=True)]
        frames = torch.tensor([f.shape[0] for f in feats], device=wavs.device)
        padded = nn.utils.rnn.pad_sequence(feats, batch_first=True)
        return padded, frames.float() / padded.shape[1]


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over ``[B, C, T, F]`` whose training statistics use true frames only.

    In eval mode it is plain BatchNorm2d (running statistics: nothing depends on padding).
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, C, T, F]``; mask ``[B, T]`` bool (true frames).

        Returns: ``[B, C, T, F]``.
        """
        if not self.training:
            return super().forward(x)
        weights = mask[:, None, :, None].float()  # [B, 1, T, 1]
        count = (weights.sum() * x.shape[3]).clamp(min=2)
        masked = x.float() * weights  # statistics in float32 also under bf16 / fp16 autocast
        mean = masked.sum(dim=(0, 2, 3)) / count
        # E[x^2] - E[x]^2: two passes over the (large) activations fewer than centring first.
        var = ((masked * masked).sum(dim=(0, 2, 3)) / count - mean**2).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                # Like nn.BatchNorm2d: running variance is the unbiased estimate.
                self.num_batches_tracked += 1
                m = self.momentum
                if m is None:  # cumulative moving average, as nn.BatchNorm2d
                    m = 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * count / (count - 1))
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale
        if self.affine:
            shift = shift + self.bias
        return torch.addcmul(shift[None, :, None, None], x, scale[None, :, None, None])


class ConvBlock(nn.Module):
    """3x3 convolution, masked batch norm, ReLU, 2x2 max pooling (time and frequency).

    Args: in_channels, out_channels, kernel_size (odd; "same" zero padding).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, not {kernel_size}")
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.norm = MaskedBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """Args: x ``[B, C, T, F]`` with zeros beyond ``lengths`` ``[B]``.

        Returns: (``[B, C', T // 2, F // 2]`` with zeros beyond the new lengths,
        new lengths ``[B]`` = lengths // 2, at least 1).
        """
        mask = lengths_to_mask(lengths, x.shape[2])
        # Zeroed before pooling too, so that padding never reaches a true frame (it would
        # when a length is clamped to 1 below).
        x = _zero_padding(torch.relu_(self.norm(self.conv(x), mask)), lengths)
        x = F.max_pool2d(x, 2)
        lengths = torch.div(lengths, 2, rounding_mode="floor").clamp(min=1)
        return _zero_padding(x, lengths), lengths


def _zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, F]`` with frames ``t >= lengths[b]`` set to zero."""
    return x * lengths_to_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)


class CNNEncoder(nn.Module):
    """Log-mel features -> stacked `ConvBlock` s -> frame features with the frequency axis
    flattened into the feature dimension.

    Args:
        front_end: the `LogMelFrontEnd` (or its constructor arguments) whose features the
            encoder reads; it has no parameters or buffers, so the data pipeline may share it.
        channels: output channels of each block, e.g. ``[64, 128, 256, 512]`` (the study's
            best); append 1024 for the 512 -> 1024 variant, drop 512 for the one without
            the 256 -> 512 block.
        kernel_size: convolution kernel (3 in the study).

    ``output_size`` D = channels[-1] * (n_mels // 2 ** len(channels)).
    """

    def __init__(
        self, front_end: LogMelFrontEnd | dict, channels=(64, 128, 256, 512), kernel_size=3
    ):
        super().__init__()
        if isinstance(front_end, dict):
            front_end = LogMelFrontEnd(**front_end)
        self.front_end = front_end
        self.channels = [int(c) for c in channels]
        self.kernel_size = int(kernel_size)
        if not self.channels:
            raise ValueError("the CNN needs at least one block")
        self.downsampling = 2 ** len(self.channels)
        freq_out = front_end.n_mels // self.downsampling
        if freq_out < 1:
            raise ValueError(
                f"{len(self.channels)} blocks halve {front_end.n_mels} mel bands to nothing: "
                "use more n_mels or fewer blocks"
            )
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out, self.kernel_size)
            for c_in, c_out in zip([1, *self.channels[:-1]], self.channels, strict=True)
        )
        self.output_size = self.channels[-1] * freq_out

    def export_kwargs(self) -> dict:
        """Constructor arguments that rebuild this architecture (weights apart), as JSON."""
        return {
            "front_end": dict(self.front_end.kwargs),
            "channels": list(self.channels),
            "kernel_size": self.kernel_size,
        }

    def output_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Output frames of waveforms of ``sample_lengths`` samples (LongTensor ``[B]``)."""
        return self.feature_output_lengths(self.front_end.output_lengths(sample_lengths))

    def feature_output_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        """Output frames of inputs of ``frames`` feature frames (LongTensor ``[B]``)."""
        for _ in self.blocks:
            frames = torch.div(frames, 2, rounding_mode="floor").clamp(min=1)
        return frames

    def forward(self, inputs: torch.Tensor, input_lens: torch.Tensor) -> EncoderOutput:
        """Encodes a padded batch.

        Args:
            inputs: waveforms ``[B, S]`` at the front end's rate, or its features
                ``[B, T, F]`` (e.g. from the feature cache), zero-padded.
            input_lens: ``[B]`` relative lengths in (0, 1] (SpeechBrain convention).

        Returns: `EncoderOutput` with ``hidden`` ``[B, T', D]``, ``lengths`` ``[B]``
        LongTensor true frame counts T'_b <= T', and no ``layers``.
        """
        if inputs.dim() == 2:
            inputs, input_lens = self.front_end(inputs, input_lens)
        if inputs.dim() != 3 or inputs.shape[2] != self.front_end.n_mels:
            raise ValueError(
                f"expected waveforms [B, S] or features [B, T, {self.front_end.n_mels}], "
                f"got {list(inputs.shape)}"
            )
        lengths = torch.round(input_lens * inputs.shape[1]).long().clamp(min=1)
        x = _zero_padding(inputs[:, None], lengths)  # [B, 1, T, F]
        if x.shape[2] < self.downsampling:
            # Very short input: pad so that every pooling keeps at least one frame (zeros,
            # as the padding of a longer batch would be).
            x = F.pad(x, (0, 0, 0, self.downsampling - x.shape[2]))
        for block in self.blocks:
            x, lengths = block(x, lengths)
        batch, channels, time, freq = x.shape
        return EncoderOutput(x.permute(0, 2, 1, 3).reshape(batch, time, channels * freq), lengths)

"""Audio reading: any file soundfile can read -> mono float32 waveform at a target rate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import soundfile
import torch

from mtl_ser.data.waveform import mono_rate, read_waveform

SAMPLE_RATE = 16000

# The shortest utterance any encoder accepts, in samples at SAMPLE_RATE: wav2vec2's first
# convolution has a 400-sample (25 ms) window, and so does the CNN front end's STFT (n_fft 400).
# A shorter clip gives no output frame, which crashes CTC ("input_lengths ... -1") and leaves
# the emotion head nothing to pool. Every preparer refuses (or skips) shorter utterances.
MIN_SAMPLES = 400
MIN_DURATION = MIN_SAMPLES / SAMPLE_RATE  # seconds (0.025)


def to_mono_rate(waveform: torch.Tensor, rate: int, target_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Averages channels and resamples.

    Args:
        waveform: ``[time]`` or ``[time, channels]`` float tensor.
        rate: its sample rate.
        target_rate: the wanted rate.

    Returns: ``[time']`` float32 tensor at ``target_rate``.
    """
    return torch.from_numpy(mono_rate(waveform.detach().cpu().float().numpy(), rate, target_rate))


def require_finite(waveform: torch.Tensor, name) -> torch.Tensor:
    """Returns ``waveform`` unchanged; raises ValueError naming ``name`` (a file or "the
    waveform") when it holds NaN or infinite samples, which would otherwise turn every
    output of the model into NaN (scored as the first class)."""
    if not bool(torch.isfinite(waveform).all()):
        bad = int((~torch.isfinite(waveform)).sum())
        raise ValueError(f"{name}: {bad} sample(s) are NaN or infinite")
    return waveform


def load_audio(path: str | Path, target_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Reads an audio file as mono float32 at ``target_rate``.

    Returns: ``[time]`` tensor. Raises ValueError naming the file when it is unreadable,
    holds no samples, or holds NaN / infinite samples.
    """
    return torch.from_numpy(read_waveform(path, target_rate))


@dataclass(frozen=True)
class AudioInfo:
    """What preparation needs to know about one audio file."""

    rate: int  # its sample rate
    channels: int
    frames: int  # samples per channel at ``rate``
    samples: int  # samples of the 16 kHz mono version (what the encoder sees)
    duration: float  # seconds, rounded to 0.1 ms

    @property
    def needs_conversion(self) -> bool:
        """True unless the file is already 16 kHz mono."""
        return self.rate != SAMPLE_RATE or self.channels != 1


class AudioError(ValueError):
    """An audio file that cannot be used; ``reason`` says why without the path."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


# Subtypes that store integers: they cannot hold NaN or infinity, so their samples need not
# be read to check finiteness (IEMOCAP, CREMA-D, RAVDESS and MSP-Podcast are all PCM_16).
_INTEGER_SUBTYPES = ("PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "ULAW", "ALAW")


def inspect_audio(path: str | Path) -> AudioInfo:
    """Checks that an audio file is usable for training and evaluation.

    Reads the header; files whose samples may be floating point (FLOAT, DOUBLE, compressed
    formats other than integer PCM) are read in full and checked with `require_finite`.

    Returns: an `AudioInfo`.

    Raises:
        AudioError (a ValueError) naming the file and the reason: unreadable audio, empty
        audio, non-finite samples, or shorter than MIN_SAMPLES at 16 kHz (MIN_DURATION s).
    """
    try:
        info = soundfile.info(str(path))
    except Exception as err:  # soundfile raises several types for broken files
        raise AudioError(path, f"unreadable audio: {err}") from None
    if info.frames <= 0:
        raise AudioError(path, "empty audio (no samples)")
    if info.subtype not in _INTEGER_SUBTYPES:
        try:
            data, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
            require_finite(torch.from_numpy(data), "audio")
        except ValueError as err:
            raise AudioError(path, f"non-finite {err}") from None
        except Exception as err:  # a header that reads but data that does not
            raise AudioError(path, f"unreadable audio: {err}") from None
    samples = math.ceil(info.frames * SAMPLE_RATE / info.samplerate)
    if samples < MIN_SAMPLES:
        raise AudioError(
            path,
            f"too short ({info.frames / info.samplerate * 1000:.1f} ms); the encoders need at "
            f"least {MIN_DURATION * 1000:g} ms ({MIN_SAMPLES} samples at {SAMPLE_RATE} Hz)",
        )
    return AudioInfo(
        rate=int(info.samplerate),
        channels=int(info.channels),
        frames=int(info.frames),
        samples=samples,
        duration=round(info.frames / info.samplerate, 4),
    )

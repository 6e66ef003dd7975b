"""Audio reading: any file soundfile can read -> mono float32 waveform at a target rate."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly

SAMPLE_RATE = 16000


def to_mono_rate(waveform: torch.Tensor, rate: int, target_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Averages channels and resamples.

    Args:
        waveform: ``[time]`` or ``[time, channels]`` float tensor.
        rate: its sample rate.
        target_rate: the wanted rate.

    Returns: ``[time']`` float32 tensor at ``target_rate``.
    """
    if waveform.dim() == 2:
        waveform = waveform.mean(dim=1)
    waveform = waveform.to(torch.float32)
    if rate != target_rate:
        # Polyphase filtering: for odd pairs such as 24,414 -> 16,000 Hz (up 8000, down 12207)
        # it takes milliseconds, where torchaudio's sinc resampler takes seconds to build its
        # kernel.
        g = gcd(int(rate), int(target_rate))
        out = resample_poly(waveform.numpy(), int(target_rate) // g, int(rate) // g)
        waveform = torch.from_numpy(out.astype(np.float32))
    return waveform


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
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for broken files
        raise ValueError(f"{path}: cannot read audio ({err})") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}: the file holds no samples")
    return to_mono_rate(require_finite(torch.from_numpy(data), path), rate, target_rate)

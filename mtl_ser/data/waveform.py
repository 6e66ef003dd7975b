"""Audio files -> mono float32 numpy waveforms at a target rate, without torch.

The one implementation of reading and resampling: `mtl_ser.data.audio` wraps it in tensors
for training and the PyTorch recognizer; the ONNX recognizer (`mtl_ser.onnx_predictor`) uses
it as is, so that an ONNX model runs with numpy, soundfile, scipy and onnxruntime only.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly


def mono_rate(data: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Averages channels and resamples.

    Args: data ``[time]`` or ``[time, channels]``; rate its sample rate; target_rate the
    wanted one.

    Returns: ``[time']`` float32 at ``target_rate``.
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1, dtype=np.float32)
    if rate != target_rate:
        # Polyphase filtering: for odd pairs such as 24,414 -> 16,000 Hz (up 8000, down 12207)
        # it takes milliseconds, where torchaudio's sinc resampler takes seconds to build its
        # kernel.
        g = gcd(int(rate), int(target_rate))
        data = resample_poly(data, int(target_rate) // g, int(rate) // g).astype(np.float32)
    return data


def read_waveform(path: str | Path, target_rate: int) -> np.ndarray:
    """Reads an audio file as mono float32 at ``target_rate``: ``[time]``.

    Raises ValueError naming the file when it is unreadable, holds no samples, or holds NaN
    / infinite samples.
    """
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for broken files
        raise ValueError(f"{path}: cannot read audio ({err})") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}: the file holds no samples")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise ValueError(f"{path}: {bad} sample(s) are NaN or infinite")
    return mono_rate(data, rate, target_rate)

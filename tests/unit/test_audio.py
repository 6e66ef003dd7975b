"""Audio reading: channel averaging and resampling to 16 kHz."""

import numpy as np
import pytest
import soundfile
import torch

from mtl_ser.data.audio import load_audio


@pytest.mark.parametrize("rate", [8000, 24414, 44100, 16000])
def test_any_rate_and_channels_become_16k_mono(tmp_path, rate):
    t = np.arange(rate) / rate  # one second
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, -0.2 * left], axis=1).astype(np.float32)
    path = tmp_path / "a.wav"
    soundfile.write(str(path), stereo, rate, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.dtype == torch.float32 and audio.dim() == 1
    assert abs(audio.shape[0] - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(audio.numpy()))
    assert np.argmax(spectrum) == pytest.approx(440, abs=1)  # 1 Hz bins over one second
    # Mean of the channels: amplitude (0.5 - 0.1) / 2 = 0.2.
    assert audio[2000:14000].abs().max().item() == pytest.approx(0.2, abs=0.01)


def test_unreadable_and_empty_files_are_named(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nothing")
    with pytest.raises(ValueError, match="bad.wav: cannot read audio"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="empty.wav: the file holds no samples"):
        load_audio(empty)

"""Running a trained model on recordings: `load_model(...).predict("a.wav")`.

A recording longer than the window (default 8 s) is cut into equal windows of at most that
length, scored independently (as training utterances were); the overall emotion is the
duration-weighted mean of the window probabilities and the transcript joins the windows'
greedy CTC transcripts (a word straddling a window boundary may come out split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from speechbrain.decoders.ctc import ctc_greedy_decode
from tqdm import tqdm

from mtl_ser.data.audio import load_audio, to_mono_rate
from mtl_ser.export import EXPORT_FILE, SPEC_FILE, LoadedModel, load_exported, load_run

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")


@dataclass
class WindowPrediction:
    """One window of a recording: seconds from the start, label and class probabilities."""

    start: float
    end: float
    emotion: str
    probabilities: dict[str, float]
    transcript: str | None


@dataclass
class Prediction:
    """What `EmotionRecognizer` says about one recording.

    ``emotion`` / ``probabilities`` are over the whole recording; ``transcript`` is None for
    a model without CTC head; ``error`` is set (and the rest empty) when the file could not
    be scored.
    """

    path: str | None
    emotion: str | None
    probabilities: dict[str, float]
    transcript: str | None
    duration: float | None
    windows: list[WindowPrediction] = field(default_factory=list)
    error: str | None = None


class EmotionRecognizer:
    """A loaded model ready for recordings.

    Args:
        model: from `mtl_ser.export.load_exported` or `load_run`.
        window: longest stretch scored at once, seconds.
        device: torch device string.
    """

    def __init__(self, model: LoadedModel, window: float = 8.0, device: str = "cpu"):
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.model = model
        self.labels = model.labels
        self.window = float(window)
        self.device = torch.device(device)
        self.modules = {name: m.to(self.device).eval() for name, m in model.modules.items()}
        self.has_ctc = "ctc_head" in self.modules

    # ------------------------------------------------------------------------------ public
    def predict(self, audio, sample_rate: int | None = None) -> Prediction:
        """Scores one recording.

        Args:
            audio: a file path, or a waveform (``[time]`` or ``[time, channels]`` array or
                tensor) with its ``sample_rate``.
            sample_rate: required with a waveform.

        Returns: a `Prediction`. Raises ValueError for an unreadable, empty or too short input.
        """
        path, waveform = self._load(audio, sample_rate)
        predictions = self._predict_waveforms([waveform], [path], batch_size=1)
        if predictions[0].error:
            raise ValueError(predictions[0].error)
        return predictions[0]

    def predict_batch(
        self, paths: list[str | Path], batch_size: int = 8, progress: bool = False
    ) -> list[Prediction]:
        """Scores many files, batching their windows; a file that cannot be read or scored
        gets a `Prediction` with ``error`` set and does not stop the others.

        Returns: one `Prediction` per path, in the given order.
        """
        results: list[Prediction | None] = [None] * len(paths)
        waveforms, names, positions = [], [], []
        for i, p in enumerate(tqdm(paths, desc="reading", disable=not progress, unit="file")):
            try:
                waveforms.append(self._load(p, None)[1])
                names.append(str(p))
                positions.append(i)
            except (ValueError, FileNotFoundError) as err:
                results[i] = _failed(str(p), str(err))
        scored = self._predict_waveforms(waveforms, names, batch_size, progress)
        for i, prediction in zip(positions, scored, strict=True):
            results[i] = prediction
        return results

    # ----------------------------------------------------------------------------- helpers
    def _load(self, audio, sample_rate) -> tuple[str | None, torch.Tensor]:
        """Returns (path or None, mono waveform ``[time]`` at the model's rate)."""
        if isinstance(audio, str | Path):
            if not Path(audio).is_file():
                raise FileNotFoundError(f"{audio}: no such file")
            return str(audio), load_audio(audio, self.model.sample_rate)
        if sample_rate is None:
            raise ValueError("a waveform needs its sample_rate")
        waveform = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
        if waveform.numel() == 0:
            raise ValueError("the waveform holds no samples")
        return None, to_mono_rate(waveform, sample_rate, self.model.sample_rate)

    def windows(self, n_samples: int) -> list[tuple[int, int]]:
        """Splits ``n_samples`` into ceil(duration / window) equal windows: [(start, end)]."""
        limit = self.window * self.model.sample_rate
        count = max(1, math.ceil(n_samples / limit))
        bounds = [round(k * n_samples / count) for k in range(count + 1)]
        return list(zip(bounds[:-1], bounds[1:], strict=True))

    def _predict_waveforms(
        self, waveforms: list[torch.Tensor], names: list, batch_size: int, progress=False
    ) -> list[Prediction]:
        segments, owner = [], []
        for i, waveform in enumerate(waveforms):
            for start, end in self.windows(waveform.shape[0]):
                segments.append(waveform[start:end])
                owner.append((i, start, end))
        probs, transcripts, frames = self._score(segments, batch_size, progress)
        rate = self.model.sample_rate
        per_file: list[list[int]] = [[] for _ in waveforms]
        for s, (i, _, _) in enumerate(owner):
            per_file[i].append(s)
        out = []
        for i, segment_ids in enumerate(per_file):
            name, duration = names[i], waveforms[i].shape[0] / rate
            if any(frames[s] < 1 for s in segment_ids):
                out.append(_failed(name, f"{name}: too short to score ({duration:.3f} s)"))
                continue
            weights = torch.tensor([segments[s].shape[0] for s in segment_ids], dtype=torch.float)
            overall = (probs[segment_ids] * weights[:, None]).sum(0) / weights.sum()
            windows = [
                WindowPrediction(
                    start=owner[s][1] / rate,
                    end=owner[s][2] / rate,
                    emotion=self.labels[int(probs[s].argmax())],
                    probabilities=self._as_dict(probs[s]),
                    transcript=None if transcripts is None else transcripts[s],
                )
                for s in segment_ids
            ]
            text = None
            if transcripts is not None:
                text = " ".join(t for t in (transcripts[s] for s in segment_ids) if t)
            out.append(
                Prediction(
                    path=name,
                    emotion=self.labels[int(overall.argmax())],
                    probabilities=self._as_dict(overall),
                    transcript=text,
                    duration=duration,
                    windows=windows,
                )
            )
        return out

    def _as_dict(self, probs: torch.Tensor) -> dict[str, float]:
        return {label: float(p) for label, p in zip(self.labels, probs, strict=True)}

    @torch.no_grad()
    def _score(self, segments: list[torch.Tensor], batch_size: int, progress: bool):
        """Runs the model on segments, batched by similar length (padding-aware, so the
        grouping does not change results). Segments too short for the encoder (no output
        frame) are not run.

        Returns: (probabilities ``[N, C]``, transcripts or None, frame counts ``[N]``).
        """
        n = len(segments)
        encoder = self.modules["encoder"]
        frames = encoder.output_lengths(torch.tensor([s.shape[0] for s in segments])).cpu()
        probs = torch.zeros(n, len(self.labels))
        transcripts = [""] * n if self.has_ctc else None
        order = sorted((s for s in range(n) if frames[s] >= 1), key=lambda s: segments[s].shape[0])
        batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="scoring", disable=not progress, unit="batch"):
            longest = max(segments[s].shape[0] for s in batch)
            wavs = torch.zeros(len(batch), longest)
            for row, s in enumerate(batch):
                wavs[row, : segments[s].shape[0]] = segments[s]
            rel = torch.tensor([segments[s].shape[0] / longest for s in batch])
            hidden, lens = encoder(wavs.to(self.device), rel.to(self.device))
            logits = self.modules["emotion_head"](hidden, lens)
            probs[batch] = torch.softmax(logits.float(), dim=-1).cpu()
            if self.has_ctc:
                log_probs = self.modules["ctc_head"](hidden)
                rel_frames = lens.float() / hidden.shape[1]
                blank = self.model.vocab.blank_index
                ids = ctc_greedy_decode(log_probs, rel_frames, blank_id=blank)
                for s, seq in zip(batch, ids, strict=True):
                    transcripts[s] = self.model.vocab.decode(seq)
        return probs, transcripts, frames


def _failed(path: str | None, error: str) -> Prediction:
    return Prediction(path, None, {}, None, None, [], error)


def load_model(path: str | Path, window: float = 8.0, device: str = "cpu") -> EmotionRecognizer:
    """Loads an exported model folder (`mtl-ser export`) or a training run folder.

    Args:
        path: the folder.
        window: longest stretch scored at once, in seconds.
        device: e.g. "cpu" or "cuda".

    Returns: an `EmotionRecognizer`.
    """
    folder = Path(path)
    if (folder / EXPORT_FILE).is_file():
        model = load_exported(folder)
    elif (folder / SPEC_FILE).is_file():
        model = load_run(folder)
    else:
        raise FileNotFoundError(
            f"{folder} is neither an exported model ({EXPORT_FILE}) nor a training run "
            f"folder ({SPEC_FILE})"
        )
    return EmotionRecognizer(model, window=window, device=device)

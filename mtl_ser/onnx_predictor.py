"""Running an ONNX model folder (`mtl-ser export RUN OUT --format onnx`) on recordings.

Needs numpy, soundfile, scipy and onnxruntime only: no torch model code is imported, so
the folder runs where PyTorch is not installed. Recordings are cut into windows, scored and
combined exactly as by the PyTorch `mtl_ser.inference.EmotionRecognizer` (both end in
`mtl_ser.prediction_types.combine_windows`: duration-weighted mean of the windows'
probabilities and other tasks' values; greedy CTC transcripts joined).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtl_ser.data.waveform import read_waveform
from mtl_ser.prediction_types import Prediction, combine_windows, window_bounds

ONNX_META_FILE = "onnx_model.json"  # the same name as mtl_ser.export_onnx.ONNX_META_FILE


def is_onnx_folder(path: str | Path) -> bool:
    """True when ``path`` is a complete ONNX export (its onnx_model.json exists)."""
    return (Path(path) / ONNX_META_FILE).is_file()


class OnnxRecognizer:
    """An ONNX model folder ready for recordings.

    Args:
        folder: written by `mtl_ser.export_onnx.export_onnx`.
        window: longest stretch scored at once, seconds.
        threads: ONNX Runtime intra-op threads (None: its default).
    """

    def __init__(self, folder: str | Path, window: float = 8.0, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise ImportError(
                "an ONNX model folder needs onnxruntime: pip install onnxruntime (or mtl-ser[onnx])"
            ) from None
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        folder = Path(folder)
        meta_path = folder / ONNX_META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: not a complete ONNX export")
        self.meta = json.loads(meta_path.read_text())
        self.labels = tuple(self.meta["labels"])
        self.has_ctc = "ctc_log_probs" in self.meta["outputs"]
        # The other tasks' outputs (absent from folders of mtl-ser before they were exported).
        self.tasks = dict(self.meta.get("tasks") or {})
        front = self.meta["front_end"]
        self.sample_rate = int(front["sample_rate"])
        self.min_samples = int(front["min_samples"])
        self.window = float(window)
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(folder / self.meta["model"]), options, providers=["CPUExecutionProvider"]
        )

    def predict_batch(self, items, batch_size: int = 8, progress=None) -> list[Prediction]:
        """Scores audio files; one that cannot be read or is too short gets a `Prediction`
        with ``error`` set. Returns one `Prediction` per file, in order. (``progress`` is
        accepted for the PyTorch recognizer's signature; no bars are shown.)"""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        results: list[Prediction | None] = [None] * len(items)
        waveforms = {}
        for i, item in enumerate(items):
            try:
                if not Path(item).is_file():
                    raise ValueError(f"{item}: no such file")
                waveforms[i] = read_waveform(item, self.sample_rate)
            except ValueError as err:
                results[i] = Prediction(str(item), None, {}, None, None, [], str(err))
        segments = [
            (i, start, end)
            for i, w in waveforms.items()
            for start, end in window_bounds(w.shape[0], self.window * self.sample_rate)
        ]
        scored = self._score(
            [waveforms[i][a:b] for i, a, b in segments if b - a >= self.min_samples],
            int(batch_size),
        )
        scores = iter(scored)
        per_file: dict[int, list] = {i: [] for i in waveforms}
        for i, a, b in segments:
            per_file[i].append((a, b, next(scores) if b - a >= self.min_samples else None))
        for i, parts in per_file.items():
            results[i] = self._combine(str(items[i]), waveforms[i].shape[0], parts)
        return results

    def _combine(self, path: str, n_samples: int, parts: list) -> Prediction:
        duration = n_samples / self.sample_rate
        if any(score is None for _, _, score in parts):
            message = f"{path}: too short to score ({duration:.3f} s)"
            return Prediction(path, None, {}, None, None, [], message)
        rate = self.sample_rate
        return combine_windows(
            path,
            duration,
            [(a / rate, b / rate) for a, b, _ in parts],
            np.stack([score["probabilities"] for _, _, score in parts]),
            self.labels,
            [score["transcript"] for _, _, score in parts] if self.has_ctc else None,
            {name: np.stack([score[name] for _, _, score in parts]) for name in self.tasks},
            self.tasks,
        )

    def _score(self, segments: list[np.ndarray], batch_size: int) -> list[dict]:
        """Per segment ``{"probabilities": [C], "transcript": str or None, <task>: [K]}``,
        batched by similar length (the graph is padding-aware, so grouping does not change
        results)."""
        out: list = [None] * len(segments)
        order = sorted(range(len(segments)), key=lambda s: segments[s].shape[0])
        names = list(self.meta["outputs"])
        for k in range(0, len(order), batch_size):
            batch = order[k : k + batch_size]
            lengths = np.array([segments[s].shape[0] for s in batch], dtype=np.int64)
            wavs = np.zeros((len(batch), int(lengths.max())), dtype=np.float32)
            for row, s in enumerate(batch):
                wavs[row, : lengths[row]] = segments[s]
            feeds = {"waveforms": wavs, "lengths": lengths}
            results = dict(zip(names, self.session.run(names, feeds), strict=True))
            for row, s in enumerate(batch):
                text = None
                if self.has_ctc:
                    frames = int(results["frames"][row])
                    text = self._greedy(results["ctc_log_probs"][row, :frames])
                out[s] = {
                    "probabilities": results["probabilities"][row].astype(np.float64),
                    "transcript": text,
                    **{name: results[name][row].astype(np.float64) for name in self.tasks},
                }
        return out

    def _greedy(self, log_probs: np.ndarray) -> str:
        """Greedy CTC: best symbol per frame ``[T, V]``, repeats merged, blanks dropped."""
        best = log_probs.argmax(axis=-1)
        keep = np.ones_like(best, dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        blank, chars = self.meta["blank_index"], self.meta["vocab"]
        return "".join(chars[int(i)] for i in best[keep] if int(i) != blank)

"""Running a trained model on recordings: `load_model(...).predict("a.wav")`.

A recording longer than the window (default 8 s) is cut into equal windows of at most that
length, scored independently (as training utterances were); the overall emotion is the
duration-weighted mean of the window probabilities and the transcript joins the windows'
CTC transcripts (a word straddling a window boundary may come out split), decoded as the run
was tested (`mtl_ser.decoding`: greedy, or beam search with the run's language model).

Waveforms given to the Python API are ``[time]`` or ``[channels, time]`` (channels first, at
most `MAX_CHANNELS`); a ``[batch, time]`` array of recordings goes to `predict_batch`.
Non-finite samples are refused with an error naming the input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mtl_ser.data.audio import load_audio, require_finite, to_mono_rate
from mtl_ser.decoding import CTCDecoder, DecoderConfig
from mtl_ser.export import EXPORT_FILE, SPEC_FILE, LoadedModel, load_exported, load_run
from mtl_ser.models.masking import lengths_to_mask, masked_mean
from mtl_ser.prediction_types import (  # noqa: F401  (AUDIO_EXTENSIONS: part of this API)
    AUDIO_EXTENSIONS,
    Embedding,
    Prediction,
    WindowPrediction,
    combine_windows,
    window_bounds,
)
from mtl_ser.tasks import TASK_KINDS

# A 2-D waveform is [channels, time]; more rows than this is more likely a batch of
# recordings or a [time, channels] array, so it is refused rather than guessed.
MAX_CHANNELS = 8
# `embed` layers besides an index into the encoder's hidden layers.
EMBEDDING_LAYERS = ("last", "head")


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
        # The run's decoder (greedy, or beam search with its LM, loaded once).
        self.decoder = model.decoder() if self.has_ctc else None
        self._greedy = (
            None
            if self.decoder is None or self.decoder.name == "greedy"
            else (CTCDecoder(DecoderConfig(), model.vocab))
        )
        # The exported tasks besides emotion / CTC (shipped kinds only: nothing is imported
        # by a name read from a model file).
        spec_tasks = (model.spec or {}).get("tasks", {})
        self.tasks = {name: (TASK_KINDS[t["kind"]], t) for name, t in spec_tasks.items()}

    # ------------------------------------------------------------------------------ public
    def predict(self, audio, sample_rate: int | None = None) -> Prediction:
        """Scores one recording.

        Args:
            audio: a file path, or a waveform (``[time]`` or ``[channels, time]`` array or
                tensor) with its ``sample_rate``.
            sample_rate: required with a waveform.

        Returns: a `Prediction`. Raises ValueError for an unreadable, empty, non-finite,
        badly shaped or too short input.
        """
        path, waveform = self._load(audio, sample_rate, "the waveform")
        predictions = self._predict_waveforms([waveform], [path or "the waveform"], batch_size=1)
        if predictions[0].error:
            raise ValueError(predictions[0].error)
        predictions[0].path = path
        return predictions[0]

    def predict_batch(
        self, items, batch_size: int = 8, progress: bool | None = False, sample_rate=None
    ) -> list[Prediction]:
        """Scores many recordings, batching their windows; one that cannot be read or scored
        gets a `Prediction` with ``error`` set and does not stop the others.

        Args:
            items: file paths and / or waveforms (``[time]`` or ``[channels, time]``), or one
                ``[batch, time]`` array or tensor of equally long recordings.
            batch_size: windows scored at once (>= 1).
            progress: progress bars (None: only on a terminal).
            sample_rate: the rate of the waveforms (required with waveforms).

        Returns: one `Prediction` per item, in the given order (``path`` None for waveforms).
        """
        names, paths, loaded, errors = self._load_many(items, batch_size, progress, sample_rate)
        results = [None if e is None else _failed(names[i], e) for i, e in enumerate(errors)]
        ok = [i for i, e in enumerate(errors) if e is None]
        scored = self._predict_waveforms(
            [loaded[i] for i in ok], [names[i] for i in ok], batch_size, progress
        )
        for i, prediction in zip(ok, scored, strict=True):
            results[i] = prediction
        for path, prediction in zip(paths, results, strict=True):
            prediction.path = path
        return results

    def embed(self, audio, layer="last", sample_rate: int | None = None) -> np.ndarray:
        """An utterance-level vector of one recording.

        Args:
            audio: a file path or a waveform, as for `predict`.
            layer: "last" (the mean over true frames of the encoder's output), "head" (the
                vector the emotion classifier reads: its pooling of its input), or an index
                into the encoder's hidden layers (0 = the first transformer layer's input,
                -1 the last layer's output; mean over true frames).
            sample_rate: required with a waveform.

        Returns: ``[D]`` float32. A recording longer than the window is embedded per window
        and the vectors averaged, weighted by window length.
        """
        path, waveform = self._load(audio, sample_rate, "the waveform")
        return self._embed_waveforms([waveform], [path or "the waveform"], layer, 1, False)[0]

    def embed_batch(
        self, items, layer="last", batch_size: int = 8, progress=False, sample_rate=None
    ) -> list[Embedding]:
        """`embed` for many recordings (arguments as for `predict_batch`); one that fails
        gets an `Embedding` with ``error`` set."""
        names, paths, loaded, errors = self._load_many(items, batch_size, progress, sample_rate)
        results = [Embedding(paths[i], None, None, e) for i, e in enumerate(errors)]
        ok = [i for i, e in enumerate(errors) if e is None]
        vectors = self._embed_waveforms(
            [loaded[i] for i in ok], [names[i] for i in ok], layer, batch_size, progress, True
        )
        for i, vector in zip(ok, vectors, strict=True):
            if isinstance(vector, str):  # too short
                results[i].error = vector
            else:
                results[i].vector = vector
                results[i].duration = loaded[i].shape[0] / self.model.sample_rate
        return results

    # ----------------------------------------------------------------------------- helpers
    def _load(self, audio, sample_rate, name: str) -> tuple[str | None, torch.Tensor]:
        """Returns (path or None, mono waveform ``[time]`` at the model's rate)."""
        if isinstance(audio, str | Path):
            if not Path(audio).is_file():
                raise FileNotFoundError(f"{audio}: no such file")
            return str(audio), load_audio(audio, self.model.sample_rate)
        if not isinstance(audio, _WAVEFORM_TYPES):
            raise TypeError(
                f"{name}: expected a file path, a numpy array or a torch tensor, "
                f"not {type(audio).__name__}"
            )
        if sample_rate is None or int(sample_rate) <= 0:
            raise ValueError(f"{name}: a waveform needs its sample_rate (> 0), got {sample_rate}")
        waveform = torch.as_tensor(audio).detach().to("cpu", torch.float32)
        if waveform.dim() == 2:
            if waveform.shape[0] > MAX_CHANNELS:
                raise ValueError(
                    f"{name}: a 2-D waveform is read as [channels, time], and "
                    f"{waveform.shape[0]} channels is more than {MAX_CHANNELS}: pass a "
                    "[batch, time] array of recordings to predict_batch, or transpose a "
                    "[time, channels] array"
                )
            waveform = waveform.T  # to_mono_rate averages [time, channels]
        elif waveform.dim() != 1:
            raise ValueError(
                f"{name}: expected a waveform [time] or [channels, time], got shape "
                f"{list(waveform.shape)}"
            )
        if waveform.numel() == 0:
            raise ValueError(f"{name}: the waveform holds no samples")
        require_finite(waveform, name)
        return None, to_mono_rate(waveform, int(sample_rate), self.model.sample_rate)

    def _load_many(self, items, batch_size, progress, sample_rate):
        """Reads every item.

        Returns: (names for messages, file paths or None for waveforms, waveforms or None,
        error messages or None), one entry per item.
        """
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if isinstance(items, _WAVEFORM_TYPES):
            if items.ndim != 2:
                raise ValueError(
                    "predict_batch takes a list of recordings or a [batch, time] array, got "
                    f"an array of shape {list(items.shape)} (one recording: use predict)"
                )
            items = list(items)
        names, paths, loaded, errors = [], [], [], []
        for i, item in enumerate(tqdm(items, desc="reading", disable=_disable(progress))):
            paths.append(str(item) if isinstance(item, str | Path) else None)
            names.append(paths[-1] or f"waveform {i}")
            try:
                loaded.append(self._load(item, sample_rate, names[-1])[1])
                errors.append(None)
            except (ValueError, FileNotFoundError, TypeError) as err:
                loaded.append(None)
                errors.append(str(err))
        return names, paths, loaded, errors

    def windows(self, n_samples: int) -> list[tuple[int, int]]:
        """Splits ``n_samples`` into ceil(duration / window) equal windows: [(start, end)]."""
        return window_bounds(n_samples, self.window * self.model.sample_rate)

    def _predict_waveforms(
        self, waveforms: list[torch.Tensor], names: list, batch_size: int, progress=False
    ) -> list[Prediction]:
        segments, owner = self._segments(waveforms)
        probs, transcripts, greedy, frames, task_values = self._score(
            segments, batch_size, progress
        )
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
            out.append(
                combine_windows(
                    name,
                    duration,
                    [(owner[s][1] / rate, owner[s][2] / rate) for s in segment_ids],
                    probs[segment_ids].numpy(),
                    self.labels,
                    None if transcripts is None else [transcripts[s] for s in segment_ids],
                    {t: values[segment_ids].numpy() for t, values in task_values.items()},
                    {t: info for t, (_, info) in self.tasks.items()},
                    None if greedy is None else [greedy[s] for s in segment_ids],
                )
            )
        return out

    def _segments(self, waveforms: list[torch.Tensor]):
        """Cuts recordings into windows: (segments, [(recording, start, end)])."""
        segments, owner = [], []
        for i, waveform in enumerate(waveforms):
            for start, end in self.windows(waveform.shape[0]):
                segments.append(waveform[start:end])
                owner.append((i, start, end))
        return segments, owner

    @torch.no_grad()
    def _encoded_batches(self, segments: list[torch.Tensor], batch_size: int, progress, desc):
        """Runs the encoder on segments batched by similar length (padding-aware, so the
        grouping does not change results); segments too short for any output frame are
        not run.

        Yields: (segment ids, `EncoderOutput` of the batch).
        """
        encoder = self.modules["encoder"]
        frames = encoder.output_lengths(torch.tensor([s.shape[0] for s in segments])).cpu()
        order = sorted(
            (s for s in range(len(segments)) if frames[s] >= 1), key=lambda s: segments[s].shape[0]
        )
        batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc=desc, disable=_disable(progress), unit="batch"):
            longest = max(segments[s].shape[0] for s in batch)
            wavs = torch.zeros(len(batch), longest)
            for row, s in enumerate(batch):
                wavs[row, : segments[s].shape[0]] = segments[s]
            rel = torch.tensor([segments[s].shape[0] / longest for s in batch])
            yield batch, encoder(wavs.to(self.device), rel.to(self.device))

    @torch.no_grad()
    def _score(self, segments: list[torch.Tensor], batch_size: int, progress):
        """Runs the model on segments.

        Returns: (probabilities ``[N, C]``, transcripts or None (the model's decoder),
        greedy transcripts (None unless that decoder is a beam search), frame counts
        ``[N]``, ``{task: [N, K] values}`` of the other exported tasks).
        """
        n = len(segments)
        lengths = torch.tensor([s.shape[0] for s in segments])
        frames = self.modules["encoder"].output_lengths(lengths)
        probs = torch.zeros(n, len(self.labels))
        transcripts = [""] * n if self.has_ctc else None
        greedy = [""] * n if self._greedy is not None else None
        task_values = {}
        head = self.modules["emotion_head"]
        if head.reads_text and not self.has_ctc:
            raise ValueError(
                "the emotion head reads a transcript but the model has no CTC head to make one"
            )
        for batch, enc in self._encoded_batches(segments, batch_size, progress, "scoring"):
            if self.has_ctc:
                log_probs = self.modules["ctc_head"](enc.hidden, enc.layers)
                for s, text in zip(batch, self.decoder(log_probs, enc.lengths), strict=True):
                    transcripts[s] = text
                if greedy is not None:
                    for s, text in zip(batch, self._greedy(log_probs, enc.lengths), strict=True):
                        greedy[s] = text
            # A text-fusion head reads the model's own greedy transcript, as in training and
            # in the run's test pass (no reference here).
            read = transcripts if greedy is None else greedy
            texts = {"texts": [read[s] for s in batch]} if head.reads_text else {}
            logits = head(enc.hidden, enc.lengths, enc.layers, **texts)
            # Temperature scaling fitted on validation (1 without calibration).
            probs[batch] = torch.softmax(logits.float() / self.model.temperature, dim=-1).cpu()
            for task_name, (cls, info) in self.tasks.items():
                out = self.modules[info["head"]](enc.hidden, enc.lengths, enc.layers)
                values = cls.window_values(out).cpu()
                if task_name not in task_values:
                    task_values[task_name] = torch.zeros(n, values.shape[1])
                task_values[task_name][batch] = values
        return probs, transcripts, greedy, frames.cpu(), task_values

    def _pool(self, enc, layer) -> torch.Tensor:
        """Utterance vectors ``[B, D]`` of an encoded batch for `embed`'s ``layer``."""
        if layer == "head":
            return self.modules["emotion_head"].pooled(enc.hidden, enc.lengths, enc.layers)
        if layer == "last":
            hidden = enc.hidden
        else:
            hidden = enc.layers[layer]
        return masked_mean(hidden.float(), lengths_to_mask(enc.lengths, hidden.shape[1]))

    def _check_layer(self, layer):
        if layer in EMBEDDING_LAYERS:
            return layer
        if isinstance(layer, str) and layer.lstrip("-").isdigit():
            layer = int(layer)
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise ValueError(f"layer must be one of {EMBEDDING_LAYERS} or an integer: {layer!r}")
        count = getattr(self.modules["encoder"], "num_layers", None)
        if count is None:
            raise ValueError("this model's encoder has no hidden layers: use 'last' or 'head'")
        if not -count <= layer < count:
            raise ValueError(f"layer {layer} is out of range: the encoder has {count} layers")
        return layer

    @torch.no_grad()
    def _embed_waveforms(self, waveforms, names, layer, batch_size, progress, keep_going=False):
        """Vectors ``[D]`` per recording (or, with ``keep_going``, an error string for a
        recording too short to embed; else ValueError)."""
        layer = self._check_layer(layer)
        segments, owner = self._segments(waveforms)
        vectors: list = [None] * len(segments)
        for batch, enc in self._encoded_batches(segments, batch_size, progress, "embedding"):
            pooled = self._pool(enc, layer).float().cpu()
            for row, s in enumerate(batch):
                vectors[s] = pooled[row]
        out = []
        for i, waveform in enumerate(waveforms):
            ids = [s for s, o in enumerate(owner) if o[0] == i]
            if any(vectors[s] is None for s in ids):
                seconds = waveform.shape[0] / self.model.sample_rate
                error = f"{names[i]}: too short to embed ({seconds:.3f} s)"
                if not keep_going:
                    raise ValueError(error)
                out.append(error)
                continue
            weights = torch.tensor([segments[s].shape[0] for s in ids], dtype=torch.float)
            stacked = torch.stack([vectors[s] for s in ids])
            out.append(((stacked * weights[:, None]).sum(0) / weights.sum()).numpy())
        return out


_WAVEFORM_TYPES = (np.ndarray, torch.Tensor)


def _disable(progress) -> bool | None:
    """tqdm's ``disable``: None shows bars only on a terminal."""
    return None if progress is None else not progress


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

"""Features computed once per audio file and reused across epochs and runs, and the rule that
decides, per sample, between the cache and waveform augmentation.

Cache key. An entry is found by two digests:

- the *settings digest*: every setting of the front end (`LogMelFrontEnd.settings`: sample
  rate, FFT size, window, hop, mel bands, band limits, log and top_db, normalisation, plus the
  front end's version and the SpeechBrain and torch versions that compute the numbers);
- the *file digest*: the audio file's resolved path, size and modification time (ns).

Layout: ``<folder>/<settings digest>/settings.json`` (for people) and
``<folder>/<settings digest>/<2 hex>/<file digest>.feat``. Changing any setting, or
rewriting an audio file, addresses another entry, which is computed afresh. (Like make, it
would miss a file rewritten in place with the same size and modification time.)

Entry format and corruption. ``MAGIC``, a 4-byte little-endian header length, a JSON header
(the full key, shape, dtype, and a SHA-256 over those and the payload), then the payload: one
little-endian tensor of 2 or 3 dimensions, float32 (the log-mel features) or, for the encoder
cache (mtl_ser/data/encoder_cache.py, which shares this storage through `EntryStore`),
float16 or bfloat16. An entry is written to a temporary file in the same folder and
renamed into place (atomic), so readers never see a partial entry from a live writer and
concurrent writers (DDP processes, loader workers) are harmless. Every read checks magic,
header, key, checksum and size; a truncated or corrupted entry (a crash without fsync, a
full disk, a bad copy) is logged, recomputed and rewritten, never used.

Augmentation versus cache. A waveform augmentation (speed, noise) changes the features, so
the two cannot both apply to one sample. The rule (`FeatureSource`): a *training* sample is
drawn for waveform augmentation with probability ``wav_augment_prob``; a drawn sample is read
from its file, augmented and computed afresh (never read from nor written to the cache); every
other sample (all validation and test samples, and training samples not drawn) comes from the
cache. Feature-level augmentation (time / frequency masking) is applied by the Brain to
training batches afterwards, so it combines with cached features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mtl_ser.data.audio import load_audio

logger = logging.getLogger(__name__)

MAGIC = b"MTLFEAT1"
CACHE_FORMAT = 1
_HEADER_LEN = struct.Struct("<I")
_MAX_HEADER = 1 << 16


@contextmanager
def one_thread():
    """Runs the block on one torch thread. Features of one utterance are many small tensor
    operations: more intra-op threads only wait for each other, and on a busy machine for a
    free core (measured 7-8 ms instead of 1 ms per utterance on 2 shared cores). DataLoader
    workers run on one thread anyway; this does the same in the main process
    (``num_workers: 0``), where loading and training take turns."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def compute_features(front_end, path: str | Path, wav_augment: Callable | None = None):
    """Features ``[T, F]`` of an audio file read at the front end's rate, from its waveform
    augmented by ``wav_augment`` (``[1, S], [1] -> [1, S'], [1]``) when given."""
    with one_thread(), torch.no_grad():
        wav = load_audio(path, front_end.sample_rate)
        if wav_augment is not None:
            wavs, lens = wav_augment(wav[None], torch.ones(1))
            wav = wavs[0, : max(1, int(round(float(lens[0]) * wavs.shape[1])))]
        return front_end.features(wav)


class CacheEntryError(ValueError):
    """A cache entry that must not be used (truncated, corrupted, or for another key)."""


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def source_identity(path: str | Path) -> dict:
    """The identity of an audio file in the key: resolved path, size, mtime (ns)."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    return {"path": real, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _checksum(key: dict, shape: list, dtype: str, payload: bytes) -> str:
    """SHA-256 over the described content and the payload: a damaged shape is caught too."""
    described = json.dumps({"key": key, "shape": shape, "dtype": dtype}, sort_keys=True)
    return hashlib.sha256(described.encode() + payload).hexdigest()


# Payload dtypes: the name in the header -> (torch dtype, bytes per value).
DTYPES = {
    "float32": (torch.float32, 4),
    "float16": (torch.float16, 2),
    "bfloat16": (torch.bfloat16, 2),
}


def encode_entry(key: dict, tensor: torch.Tensor, dtype: str = "float32") -> bytes:
    """Serialises a tensor of 2 or 3 dimensions (e.g. features ``[T, F]``), converted to
    ``dtype`` (a `DTYPES` name), with its key (see the module docstring)."""
    torch_dtype, _ = DTYPES[dtype]
    values = tensor.detach().to("cpu", torch_dtype).contiguous()
    # Through a same-width integer view: numpy has no bfloat16. Stored little-endian.
    payload = values.view(torch.int32 if dtype == "float32" else torch.int16).numpy()
    payload = payload.astype(payload.dtype.newbyteorder("<"), copy=False).tobytes()
    shape = list(tensor.shape)
    header = json.dumps(
        {
            "key": key,
            "shape": shape,
            "dtype": dtype,
            "sha256": _checksum(key, shape, dtype, payload),
        },
        sort_keys=True,
    ).encode()
    return MAGIC + _HEADER_LEN.pack(len(header)) + header + payload


def decode_entry(data: bytes, key: dict) -> torch.Tensor:
    """The tensor of a serialised entry, in its stored dtype; raises CacheEntryError saying
    what is wrong when it is truncated, corrupted or holds another key."""
    start = len(MAGIC) + _HEADER_LEN.size
    if len(data) < start or not data.startswith(MAGIC):
        raise CacheEntryError("no valid magic number (truncated or not a cache entry)")
    (header_len,) = _HEADER_LEN.unpack_from(data, len(MAGIC))
    if header_len > _MAX_HEADER or len(data) < start + header_len:
        raise CacheEntryError("truncated header")
    try:
        header = json.loads(data[start : start + header_len])
        shape, dtype, checksum = header["shape"], header["dtype"], header["sha256"]
    except (ValueError, KeyError, TypeError) as err:
        raise CacheEntryError(f"unreadable header ({err})") from None
    if header.get("key") != key:
        raise CacheEntryError("entry of another file or settings")
    payload = data[start + header_len :]
    if _checksum(key, shape, dtype, payload) != checksum:
        raise CacheEntryError("checksum mismatch (truncated or corrupted)")
    if dtype not in DTYPES or not _is_shape(shape):
        raise CacheEntryError(f"unsupported content: {dtype} {shape}")
    torch_dtype, width = DTYPES[dtype]
    if len(payload) != width * math.prod(shape):
        raise CacheEntryError(f"payload of {len(payload)} bytes does not hold {dtype} {shape}")
    integers = np.frombuffer(payload, dtype="<i4" if width == 4 else "<i2")
    values = torch.from_numpy(integers.astype(integers.dtype.newbyteorder("="))).view(torch_dtype)
    return values.reshape(shape)


def _is_shape(shape) -> bool:
    return (
        isinstance(shape, list)
        and len(shape) in (2, 3)
        and all(type(n) is int and n >= 0 for n in shape)
    )


def entry_size(shape: list[int], dtype: str) -> int:
    """Bytes of an entry's payload (its header adds about 400 bytes)."""
    return DTYPES[dtype][1] * math.prod(shape)


class EntryStore:
    """Entries keyed by settings and by an audio file's identity, stored under ``folder``:
    the storage of the feature cache and of the encoder cache (see the module docstring).

    Args:
        folder: the cache root (shared by runs; one subfolder per settings digest).
        settings: a JSON-able dict of everything that changes the stored numbers (written
            to ``settings.json`` for people).
        dtype: the payload's dtype (a `DTYPES` name).
    """

    def __init__(self, folder: str | Path, settings: dict, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        self.settings = settings
        self.dtype = dtype
        self.settings_digest = _digest({"format": CACHE_FORMAT, **settings})[:20]
        self.folder = Path(folder) / self.settings_digest

    def entry_path(self, key: dict) -> Path:
        digest = _digest(key)
        return self.folder / digest[:2] / f"{digest}.feat"

    def key(self, path: str | Path) -> dict:
        """The full key of an audio file's entry."""
        return {"settings": self.settings_digest, "source": source_identity(path)}

    def load(self, path: str | Path) -> torch.Tensor | None:
        """The stored tensor of an audio file (in the stored dtype), or None when there is
        no entry; raises CacheEntryError when the entry is damaged."""
        key = self.key(path)
        try:
            data = self.entry_path(key).read_bytes()
        except FileNotFoundError:
            return None
        return decode_entry(data, key)

    def store(self, path: str | Path, tensor: torch.Tensor) -> int:
        """Writes an audio file's entry atomically; returns its size in bytes."""
        key = self.key(path)
        data = encode_entry(key, tensor, self.dtype)
        self._write(self.entry_path(key), data)
        return len(data)

    def _write(self, entry: Path, data: bytes) -> None:
        """Writes to a temporary file next to ``entry``, then renames it into place."""
        if not entry.parent.is_dir():
            entry.parent.mkdir(parents=True, exist_ok=True)
            settings = self.folder / "settings.json"
            if not settings.is_file():
                _atomic_write(settings, json.dumps(self.settings, indent=2).encode())
        _atomic_write(entry, data)


class FeatureCache(EntryStore):
    """Front-end features of audio files, computed once and stored under ``folder``.

    Args:
        folder: the cache root (shared by runs; one subfolder per front-end setting).
        front_end: has ``settings`` (a JSON-able dict of every setting), ``sample_rate``
            and ``features(wav [S]) -> [T, F]`` (e.g. `mtl_ser.models.cnn.LogMelFrontEnd`).

    Counters (of this process): ``computed`` (entries written, including rebuilt ones),
    ``reused`` (valid entries read) and ``rebuilt`` (invalid entries replaced).
    """

    def __init__(self, folder: str | Path, front_end):
        super().__init__(folder, front_end.settings)
        self.front_end = front_end
        self.computed = self.reused = self.rebuilt = 0

    def get(self, path: str | Path) -> torch.Tensor:
        """Features ``[T, F]`` of an audio file: the cached entry if valid, else computed
        (from the file read at the front end's rate) and stored."""
        try:
            feats = self.load(path)
        except CacheEntryError as err:
            entry = self.entry_path(self.key(path))
            logger.warning("feature cache entry %s is invalid (%s): recomputing", entry, err)
            self.rebuilt += 1
        else:
            if feats is not None:
                self.reused += 1
                return feats
        feats = compute_features(self.front_end, path)
        self.store(path, feats)
        self.computed += 1
        return feats


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FeatureSource:
    """An utterance's encoder features for the data pipeline, under the augmentation-versus-
    cache rule of the module docstring.

    Args:
        front_end: see `FeatureCache`.
        cache_folder: the cache root, or None to compute the features every time.
        wav_augment: waveform augmentation, called as ``wav_augment(wavs [1, S], lens [1])
            -> (wavs [1, S'], lens [1])`` (e.g. SpeechBrain's ``Augmenter`` with
            ``augment_prob: 1.0``), or None.
        wav_augment_prob: probability that a training sample is computed from an augmented
            waveform instead of the cache.

    Counter: ``augmented`` (samples computed from augmented waveforms, this process).
    """

    def __init__(self, front_end, cache_folder=None, wav_augment=None, wav_augment_prob=0.0):
        if not 0.0 <= wav_augment_prob <= 1.0:
            raise ValueError(f"wav_augment_prob must be in [0, 1], not {wav_augment_prob}")
        if wav_augment_prob > 0 and wav_augment is None:
            raise ValueError("wav_augment_prob > 0 needs a wav_augment")
        self.front_end = front_end
        self.cache = None if cache_folder is None else FeatureCache(cache_folder, front_end)
        self.wav_augment = wav_augment
        self.wav_augment_prob = float(wav_augment_prob)
        self.frames_per_second = front_end.frames_per_second
        self.augmented = 0

    def __call__(self, path: str | Path, train: bool = False) -> torch.Tensor:
        """Features ``[T, F]`` of the audio file at ``path``; ``train`` marks a training
        sample, which may be drawn for waveform augmentation."""
        if train and self.wav_augment_prob > 0 and float(torch.rand(())) < self.wav_augment_prob:
            self.augmented += 1
            return compute_features(self.front_end, path, self.wav_augment)
        if self.cache is None:
            return compute_features(self.front_end, path)
        return self.cache.get(path)

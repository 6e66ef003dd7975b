"""What a frozen encoder computes, computed once per audio file and read from disk afterwards.

A frozen part of the encoder gives every utterance the same output in every epoch, so each
epoch recomputing it is wasted. Two kinds, chosen by what the run freezes:

- ``freeze_encoder: True`` (SUPERB-style probing): kind ``hidden``, the hidden states the
  heads read: the last one (``emotion_layers`` / ``ctc_layers`` ``last``) and / or every
  layer (``weighted``). Later epochs train the heads only, without running the encoder.
- ``freeze_feature_encoder: True``: kind ``conv``, the convolutional feature encoder's
  output; the trained rest of the encoder (projection, transformer) runs on it
  (`mtl_ser.models.ssl.SSLEncoder` with ``from_features=True``).

Storage is the feature cache's (`mtl_ser.data.feature_cache.EntryStore`): one checksummed
entry per audio file, written atomically, keyed by the file's path, size and modification
time and by a digest of everything that changes the numbers: the kind and the stored layers,
the dtype, a SHA-256 of the frozen weights (a random preset or another checkpoint is another
encoder), the encoder's configuration (less the settings a frozen part ignores: dropout,
layer drop, masking), the waveform normalisation, and the torch and transformers versions.
Entries are stored as float16 by default (half the disk of float32; relative rounding of
about 5e-4, less than bf16 training's), ``encoder_cache_dtype: float32`` for exact values.

When: the Brain plans the cache when it is built and fills it before the first epoch, in one
batched pass on its device over the training and validation utterances (a progress bar on a
terminal, one line otherwise, then a summary of what is cached and its size on disk). The
size is known before anything is computed: a cache larger than ``encoder_cache_max_gb``, or
than the free disk space, is refused with a message. Training and validation batches then
carry the cached tensors (``cached``) instead of waveforms: the audio is not read again.
The test pass (once) runs the encoder on the waveforms, so a run's test results are those
``mtl-ser evaluate`` reproduces from its checkpoint.

Exactness: the padding-aware encoder gives an utterance the same output alone or in any
batch, so an entry is what every epoch would compute (up to the dtype's rounding). Settings
under which that is not so are refused (`cache_kind`): waveform augmentation
(``augment_prob > 0``: another input every epoch), training crops (``max_len``: the
features of a crop are not a crop of the features, because the first normalisation and the
attention see the whole utterance), and ``padding_aware: False`` (outputs depend on the
batch). ``mask_time_prob`` needs nothing: a frozen encoder stays in eval mode and never
masks (cached or not), and with a frozen feature encoder the masking happens after the
cached features, in the trained part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch
import transformers
from torch.utils.data import DataLoader

from mtl_ser.data.audio import SAMPLE_RATE, load_audio
from mtl_ser.data.feature_cache import DTYPES, CacheEntryError, EntryStore, entry_size
from mtl_ser.models.backbones import BACKBONES
from mtl_ser.models.outputs import EncoderOutput
from mtl_ser.progress import Progress

logger = logging.getLogger(__name__)

# Bump when SSLEncoder computes different numbers for the same weights and settings.
ENCODER_CACHE_VERSION = 1
KINDS = ("hidden", "conv")
GB = 1e9
# Configuration entries that do not change what a frozen part computes in eval mode.
_TRAINING_ONLY = ("dropout", "layerdrop", "mask_", "apply_spec_augment")
_BOOKKEEPING = {"transformers_version", "architectures", "dtype", "torch_dtype"}


class EncoderCacheError(RuntimeError):
    """The encoder cache cannot serve a run (too large, no disk space, a lost entry)."""


def cache_kind(
    folder,
    freeze_encoder: bool,
    freeze_feature_encoder: bool,
    augment_prob: float,
    max_len,
    padding_aware: bool,
) -> str | None:
    """Which kind of cache a run uses: "hidden" (frozen encoder), "conv" (frozen feature
    encoder only) or None (nothing frozen, or ``folder`` None).

    Raises ValueError naming the settings when a cache would not give what every epoch
    computes (see the module docstring) and how to proceed.
    """
    if folder is None or not (freeze_encoder or freeze_feature_encoder):
        return None
    kind = "hidden" if freeze_encoder else "conv"
    frozen = "freeze_encoder" if freeze_encoder else "freeze_feature_encoder"
    problem = None
    if augment_prob > 0:
        problem = (
            f"augment_prob: {augment_prob} augments the waveforms, so the encoder's input "
            "differs every epoch"
        )
    elif max_len is not None:
        problem = (
            f"max_len: {max_len} crops the waveforms, and the encoder's output for a crop is "
            "not a crop of its output for the whole utterance"
        )
    elif not padding_aware:
        problem = "padding_aware: False makes the encoder's output depend on the batch"
    if problem is not None:
        raise ValueError(
            f"{frozen}: True caches the frozen {'encoder' if freeze_encoder else 'feature encoder'}"
            f"'s outputs in encoder_cache_folder ({folder}), but {problem}: set "
            "encoder_cache_folder: null to compute them every epoch, or change that setting"
        )
    return kind


def make_encoder_cache(
    folder,
    freeze_encoder: bool,
    freeze_feature_encoder: bool,
    augment_prob: float,
    max_len,
    padding_aware: bool,
    dtype: str = "float16",
    max_gb: float = 50.0,
    batch_size: int = 8,
    num_workers: int = 0,
) -> EncoderCache | None:
    """The `EncoderCache` of a run (from its hparams), or None when it uses none.
    Arguments as `cache_kind` and `EncoderCache`."""
    kind = cache_kind(
        folder, freeze_encoder, freeze_feature_encoder, augment_prob, max_len, padding_aware
    )
    if kind is None:
        return None
    return EncoderCache(folder, kind, dtype, max_gb, batch_size, num_workers)


def readable_size(size: float) -> str:
    """``123456789`` -> ``"123.5 MB"`` (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


class EncoderCache:
    """The frozen part of an `mtl_ser.models.ssl.SSLEncoder`'s computation, per audio file
    (see the module docstring).

    Args:
        folder: the cache root (shared by runs; one subfolder per settings digest).
        kind: "hidden" (frozen encoder: the hidden states its heads read) or "conv" (frozen
            feature encoder: its convolutional features).
        dtype: stored dtype, float16 | bfloat16 | float32.
        max_gb: the largest cache (train + valid utterances) a run may build, in GB (1e9
            bytes).
        batch_size: utterances per batch of the pass that fills the cache.
        num_workers: DataLoader workers reading audio for that pass.

    Use: `plan` once the encoder and heads exist, `fill` before training, then `read` in
    the data pipeline and `encoder_output` in the forward pass.
    """

    def __init__(
        self,
        folder,
        kind: str,
        dtype: str = "float16",
        max_gb: float = 50.0,
        batch_size: int = 8,
        num_workers: int = 0,
    ):
        if kind not in KINDS:
            raise ValueError(f"encoder cache kind must be one of {list(KINDS)}, not {kind!r}")
        if dtype not in DTYPES:
            raise ValueError(f"encoder_cache_dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        if not max_gb > 0:
            raise ValueError(f"encoder_cache_max_gb must be > 0, not {max_gb!r}")
        self.root = Path(folder)
        self.kind = kind
        self.dtype = dtype
        self.max_gb = float(max_gb)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.store: EntryStore | None = None
        self.slots: tuple[str, ...] = ()
        self.computed = self.reused = self.rebuilt = 0

    # ----------------------------------------------------------------------- planning
    def plan(self, encoder, heads) -> None:
        """Decides what is stored and its key.

        Args:
            encoder: the run's `SSLEncoder` (its frozen part is digested).
            heads: the modules that read the encoder's output, each with a ``layer_sum``
                attribute (None: it reads the last hidden state; else every hidden layer),
                e.g. `EmotionHead`, `CTCHead`.
        """
        if not encoder.padding_aware:
            raise ValueError("the encoder cache needs a padding-aware encoder")
        if encoder.model_type not in BACKBONES:
            raise ValueError(
                f"encoder_cache_folder: the encoder cache serves {sorted(BACKBONES)} encoders, "
                f"not {encoder.model_type!r}: set encoder_cache_folder: null"
            )
        model_config = encoder.model.config
        # The family's own settings (the base class's generic ones, e.g. id2label, do not
        # change what the encoder computes), less those a frozen part in eval mode ignores.
        generic = set(transformers.PretrainedConfig().to_dict()) - {"model_type"}
        config = {
            k: v
            for k, v in model_config.to_dict().items()
            if not k.startswith("_")
            and k not in generic | _BOOKKEEPING
            and not any(word in k for word in _TRAINING_ONLY)
        }
        if self.kind == "hidden":
            reads_layers = [h.layer_sum is not None for h in heads]
            self.slots = ("hidden",) * (not all(reads_layers)) + ("layers",) * any(reads_layers)
            frozen = encoder.model
            self.width = encoder.output_size
        else:
            self.slots = ("conv",)
            frozen = encoder.model.feature_extractor
            self.width = model_config.conv_dim[-1]
        self.num_layers = encoder.num_layers
        # (kernel, stride) of each convolution, to count frames without keeping the encoder
        # (this object goes to the loader's worker processes with the pipelines).
        self._convolutions = list(
            zip(model_config.conv_kernel, model_config.conv_stride, strict=True)
        )
        settings = {
            "encoder_cache_version": ENCODER_CACHE_VERSION,
            "kind": self.kind,
            "slots": list(self.slots),
            "dtype": self.dtype,
            "weights_sha256": weights_digest(frozen),
            "config": config,
            "normalize_waveform": encoder.normalize_waveform,
            "padding_aware": True,
            "sample_rate": SAMPLE_RATE,
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
        }
        self.store = EntryStore(self.root, settings, self.dtype)

    @property
    def planned(self) -> bool:
        return self.store is not None

    def _require_plan(self) -> EntryStore:
        if self.store is None:
            raise RuntimeError("EncoderCache.plan was never called (EmotionBrain does it)")
        return self.store

    def describe(self) -> str:
        """What an entry holds, in words."""
        if self.kind == "conv":
            return f"convolutional features ({self.width} channels)"
        parts = []
        if "hidden" in self.slots:
            parts.append("the last hidden state")
        if "layers" in self.slots:
            parts.append(f"all {self.num_layers} hidden layers")
        return " and ".join(parts) + f" ({self.width} dims)"

    def entry_shape(self, samples: int) -> list[int]:
        """The shape of the entry of an utterance of ``samples`` samples: ``[T, C]`` (conv)
        or ``[T, K, D]`` (hidden; K stored layers)."""
        frames = samples
        for kernel, stride in self._convolutions:
            frames = (frames - kernel) // stride + 1
        if self.kind == "conv":
            return [frames, self.width]
        slots = ("hidden" in self.slots) + self.num_layers * ("layers" in self.slots)
        return [frames, slots, self.width]

    # ------------------------------------------------------------------------ reading
    def read(self, path: str | Path) -> torch.Tensor:
        """The entry of an audio file (stored dtype; shape as `entry_shape`), for the data
        pipeline. Raises EncoderCacheError when it is missing or damaged (`fill` made every
        entry valid before training, so it changed since)."""
        store = self._require_plan()
        try:
            tensor = store.load(path)
        except CacheEntryError as err:
            entry = store.entry_path(store.key(path))
            raise EncoderCacheError(
                f"encoder cache entry {entry} of {path} is damaged ({err}): run the command "
                "again, which rebuilds it"
            ) from None
        if tensor is None:
            raise EncoderCacheError(
                f"no encoder cache entry for {path} in {store.folder} (removed, or the audio "
                "file changed, since the cache was filled): run the command again"
            )
        return tensor

    def encoder_output(self, cached, encoder) -> EncoderOutput:
        """The encoder's output for a padded batch of entries.

        Args:
            cached: (``[B, T, ...]`` padded entries, ``[B]`` relative lengths), e.g. a
                batch's ``cached`` item.
            encoder: the run's encoder module (possibly DDP-wrapped): kind "conv" runs its
                trained part on the features; kind "hidden" does not use it.

        Returns: `EncoderOutput` with float32 tensors. Without a stored last hidden state
        (every head reads the weighted layer sum) ``hidden`` is the last layer, which no
        head reads.
        """
        entries, rel = cached
        entries = entries.float()
        if self.kind == "conv":
            return encoder(entries, rel, from_features=True)
        frames = torch.round(rel * entries.shape[1]).long()
        layers = None
        if "layers" in self.slots:
            first = entries.shape[2] - self.num_layers
            layers = tuple(entries[:, :, first + i] for i in range(self.num_layers))
        hidden = entries[:, :, 0] if "hidden" in self.slots else layers[-1]
        return EncoderOutput(hidden, frames, layers)

    # ------------------------------------------------------------------------ filling
    def fill(self, encoder, datasets, device="cpu", progress: bool = True) -> dict:
        """Makes a valid entry exist for every utterance of ``datasets``: checks the
        existing entries (a damaged one is rebuilt), refuses a cache larger than
        ``max_gb`` or than the free disk space, computes the missing entries in batches
        of similar length on ``device``, then logs a summary.

        Args:
            encoder: the run's `SSLEncoder` (not DDP-wrapped), on ``device``.
            datasets: SpeechBrain datasets whose records have ``wav`` and ``duration``.
            device: where to compute.
            progress: show progress (a bar on a terminal, one line otherwise).

        Returns: a summary dict (entries, computed, reused, rebuilt, bytes, folder); the
        counters ``computed``, ``reused``, ``rebuilt`` are this pass's.
        """
        store = self._require_plan()
        self.computed = self.reused = self.rebuilt = 0
        durations = {}
        for dataset in datasets:
            for utt in dataset.data_ids:
                record = dataset.data[utt]
                durations[record["wav"]] = float(record["duration"])
        shapes = {p: self.entry_shape(round(d * SAMPLE_RATE)) for p, d in durations.items()}
        total = sum(entry_size(s, self.dtype) for s in shapes.values())
        hours = sum(durations.values()) / 3600
        what = f"{self.describe()} as {self.dtype}"
        if total > self.max_gb * GB:
            raise EncoderCacheError(
                f"the encoder cache of this run would take {readable_size(total)} ({len(shapes)} "
                f"utterances, {hours:.1f} h, {what}) in {self.root}, more than "
                f"encoder_cache_max_gb = {self.max_gb:g}: raise encoder_cache_max_gb, store "
                "less (encoder_cache_dtype, or emotion_layers: last instead of all layers), "
                "or set encoder_cache_folder: null to run the frozen encoder every epoch"
            )
        missing, stored = [], 0
        for path in _progress(durations, "checking the encoder cache", progress):
            try:
                found = store.load(path)
            except CacheEntryError as err:
                entry = store.entry_path(store.key(path))
                logger.warning("encoder cache entry %s is invalid (%s): recomputing", entry, err)
                self.rebuilt += 1
                found = None
            if found is None:
                missing.append(path)
            else:
                self.reused += 1
                stored += entry_size(list(found.shape), self.dtype)
        needed = sum(entry_size(shapes[p], self.dtype) for p in missing)
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if needed > free:
            raise EncoderCacheError(
                f"the encoder cache needs {readable_size(needed)} more in {self.root}, but only "
                f"{readable_size(free)} are free: free some space, choose another "
                "encoder_cache_folder, or set encoder_cache_folder: null"
            )
        if missing:
            missing.sort(key=durations.get, reverse=True)
            stored += self._compute(encoder, missing, device, progress)
        summary = {
            "entries": len(shapes),
            "computed": self.computed,
            "reused": self.reused,
            "rebuilt": self.rebuilt,
            "bytes": stored,
            "folder": str(store.folder),
        }
        logger.info(
            "encoder cache: %d utterances (%.1f h), %s, %s in %s (%d reused, %d "
            "computed, of which %d rebuilt)",
            len(shapes),
            hours,
            what,
            readable_size(stored),
            store.folder,
            self.reused,
            self.computed,
            self.rebuilt,
        )
        return summary

    def _compute(self, encoder, paths: list, device, progress: bool) -> int:
        """Computes and stores the entries of ``paths`` in batches of ``batch_size`` in this
        order (longest first: similar lengths pad little), in float32 (no autocast), with
        the encoder in eval mode. Returns the bytes stored (payloads)."""
        starts = range(0, len(paths), self.batch_size)
        loader = DataLoader(
            _AudioFiles(paths),
            batch_sampler=[list(range(i, min(i + self.batch_size, len(paths)))) for i in starts],
            collate_fn=_pad,
            num_workers=self.num_workers,
        )
        stored = 0
        was_training = encoder.training
        encoder.eval()
        try:
            with (
                torch.no_grad(),
                torch.autocast(torch.device(device).type, enabled=False),
                Progress("computing the encoder cache", len(paths), "utt", progress) as bar,
            ):
                for names, wavs, rel in loader:
                    out, frames = self._encode(encoder, wavs.to(device), rel.to(device))
                    out = out.to(DTYPES[self.dtype][0]).cpu()
                    for name, entry, n in zip(names, out, frames.tolist(), strict=True):
                        entry = entry[:n]
                        if not torch.isfinite(entry).all():
                            raise EncoderCacheError(
                                f"the encoder's output for {name} is not finite as "
                                f"{self.dtype} (out of its range?): set "
                                "encoder_cache_dtype: bfloat16 or float32"
                            )
                        self.store.store(name, entry)
                        stored += entry_size(list(entry.shape), self.dtype)
                        self.computed += 1
                    bar.update(len(names))
        finally:
            encoder.train(was_training)
        return stored

    def _encode(self, encoder, wavs, rel) -> tuple[torch.Tensor, torch.Tensor]:
        """What is stored for a padded batch: (``[B, T, C]`` or ``[B, T, K, D]``, frames)."""
        if self.kind == "conv":
            return encoder.conv_features(wavs, rel)
        enc = encoder(wavs, rel)
        stack = [enc.hidden] * ("hidden" in self.slots)
        stack += list(enc.layers) * ("layers" in self.slots)
        return torch.stack(stack, dim=2), enc.lengths


def _progress(items, desc: str, enabled: bool):
    with Progress(desc, len(items), "utt", enabled) as bar:
        for item in items:
            yield item
            bar.update()


class _AudioFiles(torch.utils.data.Dataset):
    """Waveforms ``[S]`` of audio files, read as the data pipeline reads them."""

    def __init__(self, paths: list):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.paths[i], load_audio(self.paths[i])


def _pad(items):
    """(names, ``[B, S]`` zero-padded waveforms, ``[B]`` relative lengths)."""
    names = [name for name, _ in items]
    lengths = torch.tensor([len(wav) for _, wav in items])
    wavs = torch.zeros(len(items), int(lengths.max()))
    for i, (_, wav) in enumerate(items):
        wavs[i, : len(wav)] = wav
    return names, wavs, lengths / lengths.max()

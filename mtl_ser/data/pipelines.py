"""SpeechBrain datasets and pipelines: read -> 16 kHz mono -> crop (training) -> labels, tokens.

Dynamic items of every dataset:
    sig          ``[S]`` float waveform (16 kHz mono), the encoder input of the wav2vec2
                 recipes; or, when the recipe configures ``features`` (a
                 `mtl_ser.data.feature_cache.FeatureSource`), instead of it:
    feats        ``[T, F]`` features (log-mel for the CNN), cached or, for training samples
                 drawn for waveform augmentation, computed from the augmented waveform;
                 or, for the training and validation sets of a run with an
                 `mtl_ser.data.encoder_cache.EncoderCache` (a frozen encoder or feature
                 encoder), instead of both:
    cached       the frozen encoder's stored output (``[T, K, D]`` hidden layers or
                 ``[T, C]`` convolutional features): the audio is not read
    cropped      whether a training crop (of ``max_len`` seconds) cut the utterance
    emo_encoded  ``[1]`` class id in the label set's order
    tokens       ``[L]`` character ids of ``wrd`` (a single space when there is no text)
    ctc_mask     ``[1]`` bool: the utterance trains / scores CTC (has text and was not cropped,
                 since a crop no longer matches the full transcript)
Static keys passed through: id, wrd, has_text, scripted, duration (seconds, for messages),
spk (the speaker, written to predictions.csv; where every record has one).

Batches: training batches are length-grouped by default (``sorting: grouped``,
`mtl_ser.data.sampler.LengthGroupedBatchSampler`); validation and test sets are sorted by
duration, longest first (`dataio_prep`).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import zlib
from pathlib import Path

import numpy as np
import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import DynamicBatchSampler
from torch.utils.data import BatchSampler, SequentialSampler

from mtl_ser.data.audio import SAMPLE_RATE, load_audio
from mtl_ser.data.balanced_sampler import ClassBalancedBatchSampler
from mtl_ser.data.encoder_cache import EncoderCache
from mtl_ser.data.feature_cache import FeatureSource
from mtl_ser.data.labels import LabelSet
from mtl_ser.data.manifest import ManifestError, check_min_duration, load_manifest
from mtl_ser.data.sampler import LengthGroupedBatchSampler, ddp_world_size, distributed_batches
from mtl_ser.data.text import CharVocabulary
from mtl_ser.tasks import task_columns

OUTPUT_KEYS = [
    "id",
    "emo_encoded",
    "tokens",
    "ctc_mask",
    "wrd",
    "has_text",
    "scripted",
    "duration",
]
SORTINGS = ("grouped", "random", "ascending", "descending")
EVAL_ORDERS = ("duration", "manifest")


def load_dataset(annotation: str | Path, data_folder: str | Path) -> DynamicItemDataset:
    """Reads a manifest, filling ``{data_root}`` and ``{manifest_root}`` in wav paths only
    (SpeechBrain's ``from_json`` would format every string, and raw IEMOCAP transcripts
    contain braces such as ``{LG}``).

    Raises FileNotFoundError naming the manifest when it is missing.
    """
    annotation = Path(annotation)
    if not annotation.is_file():
        raise FileNotFoundError(f"no manifest at {annotation}: prepare the data first")
    return DynamicItemDataset(load_manifest(annotation, data_folder))


def random_crop(x: torch.Tensor, max_items: int | None) -> tuple[torch.Tensor, bool]:
    """A random window of at most ``max_items`` along dim 0 (``[N, ...]`` -> ``[N', ...]``)
    and whether it cut ``x``; None keeps ``x`` whole."""
    if max_items is None or x.shape[0] <= max_items:
        return x, False
    start = int(torch.randint(0, x.shape[0] - max_items + 1, (1,)))
    return x[start : start + max_items], True


class ItemSeeds:
    """The random numbers of training items (crops, waveform augmentation) as a function of
    (``seed``, epoch, utterance) only.

    A worker process's generators depend on when it was started and how many items it made:
    persistent workers continue their streams across epochs, fresh ones are seeded from the
    main process, and a run resumed inside an epoch skips the items already used. None of
    that can be restored exactly, so each item draws from generators seeded for it alone;
    the crops of a run are then the same whatever ``num_workers``, ``persistent_workers`` or
    resume point. The epoch lives in shared memory: the Brain sets it (`set_epoch`) before
    each epoch and the workers read it.

    Args:
        seed: the run's seed.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Chooses the epoch whose draws `drawing` makes (in every worker)."""
        self._epoch.fill_(int(epoch))

    def item_seed(self, key: str) -> int:
        """The seed of (seed, epoch, ``key``): a 32-bit integer."""
        return zlib.crc32(f"{self.seed}:{int(self._epoch)}:{key}".encode())

    def uniform(self, key: str) -> float:
        """A number in [0, 1) that depends on (seed, epoch, ``key``) only (no generator
        moves): e.g. a per-utterance coin (``key``: the utterance id and what it is for).
        A cryptographic digest, not the CRC of `item_seed`: keys differing in one character
        (neighbouring utterance ids) must give unrelated numbers."""
        text = f"{self.seed}:{int(self._epoch)}:{key}".encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2**64

    @contextlib.contextmanager
    def drawing(self, key: str):
        """Within this block the torch (CPU), Python and NumPy generators are seeded from
        (seed, epoch, ``key``); the process's own streams are restored after it (in the main
        process they are checkpointed and must not move)."""
        item_seed = self.item_seed(key)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            np.random.seed(item_seed)
            try:
                yield
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def add_pipelines(
    dataset: DynamicItemDataset,
    label_set: LabelSet,
    vocab: CharVocabulary,
    max_len: float | None,
    features: FeatureSource | None = None,
    train: bool = False,
    encoder_cache: EncoderCache | None = None,
    item_seeds: ItemSeeds | None = None,
    columns: list[str] = (),
) -> None:
    """Attaches the dynamic items described in the module docstring.

    Args:
        dataset: a manifest dataset.
        label_set: class order.
        vocab: CTC vocabulary.
        max_len: crop to a random window of this many seconds (training), or None for the
            full utterance (evaluation).
        features: None: the encoder reads waveforms (``sig``); else the source of the
            encoder's features (``feats``, cropped to ``max_len`` seconds of frames).
        train: a training split (``features`` may then augment waveforms).
        encoder_cache: the encoder's input comes from this cache (``cached``), read
            whole (the cache refuses ``max_len``).
        item_seeds: crops and augmentation draw from generators seeded per utterance and
            epoch (`ItemSeeds`); None: from the process's generators.
        columns: further manifest columns passed through as static keys (the configured
            tasks' targets, `mtl_ser.tasks.task_columns`).
    """

    # The draws of one utterance (by id: a moved corpus crops alike): seeded for it alone,
    # or the process's streams.
    def drawing(utt):
        return contextlib.nullcontext() if item_seeds is None else item_seeds.drawing(utt)

    if encoder_cache is not None:
        key = "cached"

        @sb.utils.data_pipeline.takes("wav")
        @sb.utils.data_pipeline.provides("cached", "cropped")
        def encoder_input(wav):
            return encoder_cache.read(wav), False

    elif features is None:
        key = "sig"
        max_samples = None if max_len is None else int(max_len * SAMPLE_RATE)

        @sb.utils.data_pipeline.takes("id", "wav")
        @sb.utils.data_pipeline.provides("sig", "cropped")
        def encoder_input(utt, wav):
            audio = load_audio(wav)
            with drawing(utt):
                return random_crop(audio, max_samples)

    else:
        key = "feats"
        max_frames = None if max_len is None else int(max_len * features.frames_per_second)

        @sb.utils.data_pipeline.takes("id", "wav")
        @sb.utils.data_pipeline.provides("feats", "cropped")
        def encoder_input(utt, wav):
            # Cropped after the features: the cache holds whole utterances.
            with drawing(utt):
                return random_crop(features(wav, train=train), max_frames)

    @sb.utils.data_pipeline.takes("emo")
    @sb.utils.data_pipeline.provides("emo_encoded")
    def emotion(emo):
        return torch.tensor([label_set.index(emo)], dtype=torch.long)

    @sb.utils.data_pipeline.takes("wrd", "has_text", "cropped")
    @sb.utils.data_pipeline.provides("tokens", "ctc_mask")
    def text(wrd, has_text, cropped):
        # An utterance without text gets a one-space placeholder target (masked out of the
        # loss): a batch of only such utterances would otherwise pad zero-length tensors,
        # which SpeechBrain's padding cannot do.
        # Characters no training transcript has are left out (the recipe counts them).
        tokens = vocab.encode(wrd, drop_unknown=True) if wrd else torch.zeros(0)
        yield tokens if len(tokens) else vocab.encode(" ")
        yield torch.tensor([bool(has_text) and len(tokens) > 0 and not cropped])

    for pipeline in (encoder_input, emotion, text):
        dataset.add_dynamic_item(pipeline)
    for column in columns:
        dataset.add_dynamic_item(_column_item(column))
    # The speaker, for predictions.csv, where the records have one (manifests always do).
    speaker = ["spk"] if all("spk" in r for r in dataset.data.values()) else []
    dataset.set_output_keys(OUTPUT_KEYS + [key] + speaker + [column_key(c) for c in columns])


def column_key(column: str) -> str:
    """The batch key of a task's manifest column (`mtl_ser.tasks.base.batch_column`)."""
    return f"column_{column}"


def _column_item(column: str):
    """A manifest column as text ("" when missing): numbers and missing values do not
    collate into one tensor, and each task parses its own."""

    @sb.utils.data_pipeline.takes(column)
    @sb.utils.data_pipeline.provides(column_key(column))
    def item(value):
        return "" if value is None else str(value)

    return item


def check_task_columns(dataset: DynamicItemDataset, columns: list[str], name: str) -> None:
    """The tasks' manifest columns: a column no record has is an error naming it (a task
    configured for a manifest that lacks its targets); records without it get None (their
    task skips them)."""
    for column in columns:
        having = sum(column in record for record in dataset.data.values())
        if not having:
            raise ManifestError(
                f"{name}: no record has the column {column!r} that a configured task reads: "
                "re-prepare the corpus (IEMOCAP, MSP-Podcast and CSV corpora write A/V/D and "
                "gender) or remove the task from tasks:"
            )
        if having < len(dataset.data):
            for record in dataset.data.values():
                record.setdefault(column, None)


def check_labels(dataset: DynamicItemDataset, label_set: LabelSet, name: str) -> None:
    """Raises ValueError naming the manifest's first utterances whose label is not a class."""
    bad = [
        f"{utt}: {data['emo']!r}"
        for utt, data in dataset.data.items()
        if data["emo"] not in label_set.classes
    ]
    if bad:
        raise ManifestError(
            f"{name}: {len(bad)} label(s) outside {list(label_set.classes)}: {bad[:5]}"
        )


def assert_test_is_held_out(datasets: dict[str, DynamicItemDataset]) -> None:
    """The test utterances must not appear in train or valid (they would leak into
    training or checkpoint choice). Raises ValueError naming a few shared ids."""
    test = set(datasets["test"].data)
    for name in ("train", "valid"):
        shared = test & set(datasets[name].data)
        if shared:
            raise ManifestError(
                f"{len(shared)} test utterance(s) also in {name}: {sorted(shared)[:5]}"
            )


def dataio_prep(hparams: dict, label_set: LabelSet, vocab: CharVocabulary) -> dict:
    """Builds the train / valid / test datasets of a recipe.

    Reads from hparams: ``train_annotation``, ``valid_annotation``, ``test_annotation``,
    ``data_folder``, ``max_len`` (seconds or null), ``sorting`` (`SORTINGS`), ``features``
    (null: waveforms; or a `FeatureSource`), ``encoder_cache`` (null, or the
    `EncoderCache` that feeds training and validation; the test set reads waveforms).

    Returns: ``{"train", "valid", "test"}`` datasets: train sorted by duration with
    ``sorting`` ascending / descending (else in manifest order: `train_loader_options`
    makes the batches); valid and test sorted by duration, longest first (``eval_order:
    duration``) or in manifest order (``manifest``).
    """
    if hparams["sorting"] not in SORTINGS:
        raise ValueError(
            f"sorting must be one of {', '.join(SORTINGS)}, not {hparams['sorting']!r}"
        )
    datasets = {}
    item_seeds = ItemSeeds(hparams["seed"])
    columns = task_columns(hparams)
    for split in ("train", "valid", "test"):
        dataset = load_dataset(hparams[f"{split}_annotation"], hparams["data_folder"])
        check_labels(dataset, label_set, hparams[f"{split}_annotation"])
        check_min_duration(dataset.data, hparams[f"{split}_annotation"])
        check_task_columns(dataset, columns, hparams[f"{split}_annotation"])
        max_len = hparams["max_len"] if split == "train" else None
        add_pipelines(
            dataset,
            label_set,
            vocab,
            max_len,
            hparams["features"],
            train=split == "train",
            encoder_cache=None if split == "test" else hparams["encoder_cache"],
            item_seeds=item_seeds if split == "train" else None,
            columns=columns,
        )
        datasets[split] = dataset
    assert_test_is_held_out(datasets)
    if hparams["sorting"] in ("ascending", "descending"):
        datasets["train"] = datasets["train"].filtered_sorted(
            sort_key="duration", reverse=hparams["sorting"] == "descending"
        )
    # The Brain sets the epoch of the training draws before each epoch.
    datasets["train"].item_seeds = item_seeds
    # Evaluation in duration order: neighbours in length make batches with little padding
    # (the encoder and heads are padding-aware, so every utterance's output and the metrics
    # are those of any other order). Longest first, as in training: a batch that does not
    # fit in memory fails at once, not at the end of the pass.
    if hparams["eval_order"] not in EVAL_ORDERS:
        raise ValueError(f"eval_order must be one of {EVAL_ORDERS}, not {hparams['eval_order']!r}")
    if hparams["eval_order"] == "duration":
        for split in ("valid", "test"):
            datasets[split] = datasets[split].filtered_sorted(sort_key="duration", reverse=True)
    return datasets


def worker_options(hparams: dict, options: dict, device) -> dict:
    """DataLoader ``options`` (e.g. ``eval_dataloader_opts``) with ``pin_memory`` and
    ``persistent_workers`` resolved from the hparams keys of those names, and a generator
    of the loader's own.

    ``pin_memory`` null: pinned on a CUDA device (asynchronous copies to the GPU).
    ``persistent_workers`` null: kept between epochs with ``num_workers > 0`` (training
    crops and augmentation draw per utterance and epoch, `ItemSeeds`, so a worker's history
    does not matter).
    ``generator``: a DataLoader draws its workers' base seed whenever it starts them; from
    the process's generator, that draw would shift every later random number of the main
    process (dropout, masks), and a resumed run starts its workers at another time than the
    uninterrupted one. A loader's own generator, seeded by ``seed``, keeps the process's
    streams untouched.
    """
    workers = options.get("num_workers", 0)  # DataLoader's default
    pin = hparams["pin_memory"]
    persistent = hparams["persistent_workers"]
    if pin is None:
        pin = torch.device(device).type == "cuda"
    if persistent is None:
        persistent = workers > 0
    elif persistent and workers == 0:
        raise ValueError("persistent_workers: True needs num_workers > 0")
    generator = torch.Generator().manual_seed(int(hparams["seed"]))
    return {**options, "pin_memory": pin, "persistent_workers": persistent, "generator": generator}


def eval_loader_options(hparams: dict, device="cpu") -> dict:
    """DataLoader options for validation and test: ``eval_dataloader_opts`` and
    `worker_options`."""
    return worker_options(hparams, hparams["eval_dataloader_opts"], device)


def train_loader_options(hparams: dict, train_data: DynamicItemDataset, device="cpu") -> dict:
    """DataLoader options for training: ``train_dataloader_opts`` and `worker_options`,
    batches by ``sorting``:

    - ``grouped``: `LengthGroupedBatchSampler`, ``batch_size`` utterances of similar
      (cropped) length per batch, from pools of ``group_pool`` batches, seeded by ``seed``;
    - ``random``: ``batch_size`` random utterances (SpeechBrain's seeded shuffling);
    - ``ascending`` / ``descending``: consecutive utterances of the sorted set;

    or, with ``dynamic_batching: True`` (which replaces ``sorting``), length-bucketed
    batches of at most ``max_batch_length`` seconds (after cropping to ``max_len``); or,
    with ``sampling: class_balanced``, `ClassBalancedBatchSampler` (grouped like ``grouped``).
    """
    options = worker_options(hparams, hparams["train_dataloader_opts"], device)
    batch_size = options.pop("batch_size")
    options.pop("shuffle", None)
    max_len = hparams["max_len"] or float("inf")
    if hparams["dynamic_batching"]:
        sampler = DynamicBatchSampler(
            train_data,
            max_batch_length=hparams["max_batch_length"],
            num_buckets=hparams["num_buckets"],
            length_func=lambda x: min(x["duration"], max_len),
            shuffle=True,
            batch_ordering="random",
            seed=hparams["seed"],
        )
        return {**options, "batch_sampler": distributed_batches(sampler)}
    # The random crop comes after batching, in the pipeline: what a batch pads to is
    # the cropped length.
    lengths = [min(train_data.data[i]["duration"], max_len) for i in train_data.data_ids]
    if hparams.get("sampling", "natural") == "class_balanced":
        if hparams["dynamic_batching"] or hparams["sorting"] != "grouped":
            raise ValueError(
                "sampling: class_balanced groups batches by length itself: it needs "
                "sorting: grouped and dynamic_batching: False"
            )
        labels = [train_data.data[i]["emo"] for i in train_data.data_ids]
        sampler = ClassBalancedBatchSampler(
            lengths, labels, batch_size, pool=hparams["group_pool"], seed=hparams["seed"]
        )
        return {**options, "batch_sampler": distributed_batches(sampler)}
    if hparams["sorting"] == "grouped":
        sampler = LengthGroupedBatchSampler(
            lengths, batch_size, pool=hparams["group_pool"], seed=hparams["seed"]
        )
        return {**options, "batch_sampler": distributed_batches(sampler, batch_size)}
    if ddp_world_size() == 1:
        return {**options, "batch_size": batch_size, "shuffle": hparams["sorting"] == "random"}
    # Under DDP, whole batches are dealt to the processes (sampler.DistributedBatches):
    # random batches seeded by ``seed`` (pools of one batch), or consecutive ones.
    if hparams["sorting"] == "random":
        sampler = LengthGroupedBatchSampler(lengths, batch_size, pool=1, seed=hparams["seed"])
    else:
        sampler = BatchSampler(SequentialSampler(range(len(lengths))), batch_size, False)
    return {**options, "batch_sampler": distributed_batches(sampler, batch_size)}

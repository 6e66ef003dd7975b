"""SpeechBrain datasets and pipelines: read -> 16 kHz mono -> crop (training) -> labels, tokens.

Dynamic items of every dataset:
    sig          ``[S]`` float waveform (16 kHz mono), the encoder input of the wav2vec2
                 recipes; or, when the recipe configures ``features`` (a
                 `mtl_ser.data.feature_cache.FeatureSource`), instead of it:
    feats        ``[T, F]`` features (log-mel for the CNN), cached or, for training samples
                 drawn for waveform augmentation, computed from the augmented waveform
    cropped      whether a training crop (of ``max_len`` seconds) cut the utterance
    emo_encoded  ``[1]`` class id in the label set's order
    tokens       ``[L]`` character ids of ``wrd`` (a single space when there is no text)
    ctc_mask     ``[1]`` bool: the utterance trains / scores CTC (has text and was not cropped,
                 since a crop no longer matches the full transcript)
Static keys passed through: id, wrd, has_text, scripted.
"""

from __future__ import annotations

from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import DynamicBatchSampler

from mtl_ser.data.audio import SAMPLE_RATE, load_audio
from mtl_ser.data.feature_cache import FeatureSource
from mtl_ser.data.labels import LabelSet
from mtl_ser.data.manifest import load_manifest
from mtl_ser.data.text import CharVocabulary

OUTPUT_KEYS = ["id", "emo_encoded", "tokens", "ctc_mask", "wrd", "has_text", "scripted"]


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


def add_pipelines(
    dataset: DynamicItemDataset,
    label_set: LabelSet,
    vocab: CharVocabulary,
    max_len: float | None,
    features: FeatureSource | None = None,
    train: bool = False,
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
    """

    if features is None:
        max_samples = None if max_len is None else int(max_len * SAMPLE_RATE)

        @sb.utils.data_pipeline.takes("wav")
        @sb.utils.data_pipeline.provides("sig", "cropped")
        def encoder_input(wav):
            return random_crop(load_audio(wav), max_samples)

    else:
        max_frames = None if max_len is None else int(max_len * features.frames_per_second)

        @sb.utils.data_pipeline.takes("wav")
        @sb.utils.data_pipeline.provides("feats", "cropped")
        def encoder_input(wav):
            # Cropped after the features: the cache holds whole utterances.
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
        yield vocab.encode(wrd) if wrd else vocab.encode(" ")
        yield torch.tensor([bool(has_text) and not cropped])

    for pipeline in (encoder_input, emotion, text):
        dataset.add_dynamic_item(pipeline)
    dataset.set_output_keys(OUTPUT_KEYS + ["sig" if features is None else "feats"])


def check_labels(dataset: DynamicItemDataset, label_set: LabelSet, name: str) -> None:
    """Raises ValueError naming the manifest's first utterances whose label is not a class."""
    bad = [
        f"{utt}: {data['emo']!r}"
        for utt, data in dataset.data.items()
        if data["emo"] not in label_set.classes
    ]
    if bad:
        raise ValueError(
            f"{name}: {len(bad)} label(s) outside {list(label_set.classes)}: {bad[:5]}"
        )


def assert_test_is_held_out(datasets: dict[str, DynamicItemDataset]) -> None:
    """The test utterances must not appear in train or valid (they would leak into
    training or checkpoint choice). Raises ValueError naming a few shared ids."""
    test = set(datasets["test"].data)
    for name in ("train", "valid"):
        shared = test & set(datasets[name].data)
        if shared:
            raise ValueError(
                f"{len(shared)} test utterance(s) also in {name}: {sorted(shared)[:5]}"
            )


def dataio_prep(hparams: dict, label_set: LabelSet, vocab: CharVocabulary) -> dict:
    """Builds the train / valid / test datasets of a recipe.

    Reads from hparams: ``train_annotation``, ``valid_annotation``, ``test_annotation``,
    ``data_folder``, ``max_len`` (seconds or null), ``sorting`` (random | ascending |
    descending), ``features`` (null: waveforms; or a `FeatureSource`).

    Returns: ``{"train", "valid", "test"}`` datasets (train sorted by duration unless random).
    """
    datasets = {}
    for split in ("train", "valid", "test"):
        dataset = load_dataset(hparams[f"{split}_annotation"], hparams["data_folder"])
        check_labels(dataset, label_set, hparams[f"{split}_annotation"])
        max_len = hparams["max_len"] if split == "train" else None
        add_pipelines(
            dataset, label_set, vocab, max_len, hparams["features"], train=split == "train"
        )
        datasets[split] = dataset
    assert_test_is_held_out(datasets)
    if hparams["sorting"] in ("ascending", "descending"):
        datasets["train"] = datasets["train"].filtered_sorted(
            sort_key="duration", reverse=hparams["sorting"] == "descending"
        )
        hparams["train_dataloader_opts"]["shuffle"] = False
    elif hparams["sorting"] != "random":
        raise ValueError(
            f"sorting must be random, ascending or descending, not {hparams['sorting']!r}"
        )
    return datasets


def train_loader_options(hparams: dict, train_data: DynamicItemDataset) -> dict:
    """DataLoader options for training: fixed batches (``train_dataloader_opts``) or, with
    ``dynamic_batching: True``, length-bucketed batches of at most ``max_batch_length``
    seconds (after cropping to ``max_len``)."""
    if not hparams["dynamic_batching"]:
        return hparams["train_dataloader_opts"]
    max_len = hparams["max_len"] or float("inf")
    sampler = DynamicBatchSampler(
        train_data,
        max_batch_length=hparams["max_batch_length"],
        num_buckets=hparams["num_buckets"],
        length_func=lambda x: min(x["duration"], max_len),
        shuffle=True,
        batch_ordering="random",
        seed=hparams["seed"],
    )
    options = {
        k: v
        for k, v in hparams["train_dataloader_opts"].items()
        if k not in ("batch_size", "shuffle")
    }
    return {**options, "batch_sampler": sampler}

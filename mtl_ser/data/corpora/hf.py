"""A Hugging Face `datasets` dataset -> manifests, through the same checks and split as CSVs.

The dataset is a folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``) or
a name ``datasets.load_dataset`` finds (its cache, or the hub when online). Columns are
named explicitly: audio and label are required; text, speaker and split are optional.

- audio: an ``Audio`` column (read undecoded: its stored bytes or file), a column of file
  paths, or ``{"array", "sampling_rate"}`` dicts. Each example's audio is written once
  under ``<output>/hf_audio/`` exactly as stored (so NaN / Inf samples are still caught);
  files that are not 16 kHz mono are then converted under ``<output>/audio_16k/``.
- label: strings, or integers of a ``ClassLabel`` column (its names are used).
- split: a column (values train / valid / test), else the splits of a ``DatasetDict``
  (train; validation, valid, dev or development; test), else seeded speaker groups
  (which need a speaker column).

Every example is checked like a CSV row (empty or unknown label, empty speaker, unreadable,
empty, non-finite or too short audio): an error naming the split and row, or skipped and
counted with ``on_error="skip"``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile

from mtl_ser.data.corpora.base import Scan, Split, prepare_corpus, safe_name
from mtl_ser.data.csv_corpus import table_split
from mtl_ser.data.labels import LabelSet, iemocap_label_set
from mtl_ser.progress import track

NAME = "hf"
EXTRACTED_FOLDER = "hf_audio"
SPLIT_NAMES = {
    "train": "train",
    "validation": "valid",
    "valid": "valid",
    "dev": "valid",
    "development": "valid",
    "test": "test",
}


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "`mtl-ser prepare hf` needs the `datasets` package: pip install 'mtl_ser[hf]' "
            "(or pip install datasets)"
        ) from None
    return datasets


def load_hf_dataset(name_or_path: str, config: str | None = None) -> dict:
    """Loads a dataset as ``{split name: Dataset}`` (``{"all": ds}`` for a single Dataset).

    A folder written by ``save_to_disk`` is read with ``load_from_disk`` (no network);
    anything else goes to ``datasets.load_dataset(name_or_path, config)``.
    """
    datasets = _datasets()
    path = Path(name_or_path)
    saved = any((path / name).is_file() for name in ("dataset_dict.json", "state.json"))
    if path.is_dir() and saved:
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(name_or_path, config)
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    return {"all": loaded}


def fingerprint(parts: dict) -> dict:
    """``{split: the dataset's own fingerprint}`` (a hash `datasets` keeps of its content and
    history): a changed dataset is prepared again."""
    return {name: getattr(ds, "_fingerprint", None) for name, ds in sorted(parts.items())}


def _undecoded(ds, column: str):
    """The dataset with an ``Audio`` column set not to decode (no torchcodec needed)."""
    datasets = _datasets()
    feature = ds.features.get(column)
    if isinstance(feature, datasets.Audio) and feature.decode:
        return ds.cast_column(column, datasets.Audio(decode=False))
    return ds


def _label_names(ds, column: str):
    """The names of a ClassLabel column, or None."""
    feature = ds.features.get(column)
    return getattr(feature, "names", None)


def _write_audio(value, target_stem: Path) -> Path:
    """Writes one example's audio as stored; returns the file. Raises ValueError for a value
    that holds no audio."""
    target_stem.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, str):
        value = {"path": value, "bytes": None}
    if not isinstance(value, dict):
        raise ValueError(f"audio value of type {type(value).__name__} (expected a file or bytes)")
    if value.get("array") is not None:
        if value.get("sampling_rate") is None:
            raise ValueError("an audio array without sampling_rate")
        target = target_stem.with_suffix(".wav")
        data = np.asarray(value["array"], dtype=np.float32)
        rate = int(value["sampling_rate"])
        soundfile.write(str(target), data.T if data.ndim == 2 else data, rate, subtype="FLOAT")
        return target
    if value.get("bytes"):
        suffix = Path(value.get("path") or "").suffix.lower() or _sniff(value["bytes"])
        target = target_stem.with_suffix(suffix)
        target.write_bytes(value["bytes"])
        return target
    if value.get("path"):
        source = Path(value["path"])
        if not source.is_file():
            raise ValueError(f"audio file not found: {source}")
        target = target_stem.with_suffix(source.suffix.lower() or ".wav")
        target.write_bytes(source.read_bytes())
        return target
    raise ValueError("no audio (neither bytes, nor a path, nor an array)")


def _sniff(data: bytes) -> str:
    try:
        return "." + soundfile.info(io.BytesIO(data)).format.lower()
    except Exception:  # unknown: kept as .bin, then refused as unreadable audio
        return ".bin"


def prepare_hf(
    dataset: str,
    output_folder: str | Path,
    audio_column: str,
    label_column: str,
    text_column: str | None = None,
    speaker_column: str | None = None,
    split_column: str | None = None,
    config: str | None = None,
    label_set: LabelSet | None = None,
    on_error: str = "fail",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 1234,
    allow_speaker_overlap: bool = False,
    verbose: bool = True,
) -> dict[str, Path]:
    """Writes train/valid/test manifests of a Hugging Face dataset (see the module docstring).

    Args:
        dataset: a ``save_to_disk`` folder or a name for ``datasets.load_dataset``.
        output_folder: where manifests, extracted and converted audio go.
        audio_column, label_column: required columns.
        text_column, speaker_column, split_column: optional columns.
        config: the dataset configuration (``load_dataset``'s second argument).
        label_set, on_error, valid_fraction, test_fraction, seed, allow_speaker_overlap,
            verbose: as for `mtl_ser.data.csv_corpus.prepare_csv`.

    Returns: ``{"train": Path, "valid": Path, "test": Path}``.
    """
    output_folder = Path(output_folder)
    label_set = label_set or iemocap_label_set()
    parts = load_hf_dataset(dataset, config)
    for name, ds in parts.items():
        wanted = [audio_column, label_column, text_column, speaker_column, split_column]
        missing = [c for c in wanted if c is not None and c not in ds.column_names]
        if missing:
            raise ValueError(
                f"{dataset} ({name}): no column(s) {missing}; columns: {ds.column_names}"
            )
    if split_column is None and len(parts) > 1:
        unknown = [n for n in parts if n not in SPLIT_NAMES]
        if unknown:
            raise ValueError(
                f"{dataset}: splits {unknown} are not one of {sorted(SPLIT_NAMES)}; "
                "give --split-column"
            )
    given_split = split_column is not None or len(parts) > 1
    options = {
        "corpus": NAME,
        "dataset": str(Path(dataset).resolve()) if Path(dataset).exists() else dataset,
        "config": config,
        "fingerprints": fingerprint(parts),
        "columns": {
            "audio": audio_column,
            "label": label_column,
            "text": text_column,
            "speaker": speaker_column,
            "split": split_column,
        },
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "allow_speaker_overlap": allow_speaker_overlap,
    }

    def scan() -> Scan:
        records, errors, total = [], [], 0
        for part, ds in parts.items():
            ds = _undecoded(ds, audio_column)
            names = _label_names(ds, label_column)
            for index, example in enumerate(
                track(ds, f"extracting audio ({part})", unit="example", enabled=verbose)
            ):
                total += 1
                utt_id = f"{part}/{index:06d}"
                where = f"{part} row {index}"
                try:
                    records.append(_record(example, utt_id, where, part, names, output_folder))
                except ValueError as err:
                    errors.append(f"{where}: {err}")
        return Scan(
            records,
            [f"Hugging Face dataset {dataset}: {total} examples in {sorted(parts)}"],
            errors,
            str(dataset),
            "example",
        )

    def _record(example, utt_id, where, part, names, out) -> dict:
        raw = example[label_column]
        if raw is None or raw == "":
            raise ValueError("empty emotion label")
        label = names[raw] if names is not None and isinstance(raw, int) else str(raw).strip()
        if label_set.map(label) is None:
            raise ValueError(
                f"emotion {label!r} is not in the label set {list(label_set.classes)} "
                "(give another set with --labels)"
            )
        speaker = str(example[speaker_column]).strip() if speaker_column else ""
        if speaker_column and not speaker:
            raise ValueError("empty speaker")
        split = None
        if split_column is not None:
            split = SPLIT_NAMES.get(str(example[split_column]).strip().lower())
            if split is None:
                raise ValueError(
                    f"split {example[split_column]!r} is not one of {sorted(SPLIT_NAMES)}"
                )
        elif len(parts) > 1:
            split = SPLIT_NAMES[part]
        source = _write_audio(example[audio_column], out / EXTRACTED_FOLDER / safe_name(utt_id))
        text = example[text_column] if text_column else ""
        return {
            "id": utt_id,
            "source": source,
            "where": where,
            "split": split,
            "label_raw": label,
            "transcript": "" if text is None else str(text),
            # Without a speaker column every example is its own (unknown) speaker.
            "spk": speaker or f"unknown:{utt_id}",
            "gender": None,
            "session": None,
            "dialog": None,
            "scripted": None,
        }

    def split(records: list[dict]) -> Split:
        origin = f"the column {split_column!r}" if split_column else "the dataset's splits"
        return table_split(
            records,
            given_split,
            str(dataset),
            origin,
            valid_fraction,
            test_fraction,
            seed,
            allow_speaker_overlap,
            speakers_known=speaker_column is not None,
            protocol=NAME,
        )

    return prepare_corpus(
        output_folder,
        options,
        label_set,
        scan,
        split,
        data_root=None,
        on_error=on_error,
        verbose=verbose,
    )

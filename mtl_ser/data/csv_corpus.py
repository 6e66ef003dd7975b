"""Bring-your-own corpus: a CSV of ``path, emotion, transcript, speaker, split`` -> manifests.

Columns ``path``, ``emotion`` and ``speaker`` are required; ``transcript`` and ``split``
(train / valid / test) are optional. Every row is checked; a bad row is either an error that
names its line and file (``on_error="fail"``, default) or skipped with one printed line naming
the file and the reason plus a final count (``on_error="skip"``). Nothing is dropped silently.

Audio of any rate and channel count is accepted: files that are not 16 kHz mono are
converted once into ``<output>/audio_16k/`` so training never resamples.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import soundfile
from tqdm import tqdm

from mtl_ser.data.audio import SAMPLE_RATE, load_audio
from mtl_ser.data.labels import LabelSet, iemocap_label_set
from mtl_ser.data.manifest import check_splits, is_prepared, summarize, write_prepared
from mtl_ser.data.protocols import SPLITS, speaker_group_split
from mtl_ser.data.text import NORMALIZATION_VERSION, normalize_transcript

REQUIRED_COLUMNS = ("path", "emotion", "speaker")
OPTIONAL_COLUMNS = ("transcript", "split")
CONVERTED_FOLDER = "audio_16k"


class RowError(ValueError):
    """A CSV row that cannot be used; the message names the line and the file."""


def _read_rows(csv_path: Path) -> tuple[list[dict], bool]:
    """Returns (rows with their line number under ``"_line"``, whether a split column exists)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"{csv_path}: missing column(s) {missing}; found {columns}; "
                f"required {list(REQUIRED_COLUMNS)}, optional {list(OPTIONAL_COLUMNS)}"
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            rows.append({**row, "_line": line})
    return rows, "split" in columns


def _relative(path: Path, audio_root: Path) -> str | None:
    """The path relative to the audio root, or None when it lies outside it."""
    try:
        return path.resolve().relative_to(audio_root.resolve()).as_posix()
    except ValueError:
        return None


def _row_record(row: dict, audio_root: Path, label_set: LabelSet, has_split: bool) -> dict:
    """Checks one row and builds its record (``id`` and ``split`` included).

    Raises RowError naming the line, the file and the reason.
    """
    where = f"line {row['_line']} ({row.get('path') or 'no path'})"
    if not row.get("path"):
        raise RowError(f"{where}: empty path")
    path = Path(row["path"])
    if not path.is_absolute():
        path = audio_root / path
    if not row.get("emotion"):
        raise RowError(f"{where}: empty emotion label")
    label = label_set.map(row["emotion"])
    if label is None:
        raise RowError(
            f"{where}: emotion {row['emotion']!r} is not in the label set "
            f"{list(label_set.classes)} (give another set with --labels)"
        )
    if not row.get("speaker"):
        raise RowError(f"{where}: empty speaker")
    split = row.get("split", "").lower() if has_split else None
    if has_split and split not in SPLITS:
        raise RowError(f"{where}: split {row.get('split')!r} is not one of {list(SPLITS)}")
    if not path.is_file():
        raise RowError(f"{where}: file not found: {path}")
    try:
        info = soundfile.info(str(path))
    except Exception as err:  # soundfile raises several types for broken files
        raise RowError(f"{where}: unreadable audio: {err}") from None
    if info.frames <= 0:
        raise RowError(f"{where}: empty audio (no samples)")
    relative = _relative(path, audio_root)
    utt_id = (relative or path.as_posix().lstrip("/")).rsplit(".", 1)[0]
    wrd = normalize_transcript(row.get("transcript", ""))
    return {
        "id": utt_id,
        "split": split,
        "source": path,
        "needs_conversion": info.samplerate != SAMPLE_RATE or info.channels != 1,
        "wav": "{data_root}/" + relative if relative else str(path.resolve()),
        "duration": round(info.frames / info.samplerate, 4),
        "emo": label,
        "label_raw": row["emotion"],
        "wrd": wrd,
        "transcript": row.get("transcript", ""),
        "has_text": bool(wrd),
        "spk": row["speaker"],
        "gender": None,
        "session": None,
        "dialog": None,
        "scripted": None,
    }


def _convert(records: list[dict], output_folder: Path, progress: bool) -> None:
    """Writes 16 kHz mono copies of the records that need them and points ``wav`` at them.

    A copy newer than its source is reused (conversion happens once per file).
    """
    todo = [r for r in records if r["needs_conversion"]]
    for record in tqdm(todo, desc="converting to 16 kHz mono", disable=not progress, unit="file"):
        target = output_folder / CONVERTED_FOLDER / f"{record['id']}.wav"
        if not target.is_file() or target.stat().st_mtime < record["source"].stat().st_mtime:
            target.parent.mkdir(parents=True, exist_ok=True)
            waveform = load_audio(record["source"], SAMPLE_RATE)
            soundfile.write(str(target), waveform.numpy(), SAMPLE_RATE, subtype="PCM_16")
        record["wav"] = "{manifest_root}/" + f"{CONVERTED_FOLDER}/{record['id']}.wav"


def prepare_csv(
    csv_path: str | Path,
    audio_root: str | Path,
    output_folder: str | Path,
    label_set: LabelSet | None = None,
    on_error: str = "fail",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 1234,
    allow_speaker_overlap: bool = False,
    verbose: bool = True,
) -> dict[str, Path]:
    """Writes train/valid/test manifests of a CSV-described corpus.

    Args:
        csv_path: the CSV (columns path, emotion, speaker, [transcript], [split]).
        audio_root: folder that relative ``path`` values start from.
        output_folder: where manifests, labels.json, options, summary (and converted audio) go.
        label_set: allowed classes in their order; default the IEMOCAP 4 classes (neu, hap,
            ang, sad; exc merged into hap).
        on_error: "fail" (raise listing every bad row) or "skip" (print and count them).
        valid_fraction, test_fraction: speaker fractions when there is no split column.
        seed: seed of the speaker split.
        allow_speaker_overlap: accept a split column that puts a test speaker in train/valid
            (the summary then says the split is speaker-overlapping).
        verbose: print progress and the summary.

    Returns: ``{"train": Path, "valid": Path, "test": Path}``.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    csv_path, audio_root, output_folder = Path(csv_path), Path(audio_root), Path(output_folder)
    if not csv_path.is_file():
        raise FileNotFoundError(f"no CSV file at {csv_path}")
    if not audio_root.is_dir():
        raise FileNotFoundError(f"audio root {audio_root} is not a folder")
    label_set = label_set or iemocap_label_set()
    options = {
        "corpus": "csv",
        "csv": str(csv_path.resolve()),
        "csv_sha1": hashlib.sha1(csv_path.read_bytes()).hexdigest(),
        "audio_root": str(audio_root.resolve()),
        "labels": label_set.to_dict(),
        "on_error": on_error,
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "allow_speaker_overlap": allow_speaker_overlap,
        "normalization": NORMALIZATION_VERSION,
    }
    if is_prepared(output_folder, options):
        if verbose:
            print(f"{output_folder}: already prepared with the same options, skipping")
        return {s: output_folder / f"{s}.json" for s in SPLITS}

    rows, has_split = _read_rows(csv_path)
    records, errors, seen = [], [], {}
    for row in tqdm(rows, desc="checking rows", disable=not verbose, unit="row"):
        try:
            record = _row_record(row, audio_root, label_set, has_split)
            if record["id"] in seen:
                raise RowError(
                    f"line {row['_line']} ({row['path']}): same file as line {seen[record['id']]}"
                )
        except RowError as err:
            errors.append(str(err))
            continue
        seen[record["id"]] = row["_line"]
        records.append(record)
    if errors and on_error == "fail":
        raise ValueError(
            f"{csv_path}: {len(errors)} bad row(s) (use --on-error skip to skip them):\n  "
            + "\n  ".join(errors)
        )
    for error in errors:
        print(f"skipped {error}")
    header = [
        f"corpus: {csv_path} ({len(rows)} rows)",
        f"skipped rows: {len(errors)}",
        "raw labels kept: " + ", ".join(f"{k} {v}" for k, v in sorted(_raw_counts(records))),
    ]
    _convert(records, output_folder, verbose)

    if has_split:
        raw_splits = {s: [r for r in records if r["split"] == s] for s in SPLITS}
        test_spk = {r["spk"] for r in raw_splits["test"]}
        overlap = test_spk & {r["spk"] for r in raw_splits["train"] + raw_splits["valid"]}
        if overlap and not allow_speaker_overlap:
            raise ValueError(
                f"{csv_path}: test speakers also in train/valid: {sorted(overlap)}; "
                "fix the split column or pass --allow-speaker-overlap"
            )
        header.append(
            "split: from the CSV's split column"
            + ("; SPEAKER-OVERLAPPING" if overlap else "; speaker-independent")
        )
        speaker_independent = not overlap
    else:
        raw_splits = speaker_group_split(records, valid_fraction, test_fraction, seed)
        header.append(f"split: seeded speaker groups (seed {seed}); speaker-independent")
        speaker_independent = True

    drop = ("id", "split", "source", "needs_conversion")
    splits = {
        s: {r["id"]: {k: v for k, v in r.items() if k not in drop} for r in raw_splits[s]}
        for s in SPLITS
    }
    check_splits(
        splits,
        label_set,
        speaker_independent,
        roots={"data_root": audio_root.resolve(), "manifest_root": output_folder.resolve()},
    )
    summary = summarize(splits, label_set, header)
    paths = write_prepared(output_folder, splits, label_set, options, summary)
    if verbose:
        print(summary)
    return paths


def _raw_counts(records: list[dict]) -> list[tuple[str, int]]:
    return sorted(Counter(r["label_raw"] for r in records).items())

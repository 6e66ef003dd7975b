"""Bring-your-own corpus: a CSV of ``path, emotion, transcript, speaker, split`` -> manifests.

Columns ``path``, ``emotion`` and ``speaker`` are required; ``transcript`` and ``split``
(train / valid / test) are optional. Every row is checked; a bad row is either an error that
names its line and file (``on_error="fail"``, default) or skipped with one printed line naming
the file and the reason plus a final count (``on_error="skip"``). Nothing is dropped silently:
a row with more fields than the header (an unquoted comma in a transcript would otherwise cut
it short) or fewer is a bad row too.

Paths are relative to the audio root (or absolute inside it); a path that leads outside the
audio root is a bad row unless ``allow_outside_root`` is set. Audio of any rate and channel
count is accepted: files that are not 16 kHz mono are converted once into
``<output>/audio_16k/``, so training never resamples; nothing is written outside the output
folder.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from mtl_ser.data.corpora.base import Scan, Split, prepare_corpus
from mtl_ser.data.labels import LabelSet, iemocap_label_set
from mtl_ser.data.manifest import speaker_overlap
from mtl_ser.data.protocols import SPLITS, speaker_group_split

REQUIRED_COLUMNS = ("path", "emotion", "speaker")
OPTIONAL_COLUMNS = ("transcript", "split")


class RowError(ValueError):
    """A CSV row that cannot be used; the message names the line and the file."""


def read_rows(
    csv_path: Path, required: tuple[str, ...] = REQUIRED_COLUMNS
) -> tuple[list[dict], list[str]]:
    """Reads a CSV with a header line.

    Returns: (rows as {column: stripped value, "_line": line number, "_fields": how many
    fields the line had}, the header's columns). Raises ValueError naming the file (and the
    line) for missing columns, no data row, text that is not UTF-8 or a malformed field.
    """
    try:
        rows, header = _read_rows(csv_path, required)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{csv_path}, line {_first_undecodable_line(csv_path)}: not UTF-8 text (byte "
            f"0x{err.object[err.start]:02x}: {err.reason}); save the CSV as UTF-8"
        ) from None
    if not rows:
        raise ValueError(f"{csv_path}: no data row below the header; add one row per recording")
    return rows, header


def _first_undecodable_line(path: Path) -> int:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


def _read_rows(csv_path: Path, required: tuple[str, ...]) -> tuple[list[dict], list[str]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [c.strip() for c in next(reader)]
        except StopIteration:
            raise ValueError(f"{csv_path}: empty file (no header line)") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(
                f"{csv_path}: missing column(s) {missing}; found {header}; "
                f"required {list(required)}, optional "
                f"{[c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c not in required]}"
            )
        rows = []
        try:
            for fields in reader:
                if not fields:  # blank line
                    continue
                row = {c: v.strip() for c, v in zip(header, fields, strict=False)}
                rows.append({**row, "_line": reader.line_num, "_fields": len(fields)})
        except csv.Error as err:  # e.g. a field over csv.field_size_limit()
            raise ValueError(
                f"{csv_path}, line {reader.line_num}: {err} (a double quote left open?)"
            ) from None
    return rows, header


def field_count_error(row: dict, header: list[str]) -> str | None:
    """The reason a row has the wrong number of fields, or None."""
    n = row["_fields"]
    if n > len(header):
        return (
            f"{n} fields where the header has {len(header)} (an unquoted comma in a "
            'transcript? put such fields in double quotes: "Oh, no")'
        )
    if n < len(header):
        return f"{n} fields where the header has {len(header)}"
    return None


def row_where(row: dict) -> str:
    return f"line {row['_line']} ({row.get('path') or 'no path'})"


def resolve_row_path(row: dict, audio_root: Path, allow_outside_root: bool) -> tuple[Path, str]:
    """The row's audio file and its utterance id (its path below the audio root without
    extension). Raises RowError for an empty path, a path leading outside the audio root
    (unless allowed) or a missing file."""
    where = row_where(row)
    if not row.get("path"):
        raise RowError(f"{where}: empty path")
    path = Path(row["path"])
    if not path.is_absolute():
        path = audio_root / path
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError) as err:  # a symbolic link loop
        raise RowError(f"{where}: cannot follow {path} ({err})") from None
    try:
        relative = resolved.relative_to(audio_root.resolve()).as_posix()
    except ValueError:
        relative = None
        if not allow_outside_root:
            raise RowError(
                f"{where}: path leads outside the audio root {audio_root} (pass "
                "--allow-outside-root to accept it)"
            ) from None
    if not path.is_file():
        raise RowError(f"{where}: file not found: {path}")
    utt_id = (relative or resolved.as_posix().lstrip("/")).rsplit(".", 1)[0]
    return path, utt_id


def _row_record(
    row: dict,
    header: list[str],
    audio_root: Path,
    label_set: LabelSet,
    has_split: bool,
    allow_outside_root: bool,
) -> dict:
    """Checks one row and builds its scanned record (see `mtl_ser.data.corpora.base`).

    Raises RowError naming the line, the file and the reason.
    """
    where = row_where(row)
    wrong_count = field_count_error(row, header)
    if wrong_count:
        raise RowError(f"{where}: {wrong_count}")
    if not row.get("emotion"):
        raise RowError(f"{where}: empty emotion label")
    if label_set.map(row["emotion"]) is None:
        raise RowError(
            f"{where}: emotion {row['emotion']!r} is not in the label set "
            f"{list(label_set.classes)} (give another set with --labels)"
        )
    if not row.get("speaker"):
        raise RowError(f"{where}: empty speaker")
    split = row.get("split", "").lower() if has_split else None
    if has_split and split not in SPLITS:
        raise RowError(f"{where}: split {row.get('split')!r} is not one of {list(SPLITS)}")
    path, utt_id = resolve_row_path(row, audio_root, allow_outside_root)
    return {
        "id": utt_id,
        "source": path,
        "where": where,
        "split": split,
        "label_raw": row["emotion"],
        "transcript": row.get("transcript", ""),
        "spk": row["speaker"],
        "gender": None,
        "session": None,
        "dialog": None,
        "scripted": None,
    }


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
    allow_outside_root: bool = False,
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
            (the summary and the run identities then say the split is speaker-overlapping).
        allow_outside_root: accept paths that lead outside the audio root (they are then
            stored as absolute paths and the manifests are not relocatable).
        verbose: print progress and the summary.

    Returns: ``{"train": Path, "valid": Path, "test": Path}``.
    """
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
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "allow_speaker_overlap": allow_speaker_overlap,
        "allow_outside_root": allow_outside_root,
    }
    has_split = []

    def scan() -> Scan:
        rows, header = read_rows(csv_path)
        has_split.append("split" in header)
        records, errors, seen = [], [], {}
        for row in rows:
            try:
                record = _row_record(
                    row, header, audio_root, label_set, has_split[0], allow_outside_root
                )
                if record["id"] in seen:
                    raise RowError(f"{row_where(row)}: same file as line {seen[record['id']]}")
            except RowError as err:
                errors.append(str(err))
                continue
            seen[record["id"]] = row["_line"]
            records.append(record)
        return Scan(
            records, [f"corpus: {csv_path} ({len(rows)} rows)"], errors, str(csv_path), "row"
        )

    def split(records: list[dict]) -> Split:
        return table_split(
            records,
            has_split[0],
            str(csv_path),
            "the CSV's split column",
            valid_fraction,
            test_fraction,
            seed,
            allow_speaker_overlap,
        )

    return prepare_corpus(
        output_folder,
        options,
        label_set,
        scan,
        split,
        data_root=audio_root,
        on_error=on_error,
        verbose=verbose,
    )


def table_split(
    records: list[dict],
    has_split: bool,
    source: str,
    split_origin: str,
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    allow_speaker_overlap: bool,
    speakers_known: bool = True,
    protocol: str = "csv",
) -> Split:
    """The split of a table-like corpus (a CSV, a Hugging Face dataset).

    With a split given per record (``record["split"]``), that split, refused when a test
    speaker is also in train / valid unless ``allow_speaker_overlap``; without, seeded
    speaker groups (`mtl_ser.data.protocols.speaker_group_split`).

    Args:
        records: scanned records (``split`` set when ``has_split``).
        has_split: whether the records come split.
        source: names the corpus in errors.
        split_origin: says where the split came from in the summary ("the CSV's split column").
        valid_fraction, test_fraction, seed: for speaker groups.
        allow_speaker_overlap: accept a given split that shares speakers.
        speakers_known: False when there was no speaker information (every record its own
            speaker): the split is then not claimed to be speaker-independent.

        protocol: the protocol's name in run identities ("csv", "hf").

    Returns: a `Split`, fold 1 of 1.
    """
    if has_split:
        splits = {s: [r for r in records if r["split"] == s] for s in SPLITS}
        overlap = speaker_overlap(splits)
        if overlap and not allow_speaker_overlap:
            raise ValueError(
                f"{source}: test speakers also in train/valid: {overlap}; "
                "fix the split column or pass --allow-speaker-overlap"
            )
        independent = not overlap and speakers_known
        if overlap:
            state = "SPEAKER-OVERLAPPING"
        elif speakers_known:
            state = "speaker-independent"
        else:
            state = "speakers unknown: NOT checked for speaker independence"
        return Split(splits, protocol, 1, 1, independent, f"split: from {split_origin}; {state}")
    if not speakers_known:
        raise ValueError(
            f"{source}: without speakers a split cannot be made speaker-independent: give a "
            "speaker column or a split column"
        )
    return Split(
        speaker_group_split(records, valid_fraction, test_fraction, seed),
        protocol=protocol,
        fold=1,
        folds=1,
        speaker_independent=True,
        description=f"split: seeded speaker groups (seed {seed}); speaker-independent",
    )

"""MSP-Podcast (Lotfian & Busso): ``Audios/``, ``Labels/labels_consensus.csv``, ``Transcripts/``.

``labels_consensus.csv`` has one row per segment with columns FileName, EmoClass, EmoAct,
EmoVal, EmoDom, SpkrID, Gender and Split_Set (Train, Development, Test1, Test2; later
releases add sets such as Test3). Consensus classes: A angry, S sad, H happy, U surprise,
F fear, D disgust, C contempt, N neutral, O other, X no agreement (dropped and counted, like
IEMOCAP's xxx). ``Transcripts/<name>.txt`` holds a segment's transcript; a segment without one
stays for emotion, with no text (``has_text`` false), and is counted.

The protocol is the corpus's own split: Train -> train, Development -> valid, and the chosen
test set (Test1 by default, or Test2) -> test; other sets are left out and counted. Speakers
named "Unknown" are not one speaker: each such segment counts as its own speaker
(``unknown:<segment>``), so they neither trigger nor hide speaker-overlap checks.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

from mtl_ser.data.corpora.base import Scan, Split, choose_label_set, prepare_corpus
from mtl_ser.data.labels import IEMOCAP_CLASSES, LabelSet
from mtl_ser.data.manifest import speaker_overlap

NAME = "msp-podcast"
AUDIO_FOLDER = "Audios"
LABELS_FILE = "Labels/labels_consensus.csv"
TRANSCRIPT_FOLDER = "Transcripts"
COLUMNS = ("FileName", "EmoClass", "SpkrID", "Gender", "Split_Set")
DIMENSIONS = {"EmoAct": "arousal", "EmoVal": "valence", "EmoDom": "dominance"}
CLASSES = {
    "A": "ang",
    "S": "sad",
    "H": "hap",
    "U": "sur",
    "F": "fea",
    "D": "dis",
    "C": "con",
    "N": "neu",
    "O": "oth",
    "X": "xxx",
}
SPLIT_SETS = {"Train": "train", "Development": "valid"}
TEST_SETS = ("Test1", "Test2", "Test3")
UNKNOWN_SPEAKER = "Unknown"


def label_sets() -> dict[str, LabelSet]:
    """``all``: the eight primary emotions (O other and X no agreement dropped and
    counted); ``4class``: neu, hap, ang, sad."""
    return {
        "all": LabelSet(("neu", "hap", "ang", "sad", "sur", "fea", "dis", "con")),
        "4class": LabelSet(IEMOCAP_CLASSES),
    }


def _labels_path(root: Path) -> Path:
    path = root / LABELS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {LABELS_FILE} in {root.resolve()} (MSP-Podcast layout)")
    return path


def _number(text: str):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def scan_msp_podcast(root: Path, test_set: str = "Test1") -> Scan:
    """Reads the labels of an MSP-Podcast copy and finds each segment's audio and transcript.

    Returns: a `Scan` whose records carry a ``split`` hint; rows with an unknown EmoClass or
    Split_Set are bad rows; segments of other test sets, label rows without audio, audio
    without label rows and missing transcripts are counted in its lines.
    """
    labels_path = _labels_path(root)
    audio = root / AUDIO_FOLDER
    if not audio.is_dir():
        raise FileNotFoundError(f"no {AUDIO_FOLDER} folder in {root.resolve()}")
    wavs = {p.name: p for p in audio.glob("*.wav")}
    records, errors, left_out, no_text, no_wav, seen = [], [], Counter(), 0, [], set()
    with open(labels_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{labels_path}: missing column(s) {missing}; need {list(COLUMNS)}")
        for row in reader:
            name = (row["FileName"] or "").strip()
            where = f"{LABELS_FILE} line {reader.line_num} ({name or 'no FileName'})"
            code, split_set = (row["EmoClass"] or "").strip(), (row["Split_Set"] or "").strip()
            if code not in CLASSES:
                errors.append(f"{where}: EmoClass {code!r} is not one of {list(CLASSES)}")
                continue
            if split_set not in SPLIT_SETS and split_set not in TEST_SETS:
                allowed = [*SPLIT_SETS, *TEST_SETS]
                errors.append(f"{where}: Split_Set {split_set!r} is not one of {allowed}")
                continue
            if name in seen:
                errors.append(f"{where}: FileName listed twice")
                continue
            seen.add(name)
            if split_set in TEST_SETS and split_set != test_set:
                left_out[split_set] += 1
                continue
            if name not in wavs:
                no_wav.append(name)
                continue
            stem = Path(name).stem
            transcript_path = root / TRANSCRIPT_FOLDER / f"{stem}.txt"
            if transcript_path.is_file():
                transcript = transcript_path.read_text(encoding="utf-8", errors="replace")
                transcript = " ".join(transcript.split())
            else:
                transcript = ""
                no_text += 1
            speaker = (row["SpkrID"] or "").strip()
            gender = (row["Gender"] or "").strip()
            records.append(
                {
                    "id": stem,
                    "source": wavs[name],
                    "where": f"{AUDIO_FOLDER}/{name}",
                    "split": SPLIT_SETS.get(split_set, "test"),
                    "label_raw": CLASSES[code],
                    "transcript": transcript,
                    # Unknown speakers are unknown, not one speaker.
                    "spk": f"unknown:{stem}" if speaker in ("", UNKNOWN_SPEAKER) else speaker,
                    "gender": {"Male": "M", "Female": "F"}.get(gender),
                    "split_set": split_set,
                    **{key: _number(row.get(column)) for column, key in DIMENSIONS.items()},
                    "scripted": False,  # spontaneous podcast speech
                }
            )
    unlabelled = len(set(wavs) - seen)
    lines = [
        f"MSP-Podcast label rows: {len(seen)}; used sets: Train, Development, {test_set}",
        "left out (other test sets): "
        + (", ".join(f"{k} {v}" for k, v in sorted(left_out.items())) or "none"),
        f"label rows without audio: {len(no_wav)}"
        + (f": {', '.join(no_wav[:5])}" if no_wav else ""),
        f"audio files without a label row: {unlabelled}",
        f"segments without a transcript file (kept for SER, no text): {no_text}",
        f"segments of unknown speakers (each its own speaker): "
        f"{sum(r['spk'].startswith('unknown:') for r in records)}",
    ]
    return Scan(records, lines, errors, str(labels_path), "row")


def prepare_msp_podcast(
    data_folder: str | Path,
    output_folder: str | Path,
    test_set: str = "Test1",
    label_set: str = "all",
    allow_speaker_overlap: bool = False,
    on_error: str = "fail",
    verbose: bool = True,
) -> dict[str, Path]:
    """Writes train/valid/test manifests of MSP-Podcast's own split.

    Args:
        data_folder: the release folder (``Audios/``, ``Labels/``, ``Transcripts/``).
        output_folder: where manifests etc. go.
        test_set: "Test1" or "Test2" (any test set named in Split_Set).
        label_set: "all" (8 primary emotions) or "4class" (neu, hap, ang, sad).
        allow_speaker_overlap: accept known speakers shared by test and train/valid (the
            split is then labelled speaker-overlapping); refused by default.
        on_error: "fail" or "skip" bad rows and files (see `mtl_ser.data.corpora.base`).
        verbose: progress and summary.

    Returns: ``{"train": Path, "valid": Path, "test": Path}``.
    """
    root = Path(data_folder)
    labels = choose_label_set(label_sets(), label_set)
    if test_set not in TEST_SETS:
        raise ValueError(f"test set {test_set!r} is not one of {list(TEST_SETS)}")
    labels_path = _labels_path(root)
    protocol = f"msp_podcast_{test_set.lower()}"
    options = {
        "corpus": NAME,
        "data_folder": str(root.resolve()),
        "labels_sha1": hashlib.sha1(labels_path.read_bytes()).hexdigest(),
        "audio_files": len(list((root / AUDIO_FOLDER).glob("*.wav"))),
        "transcript_files": len(list((root / TRANSCRIPT_FOLDER).glob("*.txt"))),
        "protocol": protocol,
        "test_set": test_set,
        "label_set": label_set,
        "allow_speaker_overlap": allow_speaker_overlap,
    }

    def split(records: list[dict]) -> Split:
        splits = {
            name: sorted((r for r in records if r["split"] == name), key=lambda r: r["id"])
            for name in ("train", "valid", "test")
        }
        overlap = speaker_overlap(splits)
        if overlap and not allow_speaker_overlap:
            raise ValueError(
                f"{root}: speakers of {test_set} also in Train/Development: {overlap[:10]}"
                + (f" (+{len(overlap) - 10} more)" if len(overlap) > 10 else "")
                + "; pass --allow-speaker-overlap to accept a speaker-overlapping split"
            )
        description = (
            f"{protocol}: MSP-Podcast's own split (train = Train, valid = Development, "
            f"test = {test_set}); "
            + (f"SPEAKER-OVERLAPPING ({len(overlap)} speakers)" if overlap else "")
            + ("" if overlap else "speaker-independent (unknown speakers counted apart)")
        )
        return Split(splits, protocol, 1, 1, not overlap, description)

    return prepare_corpus(
        output_folder,
        options,
        labels,
        lambda: scan_msp_podcast(root, test_set),
        split,
        data_root=root,
        on_error=on_error,
        verbose=verbose,
    )

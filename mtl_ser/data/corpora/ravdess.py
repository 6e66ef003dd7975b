"""RAVDESS (Livingstone & Russo 2018), speech audio: ``Actor_NN/03-01-EE-II-SS-RR-AA.wav``.

File names follow the corpus's documentation exactly: seven two-digit fields,
modality - vocal channel - emotion - intensity - statement - repetition - actor:

- modality: 01 full-AV, 02 video-only, 03 audio-only (only 03 holds audio);
- vocal channel: 01 speech, 02 song (refused by default, skipped with ``songs="skip"``);
- emotion: 01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust,
  08 surprised; intensity: 01 normal, 02 strong (neutral has no strong intensity);
- statement: 01 "Kids are talking by the door", 02 "Dogs are sitting by the door";
- repetition: 01 or 02; actor: 01-24, odd = male, even = female, equal to its folder's.

A ``.wav`` whose name breaks any of these rules is a bad file, named with the rule it breaks.
Folds: actors dealt into ``folds`` speaker-independent folds balanced by gender
(`mtl_ser.data.protocols.speaker_folds`); fold k tests on its actors, validates on fold k+1's.
"""

from __future__ import annotations

import re
from pathlib import Path

from mtl_ser.data.corpora.base import Scan, choose_label_set, prepare_actor_folds
from mtl_ser.data.labels import IEMOCAP_CLASSES, LabelSet

NAME = "ravdess"
PROTOCOL = "ravdess_actors"
ACTORS = range(1, 25)
EMOTIONS = {
    "01": "neu",
    "02": "cal",
    "03": "hap",
    "04": "sad",
    "05": "ang",
    "06": "fea",
    "07": "dis",
    "08": "sur",
}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
INTENSITIES = {"01": "normal", "02": "strong"}
SONG_POLICIES = ("refuse", "skip")
DEFAULT_FOLDS = 6  # 4 actors (2 female, 2 male) per fold

_FOLDER = re.compile(r"Actor_(\d\d)")
_NAME = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav")


def label_sets() -> dict[str, LabelSet]:
    """``all``: the eight RAVDESS emotions; ``4class``: neu, hap, ang, sad (others dropped
    and counted; calm is not merged into neutral)."""
    return {
        "all": LabelSet(("neu", "cal", "hap", "sad", "ang", "fea", "dis", "sur")),
        "4class": LabelSet(IEMOCAP_CLASSES),
    }


def parse_name(name: str, folder_actor: int) -> dict:
    """Parses one file name of an ``Actor_NN`` folder.

    Returns: {"channel": "speech" | "song", "label_raw", "intensity", "statement",
    "repetition", "actor"}. Raises ValueError saying which rule the name breaks.
    """
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(
            "not a RAVDESS name (modality-channel-emotion-intensity-statement-repetition-actor, "
            "seven two-digit fields, e.g. 03-01-05-02-01-01-12.wav)"
        )
    modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
    if modality != "03":
        raise ValueError(f"modality {modality} is not 03 (audio-only)")
    if channel not in ("01", "02"):
        raise ValueError(f"vocal channel {channel} is not 01 (speech) or 02 (song)")
    if emotion not in EMOTIONS:
        raise ValueError(f"emotion {emotion} is not one of 01-08")
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity {intensity} is not 01 (normal) or 02 (strong)")
    if emotion == "01" and intensity == "02":
        raise ValueError("neutral (01) has no strong intensity (02)")
    if statement not in STATEMENTS:
        raise ValueError(f"statement {statement} is not 01 or 02")
    if repetition not in ("01", "02"):
        raise ValueError(f"repetition {repetition} is not 01 or 02")
    if int(actor) not in ACTORS:
        raise ValueError(f"actor {actor} is not in 01-24")
    if int(actor) != folder_actor:
        raise ValueError(f"actor {actor} in the name, but the folder is Actor_{folder_actor:02d}")
    return {
        "channel": "speech" if channel == "01" else "song",
        "label_raw": EMOTIONS[emotion],
        "intensity": INTENSITIES[intensity],
        "statement": statement,
        "repetition": int(repetition),
        "actor": int(actor),
    }


def _actor_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.glob("Actor_*") if p.is_dir())
    if not folders:
        raise FileNotFoundError(
            f"no RAVDESS actor folder (Actor_01 ... Actor_24) in {root.resolve()}"
        )
    return folders


def scan_ravdess(root: Path, songs: str = "refuse") -> Scan:
    """Reads every ``Actor_NN/*.wav`` of a RAVDESS copy.

    Returns: a `Scan`; names that break the convention, song files (unless ``songs="skip"``)
    and folders not named ``Actor_NN`` (01-24) are bad files; skipped songs and ignored
    non-wav files are counted in its lines.
    """
    records, errors, songs_skipped, ignored = [], [], 0, []
    for folder in _actor_folders(root):
        match = _FOLDER.fullmatch(folder.name)
        if match is None or int(match[1]) not in ACTORS:
            errors.append(f"{folder.name}/: not an actor folder (Actor_01 ... Actor_24)")
            continue
        for path in sorted(folder.iterdir()):
            where = f"{folder.name}/{path.name}"
            if path.name.startswith("._") or path.suffix.lower() != ".wav":
                ignored.append(where)
                continue
            try:
                facts = parse_name(path.name, int(match[1]))
            except ValueError as err:
                errors.append(f"{where}: {err}")
                continue
            if facts["channel"] == "song":
                if songs == "skip":
                    songs_skipped += 1
                else:
                    errors.append(
                        f"{where}: a song (vocal channel 02); prepare speech only or pass "
                        "--songs skip"
                    )
                continue
            actor = facts["actor"]
            records.append(
                {
                    "id": path.stem,
                    "source": path,
                    "where": where,
                    "label_raw": facts["label_raw"],
                    "transcript": STATEMENTS[facts["statement"]],
                    "spk": f"Actor_{actor:02d}",
                    "gender": "M" if actor % 2 else "F",
                    "intensity": facts["intensity"],
                    "statement": facts["statement"],
                    "repetition": facts["repetition"],
                    # Two fixed sentences read by every actor: WER on them is not the
                    # recognition of unseen speech (report wer_improvised for that: none here).
                    "scripted": True,
                }
            )
    lines = [
        f"RAVDESS speech files: {len(records)} from {len({r['spk'] for r in records})} actors",
        f"song files skipped (--songs skip): {songs_skipped}",
    ]
    if ignored:
        lines.append(f"ignored (not .wav or macOS ._*): {len(ignored)}: {', '.join(ignored[:5])}")
    return Scan(records, lines, errors, str(root), "file")


def prepare_ravdess(
    data_folder: str | Path,
    output_folder: str | Path,
    fold: int = 1,
    folds: int = DEFAULT_FOLDS,
    label_set: str = "all",
    songs: str = "refuse",
    on_error: str = "fail",
    verbose: bool = True,
) -> dict[str, Path]:
    """Writes train/valid/test manifests of one actor fold of RAVDESS (speech).

    Args:
        data_folder: the folder holding ``Actor_01`` ... ``Actor_24``.
        output_folder: where manifests etc. go; the 48 kHz files are converted to 16 kHz
            under it once.
        fold, folds: which of ``folds`` actor folds tests (see the module docstring).
        label_set: "all" (8 emotions) or "4class" (neu, hap, ang, sad).
        songs: "refuse" song files (vocal channel 02) as bad files, or "skip" and count them.
        on_error: "fail" or "skip" bad files (see `mtl_ser.data.corpora.base`).
        verbose: progress and summary.

    Returns: ``{"train": Path, "valid": Path, "test": Path}``.
    """
    root = Path(data_folder)
    labels = choose_label_set(label_sets(), label_set)
    if songs not in SONG_POLICIES:
        raise ValueError(f"songs must be one of {SONG_POLICIES}, got {songs!r}")
    files = [p for folder in _actor_folders(root) for p in folder.glob("*.wav")]
    options = {"corpus": NAME, "protocol": PROTOCOL, "label_set": label_set, "songs": songs}
    return prepare_actor_folds(
        output_folder,
        options,
        labels,
        lambda: scan_ravdess(root, songs),
        root,
        files,
        fold,
        folds,
        on_error=on_error,
        verbose=verbose,
    )

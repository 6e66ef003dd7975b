"""CREMA-D (Cao et al. 2014): ``AudioWAV/AAAA_SSS_EEE_LL.wav`` and ``VideoDemographics.csv``.

File names follow the corpus's README exactly, four fields separated by ``_``:

- actor: four digits, 1001-1091;
- sentence: one of the twelve codes below, each a fixed sentence (the transcript);
- emotion: ANG, DIS, FEA, HAP, NEU, SAD;
- level: LO, MD, HI or XX (unspecified).

A ``.wav`` whose name breaks a rule is a bad file, named with the rule. The actors' sex comes
from ``VideoDemographics.csv`` (columns ActorID, Age, Sex, Race, Ethnicity) when present and
balances the folds; without it the folds are balanced by size only (said in the summary).
Folds: actors dealt into ``folds`` speaker-independent folds
(`mtl_ser.data.protocols.speaker_folds`); fold k tests on its actors, validates on fold k+1's.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from mtl_ser.data.corpora.base import Scan, choose_label_set, prepare_actor_folds
from mtl_ser.data.labels import IEMOCAP_CLASSES, LabelSet

NAME = "crema-d"
PROTOCOL = "crema_d_actors"
AUDIO_FOLDER = "AudioWAV"
DEMOGRAPHICS_FILE = "VideoDemographics.csv"
ACTORS = range(1001, 1092)
# The twelve sentences, as the CREMA-D README lists them with their codes.
SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
EMOTIONS = {"ANG": "ang", "DIS": "dis", "FEA": "fea", "HAP": "hap", "NEU": "neu", "SAD": "sad"}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
DEFAULT_FOLDS = 5

_NAME = re.compile(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav")


def label_sets() -> dict[str, LabelSet]:
    """``all``: the six CREMA-D emotions; ``4class``: neu, hap, ang, sad (dis and fea
    dropped and counted)."""
    return {
        "all": LabelSet(("ang", "dis", "fea", "hap", "neu", "sad")),
        "4class": LabelSet(IEMOCAP_CLASSES),
    }


def parse_name(name: str) -> dict:
    """Parses ``1001_DFA_ANG_XX.wav``.

    Returns: {"actor", "sentence", "label_raw", "level"}. Raises ValueError saying which
    rule the name breaks.
    """
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(
            "not a CREMA-D name (actor_sentence_emotion_level, e.g. 1001_DFA_ANG_XX.wav)"
        )
    actor, sentence, emotion, level = match.groups()
    if int(actor) not in ACTORS:
        raise ValueError(f"actor {actor} is not in 1001-1091")
    if sentence not in SENTENCES:
        raise ValueError(f"sentence {sentence} is not one of {sorted(SENTENCES)}")
    if emotion not in EMOTIONS:
        raise ValueError(f"emotion {emotion} is not one of {sorted(EMOTIONS)}")
    if level not in LEVELS:
        raise ValueError(f"level {level} is not one of {sorted(LEVELS)}")
    return {"actor": actor, "sentence": sentence, "label_raw": EMOTIONS[emotion], "level": level}


def read_demographics(path: Path) -> dict[str, str]:
    """``VideoDemographics.csv`` -> {actor id: "F" | "M"}. Raises ValueError for a file
    without ActorID / Sex columns or with a Sex other than Male / Female."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("ActorID", "Sex") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        sexes = {}
        for row in reader:
            sex = (row["Sex"] or "").strip()
            if sex not in ("Male", "Female"):
                raise ValueError(f"{path}: actor {row['ActorID']}: Sex {sex!r} is not Male/Female")
            sexes[row["ActorID"].strip()] = sex[0]
    return sexes


def _audio_folder(root: Path) -> Path:
    folder = root / AUDIO_FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(f"no {AUDIO_FOLDER} folder in {root.resolve()} (CREMA-D layout)")
    return folder


def scan_crema_d(root: Path) -> Scan:
    """Reads every ``AudioWAV/*.wav`` of a CREMA-D copy.

    Returns: a `Scan`; names that break the convention are bad files; actors without a
    demographics row and ignored non-wav files are reported in its lines.
    """
    folder = _audio_folder(root)
    demographics_path = root / DEMOGRAPHICS_FILE
    sexes = read_demographics(demographics_path) if demographics_path.is_file() else None
    records, errors, ignored = [], [], []
    for path in sorted(folder.iterdir()):
        where = f"{AUDIO_FOLDER}/{path.name}"
        if path.name.startswith("._") or path.suffix.lower() != ".wav":
            ignored.append(where)
            continue
        try:
            facts = parse_name(path.name)
        except ValueError as err:
            errors.append(f"{where}: {err}")
            continue
        records.append(
            {
                "id": path.stem,
                "source": path,
                "where": where,
                "label_raw": facts["label_raw"],
                "transcript": SENTENCES[facts["sentence"]],
                "spk": facts["actor"],
                "gender": None if sexes is None else sexes.get(facts["actor"]),
                "sentence": facts["sentence"],
                "level": facts["level"],
                # Twelve fixed sentences read by every actor.
                "scripted": True,
            }
        )
    actors = sorted({r["spk"] for r in records})
    lines = [f"CREMA-D files: {len(records)} from {len(actors)} actors"]
    if sexes is None:
        lines.append(f"no {DEMOGRAPHICS_FILE}: actor sex unknown, folds balanced by size only")
    else:
        unknown = [a for a in actors if a not in sexes]
        lines.append(
            f"actor sex from {DEMOGRAPHICS_FILE}: "
            f"{sum(sexes.get(a) == 'F' for a in actors)} female, "
            f"{sum(sexes.get(a) == 'M' for a in actors)} male"
            + (f"; not listed (sex unknown): {', '.join(unknown)}" if unknown else "")
        )
    if ignored:
        lines.append(f"ignored (not .wav or macOS ._*): {len(ignored)}: {', '.join(ignored[:5])}")
    return Scan(records, lines, errors, str(root), "file")


def prepare_crema_d(
    data_folder: str | Path,
    output_folder: str | Path,
    fold: int = 1,
    folds: int = DEFAULT_FOLDS,
    label_set: str = "all",
    on_error: str = "fail",
    verbose: bool = True,
) -> dict[str, Path]:
    """Writes train/valid/test manifests of one actor fold of CREMA-D.

    Args:
        data_folder: the folder holding ``AudioWAV/`` (and ``VideoDemographics.csv``).
        output_folder: where manifests etc. go.
        fold, folds: which of ``folds`` actor folds tests (see the module docstring).
        label_set: "all" (6 emotions) or "4class" (neu, hap, ang, sad).
        on_error: "fail" or "skip" bad files (see `mtl_ser.data.corpora.base`).
        verbose: progress and summary.

    Returns: ``{"train": Path, "valid": Path, "test": Path}``.
    """
    root = Path(data_folder)
    labels = choose_label_set(label_sets(), label_set)
    files = list(_audio_folder(root).glob("*.wav"))
    if (root / DEMOGRAPHICS_FILE).is_file():
        files.append(root / DEMOGRAPHICS_FILE)
    options = {"corpus": NAME, "protocol": PROTOCOL, "label_set": label_set}
    return prepare_actor_folds(
        output_folder,
        options,
        labels,
        lambda: scan_crema_d(root),
        root,
        files,
        fold,
        folds,
        on_error=on_error,
        verbose=verbose,
    )

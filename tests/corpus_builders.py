"""Small corpora in the exact released layouts of RAVDESS, CREMA-D and MSP-Podcast."""

from __future__ import annotations

from pathlib import Path

from tests.builders import write_wav


def build_ravdess(root: Path, actors=range(1, 7), rate: int = 48000) -> Path:
    """Actor_01..Actor_06 (odd male, even female), each with four speech files:
    neutral statement 1, calm statement 2, angry strong statement 1, sad statement 2."""
    names = ("03-01-01-01-01-01", "03-01-02-01-02-01", "03-01-05-02-01-02", "03-01-04-01-02-01")
    for actor in actors:
        for i, stem in enumerate(names):
            path = root / f"Actor_{actor:02d}" / f"{stem}-{actor:02d}.wav"
            write_wav(path, seconds=0.1, rate=rate, seed=actor * 10 + i)
    return root


CREMA_SEXES = {"1001": "Male", "1002": "Female", "1003": "Female", "1004": "Male"}
CREMA_SEXES.update({"1005": "Male", "1006": "Female"})


def build_crema_d(root: Path, demographics: bool = True) -> Path:
    """AudioWAV/ with six actors x four files (16 kHz) and VideoDemographics.csv."""
    files = ("IEO_NEU_XX", "TIE_ANG_HI", "WSI_SAD_LO", "DFA_FEA_MD")
    for actor in CREMA_SEXES:
        for i, rest in enumerate(files):
            write_wav(root / "AudioWAV" / f"{actor}_{rest}.wav", seconds=0.1, seed=i)
    if demographics:
        lines = ["ActorID,Age,Sex,Race,Ethnicity"]
        lines += [f"{a},30,{s},Caucasian,Not Hispanic" for a, s in CREMA_SEXES.items()]
        (root / "VideoDemographics.csv").write_text("\n".join(lines) + "\n")
    return root


MSP_COLUMNS = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"


def build_msp_podcast(root: Path, rows: list[tuple], transcripts: dict[str, str]) -> Path:
    """Audios/, Labels/labels_consensus.csv and Transcripts/.

    Args:
        rows: (FileName, EmoClass, SpkrID, Gender, Split_Set); a wav is written for each.
        transcripts: FileName stem -> text (others get no transcript file).
    """
    lines = [MSP_COLUMNS]
    for i, (name, emo, spk, gender, split) in enumerate(rows):
        lines.append(f"{name},{emo},4.2,3.8,4.0,{spk},{gender},{split}")
        write_wav(root / "Audios" / name, seconds=0.1, seed=i)
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    (root / "Labels" / "labels_consensus.csv").write_text("\n".join(lines) + "\n")
    (root / "Transcripts").mkdir(exist_ok=True)
    for stem, text in transcripts.items():
        (root / "Transcripts" / f"{stem}.txt").write_text(text + "\n")
    return root

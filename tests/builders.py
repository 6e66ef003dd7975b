"""Builders of small hand-made corpora for tests (exact, known contents)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def write_wav(path: Path, seconds: float = 0.2, rate: int = 16000, channels: int = 1, seed=0):
    """Writes low-level noise of the given length; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = int(round(seconds * rate))
    data = 0.01 * rng.standard_normal((frames, channels)).astype(np.float32)
    soundfile.write(str(path), data if channels > 1 else data[:, 0], rate, subtype="PCM_16")
    return path


def write_dialog(
    root: Path,
    session: int,
    dialog: str,
    utterances: list[tuple[str, str, str]],
    extra_labels: list[tuple[str, str]] = (),
    extra_transcripts: list[tuple[str, str]] = (),
    skip_wav: tuple[str, ...] = (),
    skip_transcript: tuple[str, ...] = (),
):
    """Writes one dialog in the IEMOCAP layout.

    Args:
        root: corpus root (holds SessionN).
        utterances: (utterance suffix such as "F000", raw label, transcript).
        extra_labels / extra_transcripts: (full id, label or text) lines without a wav.
        skip_wav / skip_transcript: suffixes whose wav / transcript line is not written.
    """
    base = root / f"Session{session}"
    labels, texts = [HEADER], []
    start = 1.0
    for i, (suffix, label, text) in enumerate(utterances):
        utt = f"{dialog}_{suffix}"
        end = start + 0.2
        labels.append(f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]\n")
        labels.append(
            "C-E1:\tNeutral;\t()\nC-E2:\tAnger;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n\n"
        )
        if suffix not in skip_transcript:
            texts.append(f"{utt} [{start:08.4f}-{end:08.4f}]: {text}\n")
        if suffix not in skip_wav:
            write_wav(base / "sentences" / "wav" / dialog / f"{utt}.wav", seed=i)
        start = end + 0.5
    for utt, label in extra_labels:
        labels.append(f"[1.0000 - 2.0000]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]\n\n")
    for utt, text in extra_transcripts:
        texts.append(f"{utt} [001.0000-002.0000]: {text}\n")
    emo = base / "dialog" / "EmoEvaluation"
    trans = base / "dialog" / "transcriptions"
    emo.mkdir(parents=True, exist_ok=True)
    trans.mkdir(parents=True, exist_ok=True)
    (emo / f"{dialog}.txt").write_text("".join(labels))
    (trans / f"{dialog}.txt").write_text("".join(texts))


def build_trap_tree(root: Path) -> Path:
    """A 3-session IEMOCAP copy (sessions 1, 3, 5) with every trap of DESIGN.md section 3."""
    write_dialog(
        root,
        1,
        "Ses01F_impro01",
        [
            ("F000", "neu", "Excuse me."),
            ("M000", "ang", "[LAUGHTER] Do you have to?"),
            ("F001", "xxx", "Yeah."),
            ("M001", "exc", "That's great!"),
            ("F002", "fru", "No."),
        ],
    )
    write_dialog(
        root,
        1,
        "Ses01M_script01_1",
        [("F000", "sad", "I'm sorry."), ("M000", "hap", "[BREATHING]")],
    )
    write_dialog(root, 3, "Ses03M_impro05a", [("F000", "neu", "Hi."), ("M000", "sad", "Bye.")])
    write_dialog(root, 3, "Ses03M_impro05b", [("F000", "ang", "Go."), ("M000", "hap", "Yes!")])
    write_dialog(root, 3, "Ses03M_impro08b", [("M000", "neu", "Well.")])
    write_dialog(
        root,
        5,
        "Ses05M_script01_1",
        [("F000", "neu", "One."), ("M000", "ang", "Two.")],
        extra_transcripts=[("Ses05M_script01_1_MXX0", "[GARBAGE]")],
        skip_transcript=("F000",),
    )
    write_dialog(
        root,
        5,
        "Ses05M_script01_1b",
        [("F000", "sad", "Three."), ("M000", "neu", "Four."), ("M002", "ang", "Five.")],
        skip_wav=("M002",),
    )
    # A wav nobody labelled, and macOS companions (binary) everywhere.
    write_wav(root / "Session5/sentences/wav/Ses05M_script01_1/Ses05M_script01_1_F009.wav")
    for folder in ("EmoEvaluation", "transcriptions"):
        (root / f"Session1/dialog/{folder}/._Ses01F_impro01.txt").write_bytes(b"\x00\x05\x16\x07")
    (root / "Session1/sentences/wav/Ses01F_impro01/._Ses01F_impro01_F000.wav").write_bytes(b"\x00")
    return root


def setting_record(**values) -> dict:
    """The ``"setting"`` field of a results.json (schema 2) holding ``values`` (fold and seed
    included), with its digest as `mtl_ser.settings` computes it."""
    from mtl_ser.settings import digest

    return {"digest": digest(values), "values": values, "ignored": ["num_workers"]}


def write_csv_corpus(root: Path, speakers=5, per_speaker=4, split_column=False):
    """Writes 0.3 s wavs ``spk<s>/utt<i>.wav`` and ``root/corpus.csv`` (columns path, emotion,
    transcript, speaker[, split]; emotions cycle neu, hap, ang, sad).

    Returns: (csv path, rows as lists of strings)."""
    labels = ["neu", "hap", "ang", "sad"]
    rows = []
    for s in range(speakers):
        for i in range(per_speaker):
            path = f"spk{s}/utt{i}.wav"
            write_wav(root / path, seconds=0.3, seed=s * 10 + i)
            row = [path, labels[i % 4], f"hello number {i}", f"spk{s}"]
            if split_column:
                row.append("test" if s == 0 else "valid" if s == 1 else "train")
            rows.append(row)
    header = "path,emotion,transcript,speaker" + (",split" if split_column else "")
    csv_path = root / "corpus.csv"
    csv_path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return csv_path, rows

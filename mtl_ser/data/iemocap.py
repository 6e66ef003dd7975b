"""Reads the IEMOCAP release layout into utterance records.

Layout (per session N = 1..5)::

    SessionN/sentences/wav/<dialog>/<utterance>.wav
    SessionN/dialog/EmoEvaluation/<dialog>.txt       (labels)
    SessionN/dialog/transcriptions/<dialog>.txt      (transcripts)

Traps handled here (see DESIGN.md section 3): the speaker is the gender letter of the *last*
id segment (not the letter after ``SesNN``, which names the actor wearing the markers); dialog
names may carry suffixes (``Ses03M_impro05a``, ``Ses05M_script01_1b``) so ids are matched whole;
single-annotator lines (``C-E1:``, ``A-E3:``) are ignored; macOS ``._*`` files are ignored.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import soundfile

from mtl_ser.data.text import normalize_transcript
from mtl_ser.progress import track

SESSIONS = (1, 2, 3, 4, 5)

# Facts of the full release (all five sessions).
FULL_RELEASE_UTTERANCES = 10039
FULL_RELEASE_RAW_COUNTS = {"neu": 1708, "hap": 595, "exc": 1041, "ang": 1103, "sad": 1084}
FULL_RELEASE_4CLASS_TOTAL = 5531
FULL_RELEASE_4CLASS_PER_SESSION = {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}

_UTT_ID = re.compile(
    r"Ses(?P<session>\d\d)(?P<marker>[FM])_(?P<rest>.+)_(?P<gender>[FM])[A-Za-z0-9]*"
)
# The summary line: [start - end] TURN_NAME EMOTION [V, A, D], the bracket holding the
# attribute annotators' mean valence, activation (arousal) and dominance on 1-5 scales, in
# that order (the release's EmoEvaluation header: "[V, A, D]").
_LABEL_LINE = re.compile(
    r"\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\t(?P<id>\S+)\t(?P<label>\S+)\t\[(?P<vad>[^\]]*)\]"
)
_TRANSCRIPT_LINE = re.compile(r"(?P<id>Ses\S+) \[[\d.]+-[\d.]+\]:\s?(?P<text>.*)")


@dataclass(frozen=True)
class SpeakerInfo:
    """What an utterance id says about its speaker."""

    session: int  # 1..5
    gender: str  # "F" or "M", of the speaker
    spk: str  # e.g. "Ses01F"
    dialog: str  # the id without its last segment, e.g. "Ses03M_impro05a"


def parse_utterance_id(utt_id: str) -> SpeakerInfo:
    """Parses ``Ses01F_impro01_M000`` into session 1, speaker ``Ses01M``, dialog ``Ses01F_impro01``.

    The speaker's gender is the first letter of the last ``_`` segment; the letter after
    ``SesNN`` only says which actor wore the motion-capture markers.

    Raises ValueError for an id that does not follow the IEMOCAP pattern.
    """
    match = _UTT_ID.fullmatch(utt_id)
    if match is None:
        raise ValueError(f"{utt_id!r} is not an IEMOCAP utterance id (e.g. Ses01F_impro01_M000)")
    session = int(match["session"])
    gender = match["gender"]
    dialog = utt_id.rsplit("_", 1)[0]
    return SpeakerInfo(session, gender, f"Ses{session:02d}{gender}", dialog)


@dataclass
class Utterance:
    """One labelled IEMOCAP utterance (before label mapping and splitting)."""

    id: str
    wav: str  # relative to the data folder, with "/" separators
    duration: float  # seconds
    label_raw: str  # as in EmoEvaluation: neu, hap, exc, ..., xxx
    transcript: str  # raw transcript ("" when the transcription file lacks the utterance)
    session: int
    dialog: str
    spk: str
    gender: str
    scripted: bool
    # The annotators' mean dimensions (1-5) of the label line; None when unreadable.
    valence: float | None = None
    arousal: float | None = None
    dominance: float | None = None

    @property
    def wrd(self) -> str:
        return normalize_transcript(self.transcript)


@dataclass
class ScanReport:
    """What a scan found besides the usable utterances: every anomaly, named."""

    sessions_found: list[int] = field(default_factory=list)
    label_entries: int = 0
    raw_label_counts: Counter = field(default_factory=Counter)
    labels_without_wav: list[str] = field(default_factory=list)
    wavs_without_label: list[str] = field(default_factory=list)
    transcripts_without_wav: list[str] = field(default_factory=list)
    wavs_without_transcript: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)  # macOS ._* files
    unparsed_transcript_lines: list[str] = field(default_factory=list)
    duplicate_labels: list[str] = field(default_factory=list)

    def lines(self, max_ids: int = 5) -> list[str]:
        """Human-readable report lines, one per non-empty anomaly list."""

        def show(ids):
            more = f" ... (+{len(ids) - max_ids} more)" if len(ids) > max_ids else ""
            return ", ".join(ids[:max_ids]) + more

        out = [
            f"sessions found: {self.sessions_found}",
            f"labelled utterances (EmoEvaluation): {self.label_entries}",
            "raw labels: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.raw_label_counts.items())),
        ]
        for name in (
            "labels_without_wav",
            "wavs_without_label",
            "transcripts_without_wav",
            "wavs_without_transcript",
            "duplicate_labels",
            "unparsed_transcript_lines",
            "ignored_files",
        ):
            ids = getattr(self, name)
            if ids:
                out.append(f"{name.replace('_', ' ')}: {len(ids)}: {show(ids)}")
        return out


def _text_files(folder: Path) -> list[Path]:
    """The ``*.txt`` files directly in a folder, without macOS ``._*`` companions."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.txt") if not p.name.startswith("._"))


def read_label_file(path: Path) -> list[tuple[str, str]]:
    """Reads one EmoEvaluation file.

    Returns: ``[(utterance_id, raw_label), ...]`` from the summary lines only; single-annotator
    lines (``C-E1:``, ``A-E3:``, ...) and the header are skipped.
    """
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _LABEL_LINE.match(line.strip("\r"))
        if match:
            entries.append((match["id"], match["label"]))
    return entries


def read_label_dimensions(path: Path) -> dict[str, tuple[float, float, float]]:
    """The summary lines' ``[V, A, D]`` of one EmoEvaluation file: ``{utterance_id:
    (valence, arousal, dominance)}``; lines whose bracket is not three numbers are left out."""
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _LABEL_LINE.match(line.strip("\r"))
        if not match:
            continue
        try:
            values = tuple(float(x) for x in match["vad"].split(","))
        except ValueError:
            continue
        if len(values) == 3:
            out[match["id"]] = values
    return out


def read_transcript_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """Reads one transcription file.

    Returns: ``({utterance_id: raw_text}, unparsed_lines)``; lines that are not of the form
    ``<id> [start-end]: text`` are returned separately so they can be reported.
    """
    texts, unparsed = {}, []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        match = _TRANSCRIPT_LINE.fullmatch(line)
        if match:
            texts[match["id"]] = match["text"].strip()
        else:
            unparsed.append(f"{path.name}: {line[:60]}")
    return texts, unparsed


def _find_wavs(session_dir: Path, report: ScanReport) -> dict[str, Path]:
    """Maps utterance id -> wav path for ``sentences/wav/<dialog>/<id>.wav``."""
    wavs = {}
    wav_root = session_dir / "sentences" / "wav"
    if not wav_root.is_dir():
        return wavs
    for path in sorted(wav_root.glob("*/*.wav")):
        if path.name.startswith("._"):
            report.ignored_files.append(str(path.relative_to(session_dir.parent)))
            continue
        wavs[path.stem] = path
    return wavs


def scan_iemocap(
    data_folder: str | Path, progress: bool = True
) -> tuple[list[Utterance], ScanReport]:
    """Reads every labelled utterance of an IEMOCAP copy (full or partial).

    Args:
        data_folder: the folder holding ``Session1`` ... ``Session5`` (any subset).
        progress: show a progress bar while reading wav headers.

    Returns:
        (utterances sorted by id, report). An utterance is kept when it has a label and a wav;
        a missing transcript keeps it (transcript "") and is reported. Everything dropped or
        ignored is named in the report.

    Raises:
        FileNotFoundError: no session folder in ``data_folder``.
        ValueError: a wav that cannot be read or is empty (all such files are named), or a wav
            stored under a dialog folder that its id does not belong to.
    """
    root = Path(data_folder)
    report = ScanReport()
    labels: dict[str, str] = {}
    dimensions: dict[str, tuple[float, float, float]] = {}
    texts: dict[str, str] = {}
    wavs: dict[str, Path] = {}
    for session in SESSIONS:
        session_dir = root / f"Session{session}"
        if not session_dir.is_dir():
            continue
        report.sessions_found.append(session)
        dialog_dir = session_dir / "dialog"
        for ignored in sorted(dialog_dir.glob("*/._*")):
            report.ignored_files.append(str(ignored.relative_to(root)))
        for path in _text_files(dialog_dir / "EmoEvaluation"):
            for utt_id, label in read_label_file(path):
                if utt_id in labels:
                    report.duplicate_labels.append(utt_id)
                labels[utt_id] = label
            dimensions.update(read_label_dimensions(path))
        for path in _text_files(dialog_dir / "transcriptions"):
            file_texts, unparsed = read_transcript_file(path)
            texts.update(file_texts)
            report.unparsed_transcript_lines.extend(unparsed)
        wavs.update(_find_wavs(session_dir, report))
    if not report.sessions_found:
        raise FileNotFoundError(
            f"no IEMOCAP session folder (Session1 ... Session5) in {root.resolve()}"
        )

    report.label_entries = len(labels)
    report.raw_label_counts = Counter(labels.values())
    report.labels_without_wav = sorted(set(labels) - set(wavs))
    report.wavs_without_label = sorted(set(wavs) - set(labels))
    report.transcripts_without_wav = sorted(set(texts) - set(wavs))
    report.wavs_without_transcript = sorted(set(wavs) - set(texts))

    utterances, bad = [], []
    kept = sorted(set(labels) & set(wavs))
    for utt_id in track(kept, "reading wav headers", unit="utterance", enabled=progress):
        wav = wavs[utt_id]
        info = parse_utterance_id(utt_id)
        if wav.parent.name != info.dialog:
            raise ValueError(f"{wav}: utterance {utt_id} is stored under another dialog folder")
        try:
            header = soundfile.info(str(wav))
        except Exception as err:  # soundfile raises several types for broken files
            bad.append(f"{wav} (unreadable: {err})")
            continue
        if header.frames <= 0:
            bad.append(f"{wav} (no samples)")
            continue
        utterances.append(
            Utterance(
                id=utt_id,
                wav=wav.relative_to(root).as_posix(),
                duration=round(header.frames / header.samplerate, 4),
                label_raw=labels[utt_id],
                transcript=texts.get(utt_id, ""),
                session=info.session,
                dialog=info.dialog,
                spk=info.spk,
                gender=info.gender,
                scripted="_script" in info.dialog,
                **dict(
                    zip(
                        ("valence", "arousal", "dominance"),
                        dimensions.get(utt_id, ()),
                        strict=False,
                    )
                ),
            )
        )
    if bad:
        raise ValueError(f"{len(bad)} unusable wav file(s):\n  " + "\n  ".join(bad))
    return utterances, report


def check_full_release(utterances: list[Utterance], report: ScanReport) -> list[str]:
    """Checks the published counts when the input claims to be the full release.

    A copy is treated as the full release when all five sessions are present and it holds
    more than half of the release's labelled utterances (so the small demo corpus and
    one-session copies are "partial" and only reported).

    Args:
        utterances: the scanned utterances.
        report: the scan report.

    Returns:
        Lines describing the check ("" list for a partial corpus).

    Raises:
        ValueError: a full-release copy whose counts differ from the published ones.
    """
    full = report.sessions_found == list(SESSIONS) and (
        report.label_entries > FULL_RELEASE_UTTERANCES // 2
    )
    if not full:
        return [
            f"partial corpus ({len(report.sessions_found)} session(s), "
            f"{report.label_entries} labelled utterances): release counts not checked"
        ]
    raw = Counter(u.label_raw for u in utterances)
    per_session = Counter(u.session for u in utterances if u.label_raw in FULL_RELEASE_RAW_COUNTS)
    problems = []
    if len(utterances) != FULL_RELEASE_UTTERANCES:
        problems.append(f"utterances with label and wav: {len(utterances)}, expected 10039")
    for label, expected in FULL_RELEASE_RAW_COUNTS.items():
        if raw[label] != expected:
            problems.append(f"{label}: {raw[label]}, expected {expected}")
    total = sum(raw[label] for label in FULL_RELEASE_RAW_COUNTS)
    if total != FULL_RELEASE_4CLASS_TOTAL:
        problems.append(f"4-class total: {total}, expected {FULL_RELEASE_4CLASS_TOTAL}")
    for session, expected in FULL_RELEASE_4CLASS_PER_SESSION.items():
        if per_session[session] != expected:
            problems.append(
                f"Session{session} 4-class: {per_session[session]}, expected {expected}"
            )
    if problems:
        raise ValueError(
            "this looks like the full IEMOCAP release but its counts differ from the published "
            "ones (a damaged or modified copy?):\n  " + "\n  ".join(problems)
        )
    return [f"full release: counts match the published ones ({FULL_RELEASE_4CLASS_TOTAL} 4-class)"]

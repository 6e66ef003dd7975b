"""The synthetic demo corpus: IEMOCAP layout, formats, labels, determinism, caching, prosody.

The files are read back with a small strict reader written here, independent of the
project's IEMOCAP parser, so that a format slip in the generator cannot hide behind a
lenient parser.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mtl_ser.data import espeak
from mtl_ser.data.demo import (
    DIALOGS,
    MARKER_NAME,
    SESSION_STAMP,
    synthesize_demo_corpus,
)

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
SUMMARY_LINE = re.compile(
    r"\[(?P<start>\d+\.\d{4}) - (?P<end>\d+\.\d{4})\]\t(?P<id>\S+)\t(?P<label>[a-z]{3})\t"
    r"\[(?P<v>\d\.\d{4}), (?P<a>\d\.\d{4}), (?P<d>\d\.\d{4})\]"
)
CATEGORY_LINE = re.compile(r"C-(E\d|F1|M1):\t([A-Z][a-z]+; )*[A-Z][a-z]+;\t\(\)")
DIMENSION_LINE = re.compile(r"A-(E\d|F1|M1):\tval [1-5]; act [1-5]; dom  [1-5];\t\(\)")
TRANSCRIPT_LINE = re.compile(
    r"(?P<id>\S+) \[(?P<start>\d{3}\.\d{4})-(?P<end>\d{3}\.\d{4})\]: (?P<text>.+)"
)
UTT_ID = re.compile(
    r"(?P<dialog>Ses0(?P<session>[1-5])(?P<mocap>[FM])_(?:impro\d\d[ab]?|script(?P<script>\d\d)_\db?))"
    r"_(?P<gender>[FM])(?P<number>\d{3})"
)
TAG = re.compile(r"\[[A-Z]+\]|\{[A-Z]+\}")
ALL_LABELS = {"neu", "hap", "ang", "sad", "exc", "fru", "xxx"}


@dataclass
class Row:
    """One utterance as read back from the corpus files."""

    utt_id: str
    session: int
    dialog: str
    label: str
    start: float
    end: float
    transcript: str
    wav: Path

    @property
    def gender(self) -> str:
        return self.utt_id[-4]

    @property
    def spoken(self) -> str:
        return " ".join(TAG.sub(" ", self.transcript).split())


def read_evaluation(path: Path) -> list[tuple[str, str, float, float]]:
    """Strictly parse an EmoEvaluation file; returns (id, label, start, end) in file order."""
    text = path.read_text("utf-8")
    assert text.startswith(HEADER + "\n\n")
    blocks = text[len(HEADER) + 2 :].rstrip("\n").split("\n\n")
    entries = []
    for block in blocks:
        first, *annotators = block.split("\n")
        match = SUMMARY_LINE.fullmatch(first)
        assert match, f"bad summary line {first!r} in {path.name}"
        assert len(annotators) == 7
        for line in annotators[:4]:
            assert CATEGORY_LINE.fullmatch(line), line
        for line in annotators[4:]:
            assert DIMENSION_LINE.fullmatch(line), line
        entries.append((match["id"], match["label"], float(match["start"]), float(match["end"])))
    return entries


def read_transcriptions(path: Path) -> list[tuple[str, float, float, str]]:
    """Strictly parse a transcription file; returns (id, start, end, text) in file order."""
    rows = []
    for line in path.read_text("utf-8").splitlines():
        match = TRANSCRIPT_LINE.fullmatch(line)
        assert match, f"bad transcription line {line!r}"
        rows.append((match["id"], float(match["start"]), float(match["end"]), match["text"]))
    return rows


def read_corpus(root: Path) -> list[Row]:
    """Read every utterance of a corpus, checking that labels and transcripts agree."""
    turns = []
    for evaluation in sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt")):
        session_dir = evaluation.parents[2]
        dialog = evaluation.stem
        labels = read_evaluation(evaluation)
        texts = read_transcriptions(session_dir / "dialog" / "transcriptions" / evaluation.name)
        assert [row[:3] for row in texts] == [(i, s, e) for i, _, s, e in labels]
        for (utt_id, label, start, end), (*_, text) in zip(labels, texts, strict=True):
            wav = session_dir / "sentences" / "wav" / dialog / f"{utt_id}.wav"
            session = int(session_dir.name.removeprefix("Session"))
            turns.append(Row(utt_id, session, dialog, label, start, end, text, wav))
    return turns


@pytest.fixture(scope="module")
def corpus(demo_corpus: Path) -> list[Row]:
    return read_corpus(demo_corpus)


def relative_files(root: Path) -> dict[str, bytes]:
    """Return {relative path: bytes} of every file except the marker."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER_NAME
    }


def small(out: Path, **kwargs) -> dict:
    """Synthesise a one-session corpus with 6 utterances per speaker (12 wavs)."""
    kwargs = {"sessions": (1,), "utterances_per_speaker": 6, "progress": False, **kwargs}
    return synthesize_demo_corpus(out, **kwargs)


# ----------------------------------------------------------------------- layout and ids


def test_layout_and_counts(demo_corpus: Path, corpus: list[Row]):
    assert sorted(p.name for p in demo_corpus.iterdir()) == [
        MARKER_NAME,
        "Session1",
        "Session2",
        "Session3",
        "Session4",
        "Session5",
    ]
    for session, dialogs in DIALOGS.items():
        session_dir = demo_corpus / f"Session{session}"
        assert (session_dir / SESSION_STAMP).is_file()
        wav_dirs = sorted(p.name for p in (session_dir / "sentences" / "wav").iterdir())
        evaluations = sorted(p.stem for p in (session_dir / "dialog/EmoEvaluation").iterdir())
        transcripts = sorted(p.stem for p in (session_dir / "dialog/transcriptions").iterdir())
        assert wav_dirs == evaluations == transcripts == sorted(dialogs)
        wavs = sorted(p.stem for p in session_dir.glob("sentences/wav/*/*.wav"))
        labelled = sorted(t.utt_id for t in corpus if t.session == session)
        assert wavs == labelled
        assert len(wavs) == 60
    assert len(corpus) == 300
    assert len({t.utt_id for t in corpus}) == 300


def test_ids_follow_dialog_and_speaker(corpus: list[Row]):
    numbers = defaultdict(list)
    for turn in corpus:
        match = UTT_ID.fullmatch(turn.utt_id)
        assert match, turn.utt_id
        assert match["dialog"] == turn.dialog
        assert int(match["session"]) == turn.session
        assert turn.wav.parent.name == turn.dialog
        numbers[turn.dialog, match["gender"]].append(int(match["number"]))
    for dialogs in DIALOGS.values():
        for dialog in dialogs:
            # Both actors speak in every dialog, numbered from 000 without gaps.
            for gender in "FM":
                assert sorted(numbers[dialog, gender]) == list(range(len(numbers[dialog, gender])))
                assert numbers[dialog, gender], (dialog, gender)
    for session in range(1, 6):
        dialogs = {t.dialog for t in corpus if t.session == session}
        assert any("_impro" in d for d in dialogs) and any("_script" in d for d in dialogs)
    # Dialogs are named after both the female and the male mocap actor across the corpus.
    assert {t.dialog[5] for t in corpus} == {"F", "M"}


def test_special_dialogs(demo_corpus: Path, corpus: list[Row]):
    for session, dialog in [
        (3, "Ses03M_impro05a"),
        (3, "Ses03M_impro05b"),
        (5, "Ses05M_script01_1"),
        (5, "Ses05M_script01_1b"),
    ]:
        folder = demo_corpus / f"Session{session}" / "sentences" / "wav" / dialog
        ids = [p.stem for p in folder.glob("*.wav")]
        assert ids and all(i.rsplit("_", 1)[0] == dialog for i in ids)
    by_dialog = Counter(t.dialog for t in corpus)
    assert by_dialog["Ses05M_script01_1"] == by_dialog["Ses05M_script01_1b"] == 15


# -------------------------------------------------------------------- labels and texts


def test_labels_are_balanced_per_speaker(demo_corpus: Path, corpus: list[Row]):
    counts = Counter(t.label for t in corpus)
    assert set(counts) == ALL_LABELS
    assert 0.04 <= counts["xxx"] / 300 <= 0.12
    assert 0.01 <= counts["fru"] / 300 <= 0.08
    assert counts["exc"] >= 10
    per_speaker = defaultdict(Counter)
    for turn in corpus:
        four_class = "hap" if turn.label == "exc" else turn.label
        per_speaker[turn.session, turn.gender][four_class] += 1
    assert len(per_speaker) == 10
    for counter in per_speaker.values():
        assert sum(counter.values()) == 30
        basic = [counter[label] for label in ("neu", "hap", "ang", "sad")]
        assert max(basic) - min(basic) <= 1
    marker = json.loads((demo_corpus / MARKER_NAME).read_text())
    assert marker["summary"]["per_label"] == dict(sorted(counts.items()))
    assert marker["summary"]["utterances"] == 300
    assert marker["summary"]["per_session"] == {f"Session{s}": 60 for s in range(1, 6)}


def test_transcripts_and_tags(corpus: list[Row]):
    tagged = [t for t in corpus if TAG.search(t.transcript)]
    tag_only = [t for t in tagged if not t.spoken]
    assert 5 <= len(tagged) <= 10
    assert tag_only
    assert {t.transcript for t in tag_only} <= {"[LAUGHTER]", "[BREATHING]"}
    for turn in corpus:
        if turn.spoken:
            assert turn.spoken[0].isupper() and turn.spoken[-1] in ".?!"
            assert 4 <= len(turn.spoken.split()) <= 9


def test_scripts_are_shared_and_improvisations_differ(corpus: list[Row]):
    texts = defaultdict(list)
    for turn in corpus:
        texts[turn.dialog].append(turn.spoken)
    by_script = defaultdict(list)
    for dialog, lines in texts.items():
        number = UTT_ID.fullmatch(f"{dialog}_F000")["script"]
        if number:
            by_script[number].append(lines)
    assert sorted(by_script) == ["01", "02", "03"]
    for readings in by_script.values():
        assert len(readings) >= 2
        # Every reading of a script has the same line at each turn (tag-only turns aside).
        for position in zip(*readings, strict=False):
            assert len({line for line in position if line}) == 1
    scripted = {line for r in by_script.values() for lines in r for line in lines}
    improvised = {d: lines for d, lines in texts.items() if "_impro" in d}
    assert len(improvised) >= 5
    for session in range(1, 6):
        lines = [x for d, v in improvised.items() if d.startswith(f"Ses0{session}") for x in v]
        lines = [line for line in lines if line]
        # Improvisations are drawn from their own pool, without repeats within a session.
        assert not set(lines) & scripted
        assert len(set(lines)) == len(lines)
    # ... so no two improvised dialogs say the same thing, unlike scripted ones.
    openings = [tuple(lines[:5]) for lines in improvised.values()]
    assert len(set(openings)) == len(openings)


# ---------------------------------------------------------------------------- audio


def test_audio_format_and_durations(corpus: list[Row]):
    for turn in corpus:
        info = sf.info(turn.wav)
        assert (info.format, info.subtype, info.samplerate, info.channels) == (
            "WAV",
            "PCM_16",
            16000,
            1,
        )
        seconds = info.frames / 16000
        if turn.spoken:
            assert 1.0 <= seconds <= 3.0, (turn.utt_id, seconds)
        else:
            assert 0.3 <= seconds <= 1.5, (turn.utt_id, seconds)
        samples, _ = sf.read(turn.wav, dtype="int16")
        assert np.abs(samples.astype(int)).max() > 1000  # not silent
        assert np.count_nonzero(samples[:200]) > 0  # the noise floor reaches the pause


def test_label_times_match_wav_durations(corpus: list[Row]):
    previous_end = {}
    for turn in corpus:
        seconds = sf.info(turn.wav).frames / 16000
        assert abs((turn.end - turn.start) - seconds) <= 0.001, turn.utt_id
        # A running dialog clock: turns follow each other after a short gap.
        assert turn.start > previous_end.get(turn.dialog, 0.0)
        previous_end[turn.dialog] = turn.end


def _f0(samples: np.ndarray, rate: int = 16000) -> list[float]:
    """Autocorrelation pitch (Hz) of the loud, clearly periodic 40 ms frames."""
    frame, low, high = 640, rate // 400, rate // 60
    pitches = []
    for begin in range(0, len(samples) - frame, frame):
        x = samples[begin : begin + frame] - samples[begin : begin + frame].mean()
        if np.sqrt(np.mean(x**2)) < 0.02:
            continue
        corr = np.correlate(x, x, "full")[frame - 1 :]
        lag = low + int(np.argmax(corr[low:high]))
        if corr[lag] > 0.5 * corr[0]:
            pitches.append(rate / lag)
    return pitches


def test_speakers_differ_in_pitch(corpus: list[Row]):
    pitches = defaultdict(list)
    for turn in corpus:
        samples, _ = sf.read(turn.wav)
        pitches[turn.session, turn.gender] += _f0(samples)
    for session in range(1, 6):
        female, male = np.median(pitches[session, "F"]), np.median(pitches[session, "M"])
        assert female > 1.4 * male, (session, female, male)


def test_emotions_differ_in_prosody(corpus: list[Row]):
    seconds_per_char, rms, pitch = defaultdict(list), defaultdict(list), defaultdict(list)
    speaker_pitch = defaultdict(list)
    for turn in corpus:
        if not turn.spoken:
            continue
        samples, _ = sf.read(turn.wav)
        label = "hap" if turn.label == "exc" else turn.label
        seconds_per_char[label].append(len(samples) / 16000 / len(turn.spoken))
        rms[label].append(np.sqrt(np.mean(samples**2)))
        f0 = _f0(samples)
        speaker_pitch[turn.session, turn.gender] += f0
        if f0:
            pitch[label].append((turn.session, turn.gender, np.median(f0)))
    mean = {label: np.mean(values) for label, values in seconds_per_char.items()}
    loud = {label: np.mean(values) for label, values in rms.items()}
    # Sad is slow and quiet, angry fast and loud, neutral in between.
    assert mean["sad"] > 1.25 * mean["ang"]
    assert mean["sad"] > mean["neu"] > mean["ang"]
    assert loud["sad"] < 0.6 * loud["ang"]
    assert loud["sad"] < loud["neu"] < loud["ang"]
    # Happy is higher pitched than sad, relative to each speaker's median (octaves).
    median = {spk: np.median(values) for spk, values in speaker_pitch.items()}

    def octaves(label):
        return np.mean([np.log2(f / median[s, g]) for s, g, f in pitch[label]])

    assert octaves("hap") - octaves("sad") > 0.4


# ---------------------------------------------------------------- determinism and cache


def test_same_seed_gives_identical_files_and_sessions_are_independent(
    tmp_path: Path, demo_corpus: Path
):
    first = synthesize_demo_corpus(tmp_path / "a", sessions=(1,), progress=False)
    assert first["utterances"] == 60 and first["skipped"] is False
    # Session 1 alone is byte-identical to Session 1 of the full corpus (seed 0), even
    # though this process has synthesised other audio in between.
    alone = relative_files(tmp_path / "a")
    full = {k: v for k, v in relative_files(demo_corpus).items() if k.startswith("Session1")}
    assert alone == full


def test_different_seeds_give_different_corpora(tmp_path: Path):
    small(tmp_path / "a", seed=3)
    small(tmp_path / "b", seed=3)
    small(tmp_path / "c", seed=4)
    a, b, c = (relative_files(tmp_path / name) for name in "abc")
    assert a == b
    assert len(a) == 12 + 4 + 4 + 1  # wavs, EmoEvaluation and transcription files, stamp
    wavs = [k for k in a if k.endswith(".wav")]
    differing = [k for k in wavs if a[k] != c.get(k)]
    assert len(differing) == len(wavs)


def test_skips_when_marker_matches(tmp_path: Path):
    first = small(tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    second = small(tmp_path)
    assert second == {**first, "skipped": True}
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == stamps
    marker = json.loads((tmp_path / MARKER_NAME).read_text())
    assert marker["seed"] == 0
    assert marker["arguments"] == {"seed": 0, "sessions": [1], "utterances_per_speaker": 6}
    assert marker["summary"]["utterances"] == 12


def test_regenerates_when_arguments_differ(tmp_path: Path):
    small(tmp_path, seed=0)
    before = relative_files(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.wav").write_bytes(b"x")
    summary = small(tmp_path, seed=1)
    assert summary["skipped"] is False
    assert json.loads((tmp_path / MARKER_NAME).read_text())["arguments"]["seed"] == 1
    after = relative_files(tmp_path)
    assert after["notes.txt"] == b"mine" and after["other/keep.wav"] == b"x"
    assert any(before[k] != after[k] for k in before)
    # Other sessions: the old SessionN folder is removed, other files stay.
    small(tmp_path, sessions=(2,))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        MARKER_NAME,
        "Session2",
        "notes.txt",
        "other",
    ]


def test_regenerates_when_marker_is_missing(tmp_path: Path):
    small(tmp_path)
    complete = relative_files(tmp_path)
    # An interrupted run: no marker, and a leftover file from a half-written dialog.
    (tmp_path / MARKER_NAME).unlink()
    leftover = tmp_path / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "partial.wav"
    leftover.write_bytes(b"RIFF")
    summary = small(tmp_path)
    assert summary["skipped"] is False
    assert not leftover.exists()
    assert (tmp_path / MARKER_NAME).is_file()
    assert relative_files(tmp_path) == complete


def test_refuses_to_delete_session_folders_it_did_not_write(tmp_path: Path):
    foreign = tmp_path / "Session1" / "sentences" / "wav" / "x.wav"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="Session1"):
        small(tmp_path)
    assert foreign.read_bytes() == b"real data"
    assert not (tmp_path / MARKER_NAME).exists()


def test_rejects_invalid_arguments(tmp_path: Path):
    with pytest.raises(ValueError, match="sessions"):
        synthesize_demo_corpus(tmp_path, sessions=(6,), progress=False)
    with pytest.raises(ValueError, match="at least 4"):
        synthesize_demo_corpus(tmp_path, utterances_per_speaker=3, progress=False)
    assert not any(tmp_path.iterdir())


def test_progress_bar_is_shown_on_request(tmp_path: Path, capsys: pytest.CaptureFixture):
    small(tmp_path / "quiet", utterances_per_speaker=4)
    assert "demo corpus" not in capsys.readouterr().err
    small(tmp_path / "loud", utterances_per_speaker=4, progress=True)
    assert "demo corpus" in capsys.readouterr().err


# --------------------------------------------------------------------------- espeak


def test_espeak_is_deterministic_and_mono():
    request = {"voice": "en-us+m3", "rate": 150, "pitch": 40, "pitch_range": 20, "volume": 120}
    first, rate = espeak.synthesize("Where did I put my keys?", **request)
    espeak.synthesize("Something else in between.", voice="en+f4", rate=300)
    second, _ = espeak.synthesize("Where did I put my keys?", **request)
    assert rate == 22050
    assert first.dtype == np.float32 and first.ndim == 1
    assert 0.8 < len(first) / rate < 3.0
    np.testing.assert_array_equal(first, second)
    quieter, _ = espeak.synthesize("Where did I put my keys?", **{**request, "volume": 60})
    assert np.sqrt(np.mean(quieter**2)) < 0.7 * np.sqrt(np.mean(first**2))


def test_espeak_rejects_unknown_voice():
    with pytest.raises(espeak.EspeakError, match="no-such-voice"):
        espeak.synthesize("Hello.", voice="no-such-voice")


def test_missing_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    # A None entry in sys.modules makes `import espeakng_loader` raise ImportError.
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(espeak.EspeakError, match="pip install espeakng-loader"):
        espeak.wheel_paths()

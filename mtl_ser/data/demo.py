"""A synthetic demo corpus in the exact layout of the IEMOCAP release, spoken by espeak-ng.

It is the test fixture of the project and the default data of the offline demo, so it
copies what the real IEMOCAP parser must cope with: per-session female and male
speakers, dialogs named after the actor wearing mocap markers (not the speaker), the
suffixed dialogs `Ses03M_impro05a/b` and `Ses05M_script01_1b`, EmoEvaluation files with
annotator lines, transcriptions with non-speech tags, and the labels xxx/fru/exc.

Emotion is rendered through prosody (rate, pitch, pitch range, volume) with random
jitter, so that a small model can learn it without it being trivial.

Layout written under `out_dir`:
    SessionN/sentences/wav/<dialog>/<utt_id>.wav       16 kHz mono PCM_16
    SessionN/dialog/EmoEvaluation/<dialog>.txt
    SessionN/dialog/transcriptions/<dialog>.txt
    DEMO_CORPUS.json                                    written last (arguments, counts)
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter, resample_poly

from mtl_ser.data.espeak import espeak_version, synthesize
from mtl_ser.progress import Progress

# Bump whenever the generated files change, so that old corpora are regenerated.
GENERATOR_VERSION = 1
MARKER_NAME = "DEMO_CORPUS.json"
# Written first into every SessionN folder we create: only stamped folders are ever deleted.
SESSION_STAMP = ".mtl_ser_demo_session"
SAMPLE_RATE = 16000
ALL_SESSIONS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Speaker:
    """One synthetic actor: gender letter ("F"/"M"), espeak voice, base pitch (0-100)."""

    gender: str
    voice: str
    pitch: int


# Distinct voices in every session. The breathy variants f2, f3 and f5 are avoided: their
# breath noise makes espeak-ng's output differ from run to run.
SPEAKERS: dict[int, tuple[Speaker, Speaker]] = {
    1: (Speaker("F", "en-us+f1", 56), Speaker("M", "en-us+m1", 46)),
    2: (Speaker("F", "en+f4", 50), Speaker("M", "en+m3", 40)),
    3: (Speaker("F", "en-us+steph", 44), Speaker("M", "en+m7", 52)),
    4: (Speaker("F", "en+belinda", 38), Speaker("M", "en-us+m4", 44)),
    5: (Speaker("F", "en-us+Annie", 48), Speaker("M", "en+m6", 36)),
}

# The letter after SesNN is the actor wearing the mocap markers; both actors speak in
# every dialog. Session 3 has suffixed improvisations and session 5 a dialog whose name
# is a prefix of another's, as in the release.
DIALOGS: dict[int, tuple[str, ...]] = {
    1: ("Ses01F_impro01", "Ses01F_script01_1", "Ses01M_impro03", "Ses01M_script02_2"),
    2: ("Ses02F_impro02", "Ses02M_script01_3", "Ses02M_impro06", "Ses02F_script03_1"),
    3: ("Ses03M_impro05a", "Ses03M_impro05b", "Ses03F_script02_1", "Ses03F_impro07"),
    4: ("Ses04F_impro04", "Ses04M_script03_2", "Ses04M_impro08", "Ses04F_script01_2"),
    5: ("Ses05M_script01_1", "Ses05M_script01_1b", "Ses05F_impro02", "Ses05F_script02_2"),
}


@dataclass(frozen=True)
class Prosody:
    """espeak settings of an emotion: words per minute, pitch offset from the speaker's
    base pitch, pitch range (0-100) and volume (0-200)."""

    rate: float
    pitch: float
    range: float
    volume: float


PROSODY: dict[str, Prosody] = {
    "neu": Prosody(rate=165, pitch=0, range=40, volume=95),
    "hap": Prosody(rate=195, pitch=14, range=85, volume=120),
    "ang": Prosody(rate=210, pitch=-5, range=55, volume=165),
    "sad": Prosody(rate=125, pitch=-15, range=10, volume=55),
}
# In the standard 4-class set exc is merged into hap, so it sounds happy.
PROSODY["exc"] = PROSODY["hap"]
# Labels without a prosody of their own (xxx, fru) draw every setting at random from
# the span of the four basic emotions.
_SPAN = {
    name: (
        min(getattr(p, name) for p in PROSODY.values()),
        max(getattr(p, name) for p in PROSODY.values()),
    )
    for name in ("rate", "pitch", "range", "volume")
}
# Per-utterance jitter: relative for rate and volume, absolute for pitch and range.
RATE_JITTER, VOLUME_JITTER, PITCH_JITTER, RANGE_JITTER = 0.07, 0.10, 4.0, 6.0

BASIC_LABELS = ("neu", "hap", "ang", "sad")
XXX_FRACTION, FRU_FRACTION = 0.08, 0.04
# Share of a speaker's happy utterances labelled exc instead of hap.
EXC_SHARE = 0.3

CATEGORY = {
    "neu": "Neutral",
    "hap": "Happiness",
    "exc": "Excited",
    "ang": "Anger",
    "sad": "Sadness",
    "fru": "Frustration",
}
_OTHER_CATEGORIES = ("Surprise", "Fear", "Disgust", "Other")
# Mean (valence, activation, dominance) of each label, on IEMOCAP's 1-5 scales.
VAD = {
    "neu": (3.0, 2.5, 2.5),
    "hap": (4.0, 3.0, 3.0),
    "exc": (4.0, 3.8, 3.5),
    "ang": (1.8, 4.0, 4.0),
    "sad": (2.0, 2.0, 2.0),
    "fru": (2.0, 3.3, 3.3),
    "xxx": (2.8, 2.8, 2.8),
}
EVALUATORS = ("E1", "E2", "E3", "E4", "E5", "E6")

EMBEDDED_TAGS = ("[LAUGHTER]", "[BREATHING]", "[GARBAGE]", "{LG}")
TAG_ONLY_TAGS = ("[LAUGHTER]", "[BREATHING]")
_TAG_PATTERN = re.compile(r"\[[A-Z]+\]|\{[A-Z]+\}")

# Speech longer than this is re-spoken faster, to keep utterances within about 1-3 s.
MAX_SPEECH_SECONDS = 2.6
NOISE_FLOOR = 2e-4  # standard deviation of the added noise floor (about -74 dBFS)
EVALUATION_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"


@dataclass
class Turn:
    """One turn: its identity, text, label and espeak settings, then its rendering."""

    utt_id: str
    dialog: str
    speaker: Speaker
    label: str
    transcript: str
    prosody: Prosody
    seed: int
    gap: float  # seconds of dialog clock before this turn starts
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    start: float = 0.0
    end: float = 0.0


# ---------------------------------------------------------------------------- sentences


def load_sentences(path: str | Path | None = None) -> dict[str, list[str]]:
    """Read a sentence list (default: the packaged demo_sentences.txt).

    Lines "# section: NAME" start a section, other "#" lines and blank lines are
    skipped. Returns {section name: sentences in file order}.
    """
    if path is None:
        text = resources.files("mtl_ser.data").joinpath("demo_sentences.txt").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        match = re.fullmatch(r"#\s*section:\s*(\S+)", line)
        if match:
            current = sections.setdefault(match.group(1), [])
        elif line and not line.startswith("#"):
            if current is None:
                raise ValueError(f"sentence outside a section: {line!r}")
            current.append(line)
    return sections


def strip_tags(text: str) -> str:
    """Return `text` without non-speech tags ([LAUGHTER], {LG}, ...) and extra spaces."""
    return " ".join(_TAG_PATTERN.sub(" ", text).split())


# ----------------------------------------------------------------------------- planning


def _split(total: int, parts: int) -> list[int]:
    """Split `total` into `parts` near-equal non-negative integers, larger ones first."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def _stochastic_round(value: float, rng: random.Random) -> int:
    """Round down or up at random so that the expectation is `value`."""
    low = int(value)
    return low + (rng.random() < value - low)


def _speaker_labels(n: int, rng: random.Random) -> list[str]:
    """Return `n` shuffled raw labels for one speaker.

    About 8% xxx and 4% fru; the rest is split evenly between neu, hap, ang and sad,
    a part of the happy share being labelled exc (merged into hap in the 4-class set).
    """
    xxx = _stochastic_round(XXX_FRACTION * n, rng)
    fru = _stochastic_round(FRU_FRACTION * n, rng)
    share, extra = divmod(n - xxx - fru, len(BASIC_LABELS))
    shares = dict.fromkeys(BASIC_LABELS, share)
    for label in rng.sample(BASIC_LABELS, extra):
        shares[label] += 1
    exc = round(EXC_SHARE * shares["hap"])
    shares["hap"] -= exc
    labels = ["xxx"] * xxx + ["fru"] * fru + ["exc"] * exc
    for label in BASIC_LABELS:
        labels += [label] * shares[label]
    rng.shuffle(labels)
    return labels


def _turn_order(n_female: int, n_male: int, first: str) -> list[str]:
    """Alternate speakers' gender letters, starting with `first`, until both run out."""
    remaining = {"F": n_female, "M": n_male}
    order: list[str] = []
    current = first
    while remaining["F"] or remaining["M"]:
        if remaining[current]:
            order.append(current)
            remaining[current] -= 1
        current = "M" if current == "F" else "F"
    return order


def _cycle_shuffled(pool: Sequence[str], rng: random.Random) -> Iterator[str]:
    """Yield the pool in random order, reshuffled each time it is used up."""
    while True:
        items = list(pool)
        rng.shuffle(items)
        yield from items


def _script_number(dialog: str) -> str | None:
    """Return "01" for "Ses05M_script01_1b", None for an improvised dialog."""
    match = re.search(r"_script(\d\d)_", dialog)
    return match.group(1) if match else None


def _jittered(base: Prosody, speaker: Speaker, rng: random.Random) -> Prosody:
    """Return the espeak settings of one utterance: emotion + speaker pitch + jitter."""
    rate = base.rate * (1 + rng.uniform(-RATE_JITTER, RATE_JITTER))
    volume = base.volume * (1 + rng.uniform(-VOLUME_JITTER, VOLUME_JITTER))
    pitch = speaker.pitch + base.pitch + rng.uniform(-PITCH_JITTER, PITCH_JITTER)
    pitch_range = base.range + rng.uniform(-RANGE_JITTER, RANGE_JITTER)
    return Prosody(
        rate=float(np.clip(rate, 80, 450)),
        pitch=float(np.clip(pitch, 0, 100)),
        range=float(np.clip(pitch_range, 0, 100)),
        volume=float(np.clip(volume, 0, 200)),
    )


def _prosody(label: str, speaker: Speaker, rng: random.Random) -> Prosody:
    """Return the jittered espeak settings for `label`; random ones for xxx and fru."""
    if label in PROSODY:
        return _jittered(PROSODY[label], speaker, rng)
    drawn = {name: rng.uniform(low, high) for name, (low, high) in _SPAN.items()}
    return _jittered(Prosody(**drawn), speaker, rng)


def _dialog_turns(
    dialog: str,
    counts: dict[str, int],
    speakers: dict[str, Speaker],
    labels: dict[str, list[str]],
    lines: Iterator[str],
    rng: random.Random,
) -> list[Turn]:
    """Plan the turns of one dialog; consumes the speakers' labels and the text lines."""
    numbers = {"F": 0, "M": 0}
    turns = []
    for index, gender in enumerate(_turn_order(counts["F"], counts["M"], first=dialog[5])):
        label = labels[gender].pop()
        turns.append(
            Turn(
                utt_id=f"{dialog}_{gender}{numbers[gender]:03d}",
                dialog=dialog,
                speaker=speakers[gender],
                label=label,
                transcript=next(lines),
                prosody=_prosody(label, speakers[gender], rng),
                seed=rng.getrandbits(63),
                # The first turn starts a few seconds into the dialog recording.
                gap=rng.uniform(1.5, 8.0) if index == 0 else rng.uniform(0.2, 1.4),
            )
        )
        numbers[gender] += 1
    return turns


def _add_tags(turns: list[Turn], rng: random.Random) -> None:
    """Give one turn a tag-only transcript and insert a tag into another turn's text."""
    tag_only, embedded = rng.sample(turns, 2)
    tag_only.transcript = rng.choice(TAG_ONLY_TAGS)
    words = embedded.transcript.split()
    words.insert(rng.randint(0, len(words)), rng.choice(EMBEDDED_TAGS))
    embedded.transcript = " ".join(words)


def plan_session(
    session: int, n: int, seed: int, sentences: dict[str, list[str]]
) -> dict[str, list[Turn]]:
    """Plan every turn of one session (not yet rendered).

    Takes the session number, the utterances per speaker, the corpus seed and the
    sentence sections. Returns {dialog name: turns in time order}. Each session has its
    own random stream, so a session is the same whichever other sessions are generated.
    """
    rng = random.Random(f"mtl-ser-demo:{seed}:{session}")
    female, male = SPEAKERS[session]
    speakers = {"F": female, "M": male}
    labels = {"F": _speaker_labels(n, rng), "M": _speaker_labels(n, rng)}
    dialogs = DIALOGS[session]
    # Opposite orders, so the speakers' extra turns fall into different dialogs.
    female_counts = _split(n, len(dialogs))
    male_counts = female_counts[::-1]
    improvised = _cycle_shuffled(sentences["improvised"], rng)
    plan = {}
    for dialog, n_female, n_male in zip(dialogs, female_counts, male_counts, strict=True):
        number = _script_number(dialog)
        # Every session reads the same scripts line by line; improvisations are drawn.
        lines = iter(sentences[f"script{number}"] * n) if number else improvised
        counts = {"F": n_female, "M": n_male}
        plan[dialog] = _dialog_turns(dialog, counts, speakers, labels, lines, rng)
    _add_tags([turn for turns in plan.values() for turn in turns], rng)
    return plan


# ---------------------------------------------------------------------------- rendering


def _speak(text: str, speaker: Speaker, prosody: Prosody) -> np.ndarray:
    """Synthesise `text` with espeak-ng; returns float32 samples at 16 kHz."""
    samples, rate = synthesize(
        text,
        voice=speaker.voice,
        rate=round(prosody.rate),
        pitch=round(prosody.pitch),
        pitch_range=round(prosody.range),
        volume=round(prosody.volume),
    )
    # 16000 / 22050 = 320 / 441
    return resample_poly(samples, SAMPLE_RATE, rate).astype(np.float32)


def _speech(text: str, speaker: Speaker, prosody: Prosody) -> np.ndarray:
    """Speak `text`, re-speaking it faster when it would run past MAX_SPEECH_SECONDS."""
    audio = _speak(text, speaker, prosody)
    seconds = len(audio) / SAMPLE_RATE
    if seconds > MAX_SPEECH_SECONDS:
        rate = prosody.rate * seconds / (MAX_SPEECH_SECONDS - 0.1)
        faster = Prosody(rate=rate, pitch=prosody.pitch, range=prosody.range, volume=prosody.volume)
        audio = _speak(text, speaker, faster)
    return audio


def _breath(rng: np.random.Generator) -> np.ndarray:
    """Return a soft low-passed noise burst of 0.35-0.6 s, standing in for a breath."""
    length = int(rng.uniform(0.35, 0.6) * SAMPLE_RATE)
    noise = lfilter([0.15], [1.0, -0.85], rng.standard_normal(length))
    return (np.hanning(length) * noise * rng.uniform(0.03, 0.06)).astype(np.float32)


def _nonspeech(
    tag: str, speaker: Speaker, prosody: Prosody, rng: np.random.Generator
) -> np.ndarray:
    """Render a tag-only turn: a laugh-like syllable train for laughter, else a breath."""
    if tag == "[LAUGHTER]":
        laugh = Prosody(
            rate=220, pitch=min(prosody.pitch + 15, 100), range=90, volume=prosody.volume
        )
        return _speak("ha ha ha", speaker, laugh)
    return _breath(rng)


def render(utterance: Turn) -> np.ndarray:
    """Synthesise one turn: speech (tags stripped) or non-speech, with 50-200 ms of
    leading and trailing pause and a low noise floor. Returns int16 samples at 16 kHz."""
    rng = np.random.default_rng(utterance.seed)
    spoken = strip_tags(utterance.transcript)
    if spoken:
        audio = _speech(spoken, utterance.speaker, utterance.prosody)
    else:
        audio = _nonspeech(utterance.transcript, utterance.speaker, utterance.prosody, rng)
    pads = (rng.uniform(0.05, 0.2, size=2) * SAMPLE_RATE).astype(int)
    audio = np.concatenate([np.zeros(pads[0], np.float32), audio, np.zeros(pads[1], np.float32)])
    audio = audio + NOISE_FLOOR * rng.standard_normal(len(audio))
    return np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16)


def _set_times(turns: list[Turn]) -> None:
    """Place rendered turns on the dialog clock: gap, then the turn's duration.

    Times are rounded to 4 decimals as in the release, and each end is derived from
    the rounded start, so end - start matches the wav duration within 0.1 ms.
    """
    clock = 0.0
    for turn in turns:
        turn.start = round(clock + turn.gap, 4)
        turn.end = round(turn.start + len(turn.samples) / SAMPLE_RATE, 4)
        clock = turn.end


# ------------------------------------------------------------------------------ writing


def _categories(label: str, rng: random.Random) -> list[str]:
    """Return three evaluators' category lists ("Neutral; Sadness;") for one turn.

    A labelled turn has a majority for its category; xxx has three different ones.
    """
    if label == "xxx":
        names = rng.sample(list(CATEGORY.values()) + list(_OTHER_CATEGORIES), 3)
        return [f"{name};" for name in names]
    main = CATEGORY[label]
    others = [name for name in CATEGORY.values() if name != main] + list(_OTHER_CATEGORIES)
    votes = [f"{main};", f"{main};"]
    # The third evaluator agrees, adds a second category, or disagrees.
    third = rng.choice((f"{main};", f"{main}; {rng.choice(others)};", f"{rng.choice(others)};"))
    votes.insert(rng.randint(0, 2), third)
    return votes


def _rating(mean: float, rng: random.Random) -> int:
    """Return one evaluator's integer 1-5 rating around `mean`."""
    return int(np.clip(round(mean + rng.gauss(0.0, 0.7)), 1, 5))


def evaluation_block(turn: Turn, evaluators: Sequence[str]) -> str:
    """Return the EmoEvaluation block of one turn: the TAB-separated summary line, then
    categorical (C-) and dimensional (A-) lines of single annotators."""
    rng = random.Random(turn.seed)
    self_rater = f"{turn.speaker.gender}1"
    ratings = [[_rating(mean, rng) for mean in VAD[turn.label]] for _ in range(3)]
    vad = np.mean(ratings, axis=0)
    lines = [
        f"[{turn.start:.4f} - {turn.end:.4f}]\t{turn.utt_id}\t{turn.label}\t"
        f"[{vad[0]:.4f}, {vad[1]:.4f}, {vad[2]:.4f}]"
    ]
    for rater, votes in zip(evaluators, _categories(turn.label, rng), strict=True):
        lines.append(f"C-{rater}:\t{votes}\t()")
    self_vote = CATEGORY.get(turn.label, rng.choice(_OTHER_CATEGORIES))
    lines.append(f"C-{self_rater}:\t{self_vote};\t()")
    for rater, (val, act, dom) in zip([*evaluators[:2], self_rater], ratings, strict=True):
        lines.append(f"A-{rater}:\tval {val}; act {act}; dom  {dom};\t()")
    return "\n".join(lines)


def transcription_line(turn: Turn) -> str:
    """Return `<utt_id> [SSS.ssss-EEE.eeee]: <text>` as in the release's transcriptions."""
    return f"{turn.utt_id} [{turn.start:08.4f}-{turn.end:08.4f}]: {turn.transcript}"


def _write_dialog(session_dir: Path, dialog: str, turns: list[Turn]) -> None:
    """Write the wavs, the EmoEvaluation file and the transcription file of one dialog."""
    wav_dir = session_dir / "sentences" / "wav" / dialog
    wav_dir.mkdir(parents=True, exist_ok=True)
    for turn in turns:
        sf.write(wav_dir / f"{turn.utt_id}.wav", turn.samples, SAMPLE_RATE, subtype="PCM_16")
    # As in the release, one team of evaluators rates a whole dialog.
    evaluators = sorted(random.Random(f"{dialog}:evaluators").sample(EVALUATORS, 3))
    blocks = [EVALUATION_HEADER] + [evaluation_block(turn, evaluators) for turn in turns]
    evaluation = session_dir / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
    evaluation.parent.mkdir(parents=True, exist_ok=True)
    evaluation.write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")
    transcription = session_dir / "dialog" / "transcriptions" / f"{dialog}.txt"
    transcription.parent.mkdir(parents=True, exist_ok=True)
    transcription.write_text(
        "".join(transcription_line(turn) + "\n" for turn in turns), encoding="utf-8"
    )


# ------------------------------------------------------------------- marker and cleanup


def _session_dirs(out_dir: Path) -> list[Path]:
    """Return the SessionN folders in `out_dir`; refuse folders this module did not write."""
    found = sorted(p for p in out_dir.glob("Session*") if re.fullmatch(r"Session\d+", p.name))
    foreign = [p for p in found if not (p / SESSION_STAMP).is_file()]
    if foreign:
        raise FileExistsError(
            f"{out_dir} holds {', '.join(p.name for p in foreign)} not written by the demo "
            "generator (a real IEMOCAP copy?); refusing to overwrite. Use another folder."
        )
    return found


def _read_marker(out_dir: Path) -> dict | None:
    """Return the parsed marker file, or None when it is missing or unreadable."""
    try:
        return json.loads((out_dir / MARKER_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _remove_previous(out_dir: Path) -> None:
    """Delete what an earlier run wrote: the marker first, then its SessionN folders."""
    sessions = _session_dirs(out_dir)
    (out_dir / MARKER_NAME).unlink(missing_ok=True)
    for session_dir in sessions:
        shutil.rmtree(session_dir)


def _write_marker(out_dir: Path, arguments: dict, summary: dict) -> None:
    """Write the marker atomically (rename), so a half-written marker is never seen."""
    marker = {
        "generator": "mtl_ser.data.demo",
        "generator_version": GENERATOR_VERSION,
        "espeak_ng_version": espeak_version(),
        "seed": arguments["seed"],
        "arguments": arguments,
        "summary": summary,
    }
    tmp = out_dir / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(out_dir / MARKER_NAME)


# --------------------------------------------------------------------------- public API


def _arguments(seed: int, utterances_per_speaker: int, sessions: Sequence[int]) -> dict:
    """Validate the arguments; returns them in the form stored in the marker."""
    chosen = sorted(set(sessions))
    if not chosen or any(s not in ALL_SESSIONS for s in chosen):
        raise ValueError(f"sessions must be a non-empty subset of {ALL_SESSIONS}, got {sessions}")
    fewest = max(len(DIALOGS[s]) for s in chosen)
    if utterances_per_speaker < fewest:
        raise ValueError(
            f"utterances_per_speaker must be at least {fewest} (both speakers talk in "
            f"each of the {fewest} dialogs of a session), got {utterances_per_speaker}"
        )
    return {
        "seed": int(seed),
        "utterances_per_speaker": int(utterances_per_speaker),
        "sessions": chosen,
    }


def synthesize_demo_corpus(
    out_dir: str | Path,
    seed: int = 0,
    utterances_per_speaker: int = 30,
    sessions: Sequence[int] = ALL_SESSIONS,
    progress: bool = True,
) -> dict:
    """Write the demo corpus into `out_dir` (created if needed), unless it is there already.

    Takes the output folder, the seed (same seed, byte-identical files), the utterances
    per speaker and session (all labels together; at least 4), the sessions (subset of
    1-5) and whether to show a progress bar.
    Returns the summary: "utterances", "per_session" ({"Session1": n}), "per_dialog",
    "per_label" (raw labels), "audio_seconds", "elapsed_seconds", plus "skipped": True
    when an existing corpus made with the same arguments was kept as it is.
    A corpus with other arguments, or without its marker (an interrupted run), is
    deleted first: only its SessionN folders and the marker, never other files.
    Raises FileExistsError when `out_dir` holds SessionN folders this module did not write.
    """
    out = Path(out_dir)
    arguments = _arguments(seed, utterances_per_speaker, sessions)
    out.mkdir(parents=True, exist_ok=True)
    marker = _read_marker(out)
    if (
        marker is not None
        and marker.get("generator_version") == GENERATOR_VERSION
        and marker.get("arguments") == arguments
    ):
        return {**marker["summary"], "skipped": True}
    _remove_previous(out)
    started = time.perf_counter()
    sentences = load_sentences()
    plans = {
        s: plan_session(s, arguments["utterances_per_speaker"], arguments["seed"], sentences)
        for s in arguments["sessions"]
    }
    total = sum(len(turns) for plan in plans.values() for turns in plan.values())
    with Progress("demo corpus", total=total, unit="utterance", enabled=progress) as bar:
        for session, plan in plans.items():
            session_dir = out / f"Session{session}"
            session_dir.mkdir()
            (session_dir / SESSION_STAMP).write_text("written by mtl_ser.data.demo\n")
            for dialog, turns in plan.items():
                for turn in turns:
                    turn.samples = render(turn)
                    bar.update()
                _set_times(turns)
                _write_dialog(session_dir, dialog, turns)
    summary = _summary(plans, time.perf_counter() - started)
    _write_marker(out, arguments, summary)
    return {**summary, "skipped": False}


def _summary(plans: dict[int, dict[str, list[Turn]]], elapsed: float) -> dict:
    """Count utterances per session, dialog and raw label, and the seconds of audio."""
    turns = [turn for plan in plans.values() for dialog in plan.values() for turn in dialog]
    return {
        "utterances": len(turns),
        "per_session": {f"Session{s}": sum(map(len, plan.values())) for s, plan in plans.items()},
        "per_dialog": {d: len(t) for plan in plans.values() for d, t in plan.items()},
        "per_label": dict(sorted(Counter(turn.label for turn in turns).items())),
        "audio_seconds": round(sum(len(t.samples) for t in turns) / SAMPLE_RATE, 3),
        "elapsed_seconds": round(elapsed, 3),
    }

"""IEMOCAP parsing traps on a small hand-made tree with exactly known contents."""

from collections import Counter

import pytest

from mtl_ser.data.iemocap import (
    FULL_RELEASE_4CLASS_PER_SESSION,
    FULL_RELEASE_RAW_COUNTS,
    ScanReport,
    Utterance,
    check_full_release,
    parse_utterance_id,
    scan_iemocap,
)
from tests.builders import build_trap_tree, write_wav


@pytest.fixture
def trap_tree(tmp_path):
    return build_trap_tree(tmp_path / "IEMOCAP")


@pytest.mark.parametrize(
    "utt_id, spk, gender, dialog, session",
    [
        ("Ses01F_impro01_M000", "Ses01M", "M", "Ses01F_impro01", 1),
        ("Ses01M_impro01_F003", "Ses01F", "F", "Ses01M_impro01", 1),
        ("Ses03M_impro05a_F002", "Ses03F", "F", "Ses03M_impro05a", 3),
        ("Ses03M_impro08b_M010", "Ses03M", "M", "Ses03M_impro08b", 3),
        ("Ses05M_script01_1b_F010", "Ses05F", "F", "Ses05M_script01_1b", 5),
        ("Ses05M_script01_1_M001", "Ses05M", "M", "Ses05M_script01_1", 5),
    ],
)
def test_speaker_comes_from_last_segment(utt_id, spk, gender, dialog, session):
    info = parse_utterance_id(utt_id)
    assert (info.spk, info.gender, info.dialog, info.session) == (spk, gender, dialog, session)


@pytest.mark.parametrize("bad", ["Ses01F_impro01", "ses01F_impro01_F000", "Ses1F_impro01_F000"])
def test_malformed_ids_are_refused(bad):
    with pytest.raises(ValueError, match="not an IEMOCAP utterance id"):
        parse_utterance_id(bad)


def test_scan_keeps_exactly_the_labelled_wavs(trap_tree):
    utterances, report = scan_iemocap(trap_tree, progress=False)
    by_id = {u.id: u for u in utterances}
    assert sorted(by_id) == sorted(
        [
            "Ses01F_impro01_F000",
            "Ses01F_impro01_F001",
            "Ses01F_impro01_F002",
            "Ses01F_impro01_M000",
            "Ses01F_impro01_M001",
            "Ses01M_script01_1_F000",
            "Ses01M_script01_1_M000",
            "Ses03M_impro05a_F000",
            "Ses03M_impro05a_M000",
            "Ses03M_impro05b_F000",
            "Ses03M_impro05b_M000",
            "Ses03M_impro08b_M000",
            "Ses05M_script01_1_F000",
            "Ses05M_script01_1_M000",
            "Ses05M_script01_1b_F000",
            "Ses05M_script01_1b_M000",
        ]
    )
    assert report.sessions_found == [1, 3, 5]
    # Whole-id matching: the _1 and _1b dialogs keep their own labels and transcripts.
    assert by_id["Ses05M_script01_1_M000"].label_raw == "ang"
    assert by_id["Ses05M_script01_1b_M000"].label_raw == "neu"
    assert by_id["Ses05M_script01_1b_M000"].transcript == "Four."
    assert by_id["Ses05M_script01_1b_M000"].dialog == "Ses05M_script01_1b"
    # Speakers from the last segment, also in suffixed dialogs.
    assert by_id["Ses03M_impro05a_F000"].spk == "Ses03F"
    assert by_id["Ses01F_impro01_M000"].spk == "Ses01M"
    assert by_id["Ses01M_script01_1_F000"].scripted is True
    assert by_id["Ses01F_impro01_F000"].scripted is False
    assert by_id["Ses01F_impro01_F000"].wav == (
        "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    )
    assert by_id["Ses01F_impro01_F000"].duration == pytest.approx(0.2)
    # The annotator lines did not turn into labels, and raw labels are counted.
    assert report.label_entries == 17
    assert report.raw_label_counts == Counter(
        {"neu": 5, "ang": 4, "sad": 3, "hap": 2, "exc": 1, "xxx": 1, "fru": 1}
    )


def test_scan_reports_every_mismatch(trap_tree):
    _, report = scan_iemocap(trap_tree, progress=False)
    assert report.labels_without_wav == ["Ses05M_script01_1b_M002"]
    assert report.wavs_without_label == ["Ses05M_script01_1_F009"]
    assert report.transcripts_without_wav == ["Ses05M_script01_1_MXX0", "Ses05M_script01_1b_M002"]
    assert report.wavs_without_transcript == ["Ses05M_script01_1_F000", "Ses05M_script01_1_F009"]
    assert sorted(report.ignored_files) == [
        "Session1/dialog/EmoEvaluation/._Ses01F_impro01.txt",
        "Session1/dialog/transcriptions/._Ses01F_impro01.txt",
        "Session1/sentences/wav/Ses01F_impro01/._Ses01F_impro01_F000.wav",
    ]
    text = "\n".join(report.lines())
    assert "labels without wav: 1: Ses05M_script01_1b_M002" in text
    assert "transcripts without wav: 2: Ses05M_script01_1_MXX0, Ses05M_script01_1b_M002" in text


def test_wav_without_transcript_is_kept_with_empty_text(trap_tree):
    utterances, _ = scan_iemocap(trap_tree, progress=False)
    utt = {u.id: u for u in utterances}["Ses05M_script01_1_F000"]
    assert utt.transcript == "" and utt.wrd == ""


def test_unreadable_and_empty_wavs_fail_naming_the_file(trap_tree):
    bad = trap_tree / "Session3/sentences/wav/Ses03M_impro05a/Ses03M_impro05a_F000.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    empty = trap_tree / "Session3/sentences/wav/Ses03M_impro05b/Ses03M_impro05b_F000.wav"
    write_wav(empty, seconds=0)
    with pytest.raises(ValueError) as err:
        scan_iemocap(trap_tree, progress=False)
    assert "2 unusable wav" in str(err.value)
    assert "Ses03M_impro05a_F000.wav (unreadable" in str(err.value)
    assert "Ses03M_impro05b_F000.wav (no samples)" in str(err.value)


def test_no_session_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no IEMOCAP session folder"):
        scan_iemocap(tmp_path, progress=False)


def _release_like(counts_per_session: dict[int, Counter]) -> tuple[list[Utterance], ScanReport]:
    """Header-only utterances with the given raw label counts per session (no audio)."""
    utterances = []
    for session, counts in counts_per_session.items():
        for label, n in counts.items():
            for i in range(n):
                utterances.append(
                    Utterance(
                        f"Ses0{session}F_x_{label}{i}",
                        "",
                        1.0,
                        label,
                        "",
                        session,
                        "",
                        "",
                        "F",
                        False,
                    )
                )
    report = ScanReport(sessions_found=[1, 2, 3, 4, 5], label_entries=len(utterances))
    return utterances, report


def _published_counts() -> dict[int, Counter]:
    """Per-session raw counts that add up to the published release totals."""
    per_session = {s: Counter() for s in range(1, 6)}
    remaining = dict(FULL_RELEASE_RAW_COUNTS)
    for s in range(1, 5):
        quota = FULL_RELEASE_4CLASS_PER_SESSION[s]
        for label in remaining:
            take = min(remaining[label], quota - sum(per_session[s].values()), 300)
            per_session[s][label] += take
            remaining[label] -= take
    per_session[5].update(remaining)
    per_session[5]["xxx"] = 10039 - 5531
    return per_session


def test_full_release_counts_are_enforced():
    counts = _published_counts()
    assert sum(counts[5][k] for k in FULL_RELEASE_RAW_COUNTS) == FULL_RELEASE_4CLASS_PER_SESSION[5]
    utterances, report = _release_like(counts)
    assert "counts match" in check_full_release(utterances, report)[0]

    assert counts[2]["ang"] > 0
    counts[2]["ang"] -= 1
    counts[2]["xxx"] += 1
    utterances, report = _release_like(counts)
    with pytest.raises(ValueError) as err:
        check_full_release(utterances, report)
    assert "ang: 1102, expected 1103" in str(err.value)
    assert "Session2 4-class: 1022, expected 1023" in str(err.value)


def test_partial_corpus_is_only_reported(trap_tree):
    utterances, report = scan_iemocap(trap_tree, progress=False)
    assert check_full_release(utterances, report) == [
        "partial corpus (3 session(s), 17 labelled utterances): release counts not checked"
    ]

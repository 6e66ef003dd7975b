"""RAVDESS, CREMA-D, MSP-Podcast and Hugging Face preparation on small trees in each
corpus's exact layout: records, folds, transcripts, label sets, malformed names, missing
transcripts, unknown speakers, skip-if-done."""

from __future__ import annotations

import json
import re

import pytest
import soundfile

from mtl_ser.cli import main
from mtl_ser.data.corpora.crema_d import prepare_crema_d
from mtl_ser.data.corpora.msp_podcast import prepare_msp_podcast
from mtl_ser.data.corpora.ravdess import parse_name, prepare_ravdess
from mtl_ser.data.labels import LabelSet
from mtl_ser.data.manifest import read_split_info
from mtl_ser.data.protocols import speaker_folds
from tests.builders import write_wav
from tests.corpus_builders import build_crema_d, build_msp_podcast, build_ravdess


def read(path):
    return json.loads(path.read_text())


def read_all(paths):
    return {split: read(path) for split, path in paths.items()}


# ------------------------------------------------------------------------------ folds
def test_speaker_folds_are_disjoint_balanced_and_deterministic():
    speakers = {f"A{i:02d}": "M" if i % 2 else "F" for i in range(1, 25)}
    seen = set()
    for fold in range(1, 7):
        test, valid = speaker_folds(speakers, 6, fold)
        assert len(test) == 4 and sorted(speakers[s] for s in test) == ["F", "F", "M", "M"]
        assert not test & valid and not test & seen
        assert valid == speaker_folds(speakers, 6, fold % 6 + 1)[0]
        seen |= test
    assert seen == set(speakers)
    with pytest.raises(ValueError, match="at least 3 folds"):
        speaker_folds(speakers, 2, 1)
    with pytest.raises(ValueError, match="fold 7 out of range 1..6"):
        speaker_folds(speakers, 6, 7)


# ---------------------------------------------------------------------------- RAVDESS
def test_ravdess_actor_fold(tmp_path, capsys):
    root = build_ravdess(tmp_path / "ravdess")
    out = tmp_path / "out"
    splits = read_all(prepare_ravdess(root, out, fold=1, folds=3, verbose=False))
    # Sorted by (gender, actor), dealt round robin: fold 1 = Actor_02 (F) + Actor_01 (M).
    assert {r["spk"] for r in splits["test"].values()} == {"Actor_01", "Actor_02"}
    assert {r["spk"] for r in splits["valid"].values()} == {"Actor_03", "Actor_04"}
    assert {r["spk"] for r in splits["train"].values()} == {"Actor_05", "Actor_06"}
    record = splits["test"]["03-01-05-02-01-02-01"]
    assert record["emo"] == "ang" and record["gender"] == "M" and record["intensity"] == "strong"
    assert record["transcript"] == "Kids are talking by the door"
    assert record["wrd"] == "KIDS ARE TALKING BY THE DOOR" and record["has_text"]
    assert splits["test"]["03-01-04-01-02-01-02"]["wrd"] == "DOGS ARE SITTING BY THE DOOR"
    assert splits["test"]["03-01-04-01-02-01-02"]["gender"] == "F"
    # 48 kHz files are converted once under the output folder.
    assert record["wav"] == "{manifest_root}/audio_16k/03-01-05-02-01-02-01.wav"
    info = soundfile.info(str(out / "audio_16k/03-01-05-02-01-02-01.wav"))
    assert (info.samplerate, info.frames) == (16000, 1600)
    assert LabelSet.load(out).classes == ("neu", "cal", "hap", "sad", "ang", "fea", "dis", "sur")
    assert read_split_info(out) == {
        "protocol": "ravdess_actors",
        "fold": 1,
        "folds": 3,
        "speaker_independent": True,
        "description": "ravdess_actors fold 1 of 3: test = Actor_01, Actor_02; "
        "valid = Actor_03, Actor_04; speaker-independent",
    }
    # Same options: skipped; a new file: prepared again.
    prepare_ravdess(root, out, fold=1, folds=3, verbose=True)
    assert "already prepared" in capsys.readouterr().out
    write_wav(root / "Actor_06/03-01-08-01-01-01-06.wav", seconds=0.1, rate=48000)
    splits = read_all(prepare_ravdess(root, out, fold=1, folds=3, verbose=False))
    assert "03-01-08-01-01-01-06" in splits["train"]


def test_ravdess_four_classes_drop_and_count(tmp_path):
    root = build_ravdess(tmp_path / "ravdess")
    out = tmp_path / "out"
    splits = read_all(prepare_ravdess(root, out, 2, 3, label_set="4class", verbose=False))
    assert {r["emo"] for s in splits.values() for r in s.values()} == {"neu", "ang", "sad"}
    assert "dropped (label outside the set): cal 6" in (out / "summary.txt").read_text()


@pytest.mark.parametrize(
    "name, folder, message",
    [
        ("03-01-01-02-01-01-01.wav", 1, "neutral (01) has no strong intensity (02)"),
        ("03-01-03-01-01-01-05.wav", 2, "actor 05 in the name, but the folder is Actor_02"),
        ("03-01-09-01-01-01-03.wav", 3, "emotion 09 is not one of 01-08"),
        ("01-01-03-01-01-01-03.wav", 3, "modality 01 is not 03 (audio-only)"),
        ("03-01-03-01-03-01-03.wav", 3, "statement 03 is not 01 or 02"),
        ("03-01-03-01-01-01-3.wav", 3, "not a RAVDESS name"),
        ("03-01-03-01-01-01-25.wav", 3, "actor 25 is not in 01-24"),
    ],
)
def test_ravdess_names_follow_the_convention(name, folder, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_name(name, folder)


def test_ravdess_malformed_files_and_songs_are_named(tmp_path, capsys):
    root = build_ravdess(tmp_path / "ravdess")
    for bad in ("Actor_01/03-01-01-02-01-01-01.wav", "Actor_02/03-01-03-01-01-01-05.wav"):
        write_wav(root / bad, rate=48000)
    write_wav(root / "Actor_05/03-02-03-01-01-01-05.wav", rate=48000)  # a song
    (root / "Actor_05/notes.txt").write_text("ignored")
    with pytest.raises(ValueError) as err:
        prepare_ravdess(root, tmp_path / "out", folds=3, verbose=False)
    message = str(err.value)
    assert "3 bad file(s)" in message
    assert "Actor_01/03-01-01-02-01-01-01.wav: neutral (01) has no strong intensity" in message
    assert "Actor_02/03-01-03-01-01-01-05.wav: actor 05 in the name" in message
    assert "Actor_05/03-02-03-01-01-01-05.wav: a song (vocal channel 02)" in message
    assert not (tmp_path / "out/train.json").exists()
    # Songs skipped by option, the two malformed files skipped and named.
    prepare_ravdess(root, tmp_path / "out", folds=3, songs="skip", on_error="skip")
    printed = capsys.readouterr().out
    assert "skipped Actor_01/03-01-01-02-01-01-01.wav: neutral (01)" in printed
    summary = (tmp_path / "out/summary.txt").read_text()
    assert "song files skipped (--songs skip): 1" in summary
    assert "skipped files: 2" in summary
    assert "ignored (not .wav or macOS ._*): 1: Actor_05/notes.txt" in summary


# ---------------------------------------------------------------------------- CREMA-D
def test_crema_d_folds_sentences_and_sex(tmp_path):
    root = build_crema_d(tmp_path / "crema")
    out = tmp_path / "out"
    splits = read_all(prepare_crema_d(root, out, fold=1, folds=3, verbose=False))
    # F: 1002, 1003, 1006 and M: 1001, 1004, 1005 dealt round robin over 3 folds.
    assert {r["spk"] for r in splits["test"].values()} == {"1001", "1002"}
    assert {r["spk"] for r in splits["valid"].values()} == {"1003", "1004"}
    record = splits["test"]["1002_WSI_SAD_LO"]
    assert (record["emo"], record["gender"], record["level"], record["sentence"]) == (
        "sad",
        "F",
        "LO",
        "WSI",
    )
    assert record["transcript"] == "We'll stop in a couple of minutes"
    assert record["wrd"] == "WE'LL STOP IN A COUPLE OF MINUTES"
    assert splits["test"]["1001_IEO_NEU_XX"]["wrd"] == "IT'S ELEVEN O'CLOCK"
    assert record["wav"] == "{data_root}/AudioWAV/1002_WSI_SAD_LO.wav"  # 16 kHz: not copied
    assert not (out / "audio_16k").exists()
    assert (
        "actor sex from VideoDemographics.csv: 3 female, 3 male"
        in (out / "summary.txt").read_text()
    )
    assert LabelSet.load(out).classes == ("ang", "dis", "fea", "hap", "neu", "sad")


def test_crema_d_malformed_names_and_missing_demographics(tmp_path):
    root = build_crema_d(tmp_path / "crema", demographics=False)
    for name in ("1001_KOH_ANG_XX.wav", "1002_IEO_HAP_ZZ.wav", "0999_IEO_HAP_HI.wav"):
        write_wav(root / "AudioWAV" / name)
    write_wav(root / "AudioWAV/1001-IEO-HAP-HI.wav")
    with pytest.raises(ValueError) as err:
        prepare_crema_d(root, tmp_path / "out", folds=3, verbose=False)
    message = str(err.value)
    assert "4 bad file(s)" in message
    assert "AudioWAV/1001_KOH_ANG_XX.wav: sentence KOH is not one of" in message
    assert "AudioWAV/1002_IEO_HAP_ZZ.wav: level ZZ is not one of" in message
    assert "AudioWAV/0999_IEO_HAP_HI.wav: actor 0999 is not in 1001-1091" in message
    assert "AudioWAV/1001-IEO-HAP-HI.wav: not a CREMA-D name" in message
    prepare_crema_d(root, tmp_path / "out", folds=3, on_error="skip", verbose=False)
    summary = (tmp_path / "out/summary.txt").read_text()
    assert "no VideoDemographics.csv: actor sex unknown" in summary
    assert "skipped files: 4" in summary


# ------------------------------------------------------------------------ MSP-Podcast
MSP_ROWS = [
    ("MSP-PODCAST_0001_0001.wav", "N", "10", "Female", "Train"),
    ("MSP-PODCAST_0001_0002.wav", "A", "11", "Male", "Train"),
    ("MSP-PODCAST_0002_0001.wav", "H", "Unknown", "Unknown", "Train"),
    ("MSP-PODCAST_0003_0001.wav", "S", "12", "Female", "Development"),
    ("MSP-PODCAST_0003_0002.wav", "X", "12", "Female", "Development"),
    ("MSP-PODCAST_0004_0001.wav", "S", "Unknown", "Male", "Test1"),
    ("MSP-PODCAST_0004_0002.wav", "C", "13", "Male", "Test1"),
    ("MSP-PODCAST_0005_0001.wav", "A", "14", "Female", "Test2"),
    ("MSP-PODCAST_0005_0002.wav", "O", "15", "Male", "Test2"),
]
MSP_TEXT = {
    "MSP-PODCAST_0001_0001": "well I think so",
    "MSP-PODCAST_0004_0002": "Oh, [laughter] really?",
}


def test_msp_podcast_official_split(tmp_path):
    root = build_msp_podcast(tmp_path / "msp", MSP_ROWS, MSP_TEXT)
    out = tmp_path / "out"
    splits = read_all(prepare_msp_podcast(root, out, verbose=False))
    assert sorted(splits["train"]) == [
        "MSP-PODCAST_0001_0001",
        "MSP-PODCAST_0001_0002",
        "MSP-PODCAST_0002_0001",
    ]
    assert sorted(splits["valid"]) == ["MSP-PODCAST_0003_0001"]  # X: no agreement, dropped
    assert sorted(splits["test"]) == ["MSP-PODCAST_0004_0001", "MSP-PODCAST_0004_0002"]
    contempt = splits["test"]["MSP-PODCAST_0004_0002"]
    assert (contempt["emo"], contempt["wrd"], contempt["spk"], contempt["gender"]) == (
        "con",
        "OH REALLY",
        "13",
        "M",
    )
    assert contempt["arousal"] == 4.2 and contempt["scripted"] is False
    # No transcript file: kept for emotion, no text.
    missing = splits["train"]["MSP-PODCAST_0001_0002"]
    assert (missing["transcript"], missing["has_text"]) == ("", False)
    # Unknown speakers are each their own speaker: train and test both have one, no overlap.
    assert splits["train"]["MSP-PODCAST_0002_0001"]["spk"] == "unknown:MSP-PODCAST_0002_0001"
    assert splits["test"]["MSP-PODCAST_0004_0001"]["spk"] == "unknown:MSP-PODCAST_0004_0001"
    assert read_split_info(out)["speaker_independent"] is True
    summary = (out / "summary.txt").read_text()
    assert "dropped (label outside the set): xxx 1" in summary
    assert "left out (other test sets): Test2 2" in summary
    assert "segments without a transcript file (kept for SER, no text): 5" in summary
    assert "segments of unknown speakers (each its own speaker): 2" in summary
    # Test2 instead; O (other) is dropped by the 8-class set.
    splits = read_all(prepare_msp_podcast(root, tmp_path / "t2", test_set="Test2", verbose=False))
    assert sorted(splits["test"]) == ["MSP-PODCAST_0005_0001"]
    assert read_split_info(tmp_path / "t2")["protocol"] == "msp_podcast_test2"


def test_msp_podcast_speaker_overlap_and_bad_rows(tmp_path):
    rows = [*MSP_ROWS, ("MSP-PODCAST_0006_0001.wav", "N", "10", "Female", "Test1")]
    root = build_msp_podcast(tmp_path / "msp", rows, MSP_TEXT)
    with pytest.raises(ValueError, match=r"speakers of Test1 also in Train/Development: \['10'\]"):
        prepare_msp_podcast(root, tmp_path / "out", verbose=False)
    prepare_msp_podcast(root, tmp_path / "out", allow_speaker_overlap=True, verbose=False)
    assert read_split_info(tmp_path / "out")["speaker_independent"] is False
    assert "SPEAKER-OVERLAPPING (1 speakers)" in (tmp_path / "out/summary.txt").read_text()

    labels = root / "Labels/labels_consensus.csv"
    labels.write_text(labels.read_text() + "MSP-PODCAST_0007_0001.wav,Z,1,1,1,16,Male,Train\n")
    with pytest.raises(ValueError, match=r"line 12 \(MSP-PODCAST_0007_0001.wav\): EmoClass 'Z'"):
        prepare_msp_podcast(root, tmp_path / "out2", allow_speaker_overlap=True, verbose=False)


# ---------------------------------------------------------------------- Hugging Face
def _hf_dataset(tmp_path):
    from datasets import Audio, ClassLabel, Dataset, DatasetDict

    parts = {}
    for split, speakers in (("train", ["s1", "s2"]), ("validation", ["s3"]), ("test", ["s4"])):
        rows = {"audio": [], "emotion": [], "text": [], "speaker": []}
        for s in speakers:
            for i in range(4):
                rate = 22050 if (s, i) == ("s4", 1) else 16000
                path = write_wav(tmp_path / "src" / f"{s}_{i}.wav", seconds=0.1, rate=rate)
                rows["audio"].append(str(path))
                rows["emotion"].append(i)
                rows["text"].append(f"sentence number {i}")
                rows["speaker"].append(s)
        parts[split] = (
            Dataset.from_dict(rows)
            .cast_column("audio", Audio())
            .cast_column("emotion", ClassLabel(names=["neu", "hap", "ang", "sad"]))
        )
    folder = tmp_path / "hf_dataset"
    DatasetDict(parts).save_to_disk(str(folder))
    for path in (tmp_path / "src").iterdir():  # the saved dataset holds the audio itself
        path.unlink()
    return folder


def test_prepare_hf_from_a_saved_dataset(tmp_path):
    folder = _hf_dataset(tmp_path)
    out = tmp_path / "out"
    args = ["prepare", "hf", "--dataset", str(folder), "--audio-column", "audio"]
    args += ["--label-column", "emotion", "--text-column", "text", "--speaker-column", "speaker"]
    assert main([*args, "--output-folder", str(out)]) == 0
    splits = {s: read(out / f"{s}.json") for s in ("train", "valid", "test")}
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [8, 4, 4]
    record = splits["test"]["test/000001"]
    assert (record["emo"], record["wrd"], record["spk"]) == ("hap", "SENTENCE NUMBER", "s4")
    # The 22,050 Hz example is extracted as stored, then converted to 16 kHz mono.
    assert record["wav"] == "{manifest_root}/audio_16k/test/000001.wav"
    assert soundfile.info(str(out / "audio_16k/test/000001.wav")).samplerate == 16000
    assert splits["train"]["train/000000"]["wav"] == "{manifest_root}/hf_audio/train/000000.wav"
    assert read_split_info(out)["speaker_independent"] is True
    assert read_split_info(out)["protocol"] == "hf"
    summary = (out / "summary.txt").read_text()
    assert "split: from the dataset's splits; speaker-independent" in summary


def test_prepare_hf_bad_examples_are_named(tmp_path):
    from datasets import Audio, Dataset

    paths = [str(write_wav(tmp_path / f"a{i}.wav", seconds=0.1)) for i in range(3)]
    paths.append(str(write_wav(tmp_path / "short.wav", seconds=0.01)))
    ds = Dataset.from_dict(
        {"audio": paths, "label": ["neu", "fru", "sad", "ang"], "part": ["train"] * 3 + ["x"]}
    ).cast_column("audio", Audio())
    ds.save_to_disk(str(tmp_path / "ds"))
    from mtl_ser.data.corpora.hf import prepare_hf

    with pytest.raises(ValueError) as err:
        prepare_hf(str(tmp_path / "ds"), tmp_path / "out", "audio", "label", verbose=False)
    assert "all row 1: emotion 'fru' is not in the label set" in str(err.value)
    assert "all row 3: too short (10.0 ms)" in str(err.value)
    with pytest.raises(ValueError, match="all row 3: split 'x' is not one of"):
        prepare_hf(
            str(tmp_path / "ds"),
            tmp_path / "out",
            "audio",
            "label",
            split_column="part",
            verbose=False,
        )


def test_iemocap_refuses_non_finite_and_too_short_audio(tmp_path):
    import numpy as np

    from mtl_ser.data.prepare import prepare_iemocap
    from tests.builders import build_trap_tree

    root = build_trap_tree(tmp_path / "IEMOCAP")
    wavs = root / "Session1/sentences/wav"
    bad = np.full(3200, 0.01, np.float32)
    bad[5] = np.nan
    soundfile.write(str(wavs / "Ses01F_impro01/Ses01F_impro01_F000.wav"), bad, 16000, "FLOAT")
    soundfile.write(str(wavs / "Ses01F_impro01/Ses01F_impro01_M000.wav"), bad[:160], 16000)
    with pytest.raises(ValueError) as err:
        prepare_iemocap(root, tmp_path / "out", verbose=False)
    message = str(err.value)
    assert "2 bad file(s)" in message
    assert (
        "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav: non-finite audio: "
        "1 sample(s) are NaN or infinite" in message
    )
    assert "Ses01F_impro01_M000.wav: too short (10.0 ms)" in message
    paths = prepare_iemocap(root, tmp_path / "out", on_error="skip", verbose=False)
    kept = {k for p in paths.values() for k in read(p)}
    assert "Ses01F_impro01_F000" not in kept and "Ses01F_impro01_M001" in kept

"""Bring-your-own CSV corpora: row checks, conversion to 16 kHz mono, splits."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mtl_ser.cli import main
from mtl_ser.data.csv_corpus import prepare_csv
from mtl_ser.data.labels import LabelSet, parse_label_list
from tests.builders import write_csv_corpus as make_corpus
from tests.builders import write_wav


def read(path):
    return json.loads(path.read_text())


def test_speaker_group_split_without_split_column(tmp_path):
    csv_path, _ = make_corpus(tmp_path / "audio")
    paths = prepare_csv(csv_path, tmp_path / "audio", tmp_path / "out", verbose=False)
    splits = {s: read(p) for s, p in paths.items()}
    spk = {s: {r["spk"] for r in d.values()} for s, d in splits.items()}
    assert len(spk["test"]) == 1 and len(spk["valid"]) == 1 and len(spk["train"]) == 3
    assert not spk["test"] & (spk["train"] | spk["valid"])
    record = splits["train"][sorted(splits["train"])[0]]
    assert record["wav"].startswith("{data_root}/spk")
    assert record["wrd"].startswith("HELLO NUMBER")
    assert sum(len(d) for d in splits.values()) == 20


def test_split_column_is_used_and_overlap_refused(tmp_path):
    root = tmp_path / "audio"
    csv_path, _ = make_corpus(root, split_column=True)
    paths = prepare_csv(csv_path, root, tmp_path / "out", verbose=False)
    assert {r["spk"] for r in read(paths["test"]).values()} == {"spk0"}
    assert {r["spk"] for r in read(paths["valid"]).values()} == {"spk1"}
    text = csv_path.read_text().replace(
        "spk2/utt0.wav,neu,hello number 0,spk2,train", "spk2/utt0.wav,neu,x,spk0,train"
    )
    csv_path.write_text(text)
    with pytest.raises(ValueError, match=r"test speakers also in train/valid: \['spk0'\]"):
        prepare_csv(csv_path, root, tmp_path / "out", verbose=False)
    paths = prepare_csv(csv_path, root, tmp_path / "out", allow_speaker_overlap=True, verbose=False)
    assert "SPEAKER-OVERLAPPING" in (tmp_path / "out/summary.txt").read_text()


def test_bad_rows_fail_naming_line_and_file(tmp_path):
    root = tmp_path / "audio"
    csv_path, _ = make_corpus(root)
    write_wav(root / "empty.wav", seconds=0)
    (root / "broken.wav").write_bytes(b"not audio at all")
    with open(csv_path, "a") as f:
        f.write("missing.wav,neu,,spk1\n")  # line 22
        f.write("spk1/utt0.wav,,,spk1\n")  # line 23: empty label (and a duplicate)
        f.write("spk1/utt1.wav,fru,,spk1\n")  # line 24: outside the set
        f.write("spk1/utt2.wav,neu,,\n")  # line 25: no speaker
        f.write("empty.wav,neu,,spk1\n")  # line 26
        f.write("broken.wav,neu,,spk1\n")  # line 27
        f.write("spk1/utt3.wav,sad,,spk1\n")  # line 28: same file as line 9
    with pytest.raises(ValueError) as err:
        prepare_csv(csv_path, root, tmp_path / "out", verbose=False)
    message = str(err.value)
    assert "7 bad row(s)" in message
    assert "line 22 (missing.wav): file not found" in message
    assert "line 23 (spk1/utt0.wav): empty emotion label" in message
    assert "line 24 (spk1/utt1.wav): emotion 'fru' is not in the label set" in message
    assert "line 25 (spk1/utt2.wav): empty speaker" in message
    assert "line 26 (empty.wav): empty audio" in message
    assert "line 27 (broken.wav): unreadable audio" in message
    assert "line 28 (spk1/utt3.wav): same file as line 9" in message
    assert not (tmp_path / "out" / "train.json").exists()


def test_bad_rows_skipped_with_one_line_each(tmp_path, capsys):
    root = tmp_path / "audio"
    csv_path, _ = make_corpus(root)
    with open(csv_path, "a") as f:
        f.write("missing.wav,neu,,spk1\nspk1/utt1.wav,fru,,spk9\n")
    paths = prepare_csv(csv_path, root, tmp_path / "out", on_error="skip", verbose=True)
    out = capsys.readouterr().out
    assert "skipped line 22 (missing.wav): file not found" in out
    assert "skipped line 23 (spk1/utt1.wav): emotion 'fru'" in out
    assert "skipped rows: 2" in (tmp_path / "out/summary.txt").read_text()
    assert sum(len(read(p)) for p in paths.values()) == 20


def test_missing_column_is_named(tmp_path):
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("path,label,speaker\na.wav,neu,s\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['emotion'\]"):
        prepare_csv(csv_path, tmp_path, tmp_path / "out", verbose=False)


def test_odd_rates_and_channels_are_converted_once(tmp_path):
    root = tmp_path / "audio"
    csv_path, _ = make_corpus(root)
    write_wav(root / "spk0/utt0.wav", seconds=0.5, rate=24414, channels=2)
    write_wav(root / "spk1/utt0.wav", seconds=0.5, rate=44100)
    paths = prepare_csv(csv_path, root, tmp_path / "out", verbose=False)
    records = {k: v for p in paths.values() for k, v in read(p).items()}
    for utt in ("spk0/utt0", "spk1/utt0"):
        assert records[utt]["wav"] == "{manifest_root}/audio_16k/" + utt + ".wav"
        info = soundfile.info(str(tmp_path / "out/audio_16k" / f"{utt}.wav"))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert info.frames == pytest.approx(8000, abs=2)
        assert records[utt]["duration"] == pytest.approx(0.5, abs=1e-3)
    assert records["spk2/utt0"]["wav"] == "{data_root}/spk2/utt0.wav"
    converted = tmp_path / "out/audio_16k/spk0/utt0.wav"
    stamp = converted.stat().st_mtime_ns
    (tmp_path / "out/PREPARED").unlink()
    prepare_csv(csv_path, root, tmp_path / "out", verbose=False)
    assert converted.stat().st_mtime_ns == stamp  # reused, not converted again


def test_other_label_sets(tmp_path):
    root = tmp_path / "audio"
    csv_path, _ = make_corpus(root)
    text = csv_path.read_text().replace(",hap,", ",sur,")
    csv_path.write_text(text)
    labels = parse_label_list("ang,neu,sad,sur")
    prepare_csv(csv_path, root, tmp_path / "out", label_set=labels, verbose=False)
    assert LabelSet.load(tmp_path / "out").classes == ("ang", "neu", "sad", "sur")


def test_cli_prepare_csv(tmp_path):
    root = tmp_path / "audio"
    csv_path, _ = make_corpus(root)
    args = ["prepare", "csv", "--csv", str(csv_path), "--audio-root", str(root)]
    assert (
        main([*args, "--output-folder", str(tmp_path / "out"), "--labels", "neu,hap,ang,sad"]) == 0
    )
    assert (tmp_path / "out/PREPARED").is_file()


# ------------------------------------------------------------ hostile input (issue 14)
def test_paths_leaving_the_audio_root_are_refused_and_nothing_is_written_outside(
    tmp_path, monkeypatch
):
    work = tmp_path / "l1" / "l2" / "work"
    (work / "a").mkdir(parents=True)
    monkeypatch.chdir(work)
    write_wav(tmp_path / "l1" / "far.wav", seconds=0.3, rate=44100)  # needs conversion
    for s in range(4):
        write_wav(work / "a" / f"s{s}.wav", seconds=0.3)
    rows = [f"s{s}.wav,neu,,spk{s}" for s in range(4)] + ["../../../far.wav,ang,,spk0"]
    Path("c.csv").write_text("path,emotion,transcript,speaker\n" + "\n".join(rows) + "\n")
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(ValueError, match=r"line 6 \(../../../far.wav\): path leads outside"):
        prepare_csv("c.csv", "a", "o", verbose=False)
    assert {p for p in tmp_path.rglob("*")} == before  # nothing written anywhere
    # The explicit opt-in: the converted copy still lands inside the output folder.
    paths = prepare_csv("c.csv", "a", "o", allow_outside_root=True, verbose=False)
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p.resolve().is_relative_to((work / "o").resolve()) for p in written)
    records = {k: v for p in paths.values() for k, v in read(p).items()}
    far = [r for r in records.values() if r["emo"] == "ang"][0]
    assert far["wav"].startswith("{manifest_root}/audio_16k/")


def test_non_finite_audio_is_refused_naming_the_file(tmp_path):
    root = tmp_path / "audio"
    csv_path, _ = make_corpus(root)
    data = np.full(4800, 0.01, dtype=np.float32)
    data[100], data[200] = np.nan, np.inf
    soundfile.write(str(root / "spk1/utt2.wav"), data, 16000, subtype="FLOAT")
    with pytest.raises(ValueError) as err:
        prepare_csv(csv_path, root, tmp_path / "out", verbose=False)
    assert "1 bad row(s)" in str(err.value)
    assert "line 8 (spk1/utt2.wav): non-finite audio: 2 sample(s) are NaN or infinite" in str(
        err.value
    )
    paths = prepare_csv(csv_path, root, tmp_path / "out", on_error="skip", verbose=False)
    assert "spk1/utt2" not in {k for p in paths.values() for k in read(p)}


def test_an_unquoted_comma_in_a_transcript_is_an_error(tmp_path):
    root = tmp_path / "audio"
    csv_path, _ = make_corpus(root)
    text = csv_path.read_text().replace(
        "spk2/utt1.wav,hap,hello number 1,spk2", "spk2/utt1.wav,hap,Oh, no,spk2"
    )
    csv_path.write_text(text + 'spk3/utt9.wav,neu,"Oh, yes",spk3\n')
    write_wav(root / "spk3/utt9.wav", seconds=0.3)
    with pytest.raises(ValueError) as err:
        prepare_csv(csv_path, root, tmp_path / "out", verbose=False)
    message = str(err.value)
    assert "1 bad row(s)" in message  # the quoted comma on line 22 is fine
    assert "line 11 (spk2/utt1.wav): 5 fields where the header has 4 (an unquoted comma" in message


def test_clips_too_short_for_the_encoders_are_refused(tmp_path):
    from mtl_ser.data.audio import MIN_DURATION, MIN_SAMPLES

    assert (MIN_SAMPLES, MIN_DURATION) == (400, 0.025)  # wav2vec2's first window, 25 ms
    root = tmp_path / "audio"
    csv_path, _ = make_corpus(root)
    soundfile.write(str(root / "spk0/utt1.wav"), np.full(399, 0.1, np.float32), 16000)
    soundfile.write(str(root / "spk0/utt2.wav"), np.full(400, 0.1, np.float32), 16000)
    soundfile.write(str(root / "spk0/utt3.wav"), np.full(200, 0.1, np.float32), 8000)  # 25 ms
    with pytest.raises(ValueError) as err:
        prepare_csv(csv_path, root, tmp_path / "out", verbose=False)
    assert "1 bad row(s)" in str(err.value)
    assert (
        "line 3 (spk0/utt1.wav): too short (24.9 ms); the encoders need at least 25 ms "
        "(400 samples at 16000 Hz)" in str(err.value)
    )


def test_check_min_duration_names_short_utterances():
    from mtl_ser.data.manifest import check_min_duration

    check_min_duration({"a": {"duration": 0.025}, "b": {"duration": 3.0}})
    with pytest.raises(ValueError, match=r"test.json: 2 utterance\(s\) shorter than .* 25 ms"):
        check_min_duration(
            {"a": {"duration": 0.0249}, "b": {"duration": 1.0}, "c": {"duration": 0.001}},
            "test.json",
        )


def test_progress_is_one_line_per_loop_off_a_terminal(tmp_path, capsys):
    root = tmp_path / "audio"
    csv_path, _ = make_corpus(root)
    write_wav(root / "spk0/utt0.wav", seconds=0.3, rate=44100)
    prepare_csv(csv_path, root, tmp_path / "out", verbose=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("digesting audio: 20 files in ")
    assert lines[1].startswith("checking audio: 20 files in ")
    assert lines[2].startswith("converting to 16 kHz mono: 1 file in ")


def test_run_identity_carries_speaker_independence(tmp_path):
    from mtl_ser.experiment import run_identity

    root = tmp_path / "audio"
    csv_path, _ = make_corpus(root)
    paths = prepare_csv(csv_path, root, tmp_path / "out", verbose=False)
    hparams = {"train_annotation": str(paths["train"]), "recipe": "mtl", "alpha": 0.1}
    hparams.update(protocol="loso", fold=3, seed=7, encoder_name="random:tiny")
    hparams.update(lr_encoder=5e-5, lr_heads=5e-5)
    identity = run_identity(hparams, LabelSet.load(tmp_path / "out"))
    assert (identity["protocol"], identity["fold"], identity["folds"]) == ("csv", 1, 1)
    assert identity["speaker_independent"] is True


def test_transcripts_in_other_languages_keep_their_letters(tmp_path, capsys):
    root = tmp_path / "audio"
    csv_path, rows = make_corpus(root)
    text = csv_path.read_text().replace("hello number 1", '"Café naïve, über 3 Straße"')
    csv_path.write_text(text.replace("hello number 2", "€5 grüße"))
    paths = prepare_csv(csv_path, root, tmp_path / "out", verbose=True)
    records = {k: v for p in paths.values() for k, v in read(p).items()}
    assert records["spk0/utt1"]["wrd"] == "CAFÉ NAÏVE ÜBER STRAßE"
    assert records["spk0/utt2"]["wrd"] == "GRÜßE"
    line = (
        # "hello number 0" and "hello number 3" drop their digits too.
        "characters dropped from transcripts (not letters): 25: '3' 10, '0' 5, '€' 5, '5' 5; "
        "in 20 utterance(s), e.g. spk0/utt0, spk0/utt1, spk0/utt2 ..."
    )
    assert line in (tmp_path / "out/summary.txt").read_text()
    assert line in capsys.readouterr().out

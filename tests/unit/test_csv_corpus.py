"""Bring-your-own CSV corpora: row checks, conversion to 16 kHz mono, splits."""

import json

import pytest
import soundfile

from mtl_ser.cli import main
from mtl_ser.data.csv_corpus import prepare_csv
from mtl_ser.data.labels import LabelSet, parse_label_list
from tests.builders import write_wav

LABELS = ["neu", "hap", "ang", "sad"]


def make_corpus(root, speakers=5, per_speaker=4, split_column=False):
    """Writes wavs and a CSV; returns (csv path, rows)."""
    rows = []
    for s in range(speakers):
        for i in range(per_speaker):
            path = f"spk{s}/utt{i}.wav"
            write_wav(root / path, seconds=0.3, seed=s * 10 + i)
            row = [path, LABELS[i % 4], f"hello number {i}", f"spk{s}"]
            if split_column:
                row.append("test" if s == 0 else "valid" if s == 1 else "train")
            rows.append(row)
    header = "path,emotion,transcript,speaker" + (",split" if split_column else "")
    csv_path = root / "corpus.csv"
    csv_path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return csv_path, rows


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

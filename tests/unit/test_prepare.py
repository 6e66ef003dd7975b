"""IEMOCAP preparation end to end on the hand-made trap tree: records, splits, skip-if-done."""

import json

import pytest
from speechbrain.dataio.dataset import DynamicItemDataset

from mtl_ser.cli import main
from mtl_ser.data.labels import LabelSet
from mtl_ser.data.manifest import MARKER, OPTIONS_FILE, load_manifest
from mtl_ser.data.prepare import prepare_iemocap
from tests.builders import build_trap_tree


@pytest.fixture
def trap_tree(tmp_path):
    return build_trap_tree(tmp_path / "IEMOCAP")


def read(path):
    return json.loads(path.read_text())


def test_loso_fold1_manifests(trap_tree, tmp_path):
    out = tmp_path / "prep"
    paths = prepare_iemocap(trap_tree, out, protocol="loso", fold=1, verbose=False)
    test, valid, train = read(paths["test"]), read(paths["valid"]), read(paths["train"])
    # Session 1 minus xxx and fru; exc merged into hap.
    assert sorted(test) == [
        "Ses01F_impro01_F000",
        "Ses01F_impro01_M000",
        "Ses01F_impro01_M001",
        "Ses01M_script01_1_F000",
        "Ses01M_script01_1_M000",
    ]
    assert test["Ses01F_impro01_M001"] == {
        "wav": "{data_root}/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M001.wav",
        "duration": 0.2,
        "emo": "hap",
        "label_raw": "exc",
        "wrd": "THAT'S GREAT",
        "transcript": "That's great!",
        "has_text": True,
        "spk": "Ses01M",
        "gender": "M",
        "session": 1,
        "dialog": "Ses01F_impro01",
        "scripted": False,
    }
    # A tag-only transcript stays for SER and is marked for WER to skip.
    assert test["Ses01M_script01_1_M000"]["wrd"] == ""
    assert test["Ses01M_script01_1_M000"]["has_text"] is False
    # Pool (sessions 3 and 5): neu 4, sad 2, ang 2, hap 1 -> one of neu, sad, ang validates.
    assert sorted(r["emo"] for r in valid.values()) == ["ang", "neu", "sad"]
    assert len(train) == 6
    assert not set(train) & set(valid)
    assert {r["session"] for r in list(train.values()) + list(valid.values())} == {3, 5}
    assert LabelSet.load(out).classes == ("neu", "hap", "ang", "sad")
    summary = (out / "summary.txt").read_text()
    assert "dropped (label outside the set): fru 1, xxx 1" in summary
    assert "utterances with no text after normalisation (kept for SER, no WER): 2" in summary


def test_manifests_load_in_speechbrain(trap_tree, tmp_path):
    paths = prepare_iemocap(trap_tree, tmp_path / "prep", verbose=False)
    data = DynamicItemDataset.from_json(paths["test"], replacements={"data_root": str(trap_tree)})
    data.set_output_keys(["id", "wav", "emo"])
    first = data[0]
    assert first["id"] == "Ses01F_impro01_F000"
    assert first["wav"] == str(
        trap_tree / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    )
    records = load_manifest(paths["test"], trap_tree)
    assert records["Ses01F_impro01_F000"]["wav"] == str(
        (trap_tree / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav").resolve()
    )


def test_same_options_skip_and_changed_options_regenerate(trap_tree, tmp_path, capsys):
    out = tmp_path / "prep"
    prepare_iemocap(trap_tree, out, verbose=False)
    first_valid = read(out / "valid.json")
    prepare_iemocap(trap_tree, out, verbose=True)
    assert "already prepared with the same options and inputs, skipping" in capsys.readouterr().out

    prepare_iemocap(trap_tree, out, fold=3, verbose=True)
    assert "already prepared" not in capsys.readouterr().out
    assert {r["session"] for r in read(out / "test.json").values()} == {3}
    assert read(out / OPTIONS_FILE)["fold"] == 3

    prepare_iemocap(trap_tree, out, fold=1, keep_exc_apart=True, verbose=False)
    assert LabelSet.load(out).classes == ("neu", "hap", "exc", "ang", "sad")
    assert read(out / "test.json")["Ses01F_impro01_M001"]["emo"] == "exc"

    prepare_iemocap(
        trap_tree, out, fold=1, valid_strategy="speaker", valid_speaker="Ses05F", verbose=False
    )
    assert sorted(read(out / "valid.json")) == ["Ses05M_script01_1_F000", "Ses05M_script01_1b_F000"]
    for seed in range(10):
        prepare_iemocap(trap_tree, out, fold=1, seed=seed, verbose=False)
        if read(out / "valid.json") != first_valid:
            break
    else:
        pytest.fail("changing the seed never changed the validation split")


def test_crashed_preparation_is_redone(trap_tree, tmp_path, capsys):
    out = tmp_path / "prep"
    prepare_iemocap(trap_tree, out, verbose=False)
    (out / MARKER).unlink()  # what a crash before the last write leaves
    (out / "test.json").write_text("{}")
    prepare_iemocap(trap_tree, out, verbose=True)
    assert "already prepared" not in capsys.readouterr().out
    assert len(read(out / "test.json")) == 5


def test_cli_prepare_iemocap(trap_tree, tmp_path, capsys):
    out = tmp_path / "prep"
    status = main(
        [
            "prepare",
            "iemocap",
            "--data-folder",
            str(trap_tree),
            "--output-folder",
            str(out),
            "--protocol",
            "loso_speaker",
            "--fold",
            "2",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "loso_speaker fold 2: test = speaker Ses01M, valid = speaker Ses01F" in printed
    assert {r["spk"] for r in read(out / "test.json").values()} == {"Ses01M"}
    assert {r["spk"] for r in read(out / "valid.json").values()} == {"Ses01F"}


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    status = main(["prepare", "iemocap", "--data-folder", str(tmp_path), "--output-folder", "x"])
    assert status == 2
    assert "no IEMOCAP session folder" in capsys.readouterr().err

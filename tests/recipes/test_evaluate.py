"""`mtl-ser evaluate`: a trained (tiny) model on a prepared manifest and on a CSV of another
label set, with explicit label mapping."""

import csv
import json

import numpy as np
import pytest
import soundfile

from mtl_ser.cli import main
from mtl_ser.data.manifest import load_manifest
from tests.recipes.helpers import read_json


def rows(path):
    with open(path) as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def test_evaluate_reproduces_the_runs_test_pass(mtl_run, tmp_path):
    run = mtl_run[0]
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), str(run / "manifests/test.json"), "--output", str(out)]) == 0
    expected, got = read_json(run / "results.json"), read_json(out / "results.json")
    for key in ("wa", "ua", "macro_f1"):
        assert got[key] == pytest.approx(expected[key]), key
    for key in ("confusion_matrix", "num_utterances", "labels"):
        assert got[key] == expected[key], key
    assert got["wer"] == pytest.approx(expected["wer"]) and got["wer"] is not None
    assert (got["recipe"], got["alpha"], got["fold"]) == ("mtl", expected["alpha"], 1)
    assert got["protocol"] == "loso-on-iemocap_test"
    assert got["speaker_independent"] is None  # not claimed for another set
    assert got["setting"] == expected["setting"] and got["setting"]["values"]["fold"] == 1
    assert got["evaluation"]["label_map"] == {} and got["evaluation"]["excluded_unmapped"] == {}
    before, after = rows(run / "predictions.csv"), rows(out / "predictions.csv")
    assert before.keys() == after.keys()
    assert all(after[k]["predicted"] == before[k]["predicted"] for k in before)
    assert all(after[k]["speaker"] == before[k]["speaker"] != "" for k in before)
    assert got["groups"] == expected["groups"]  # per speaker and gender, as the recipe's
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_a_csv_with_an_explicit_label_map(mtl_run, demo_corpus, tmp_path, capsys):
    records = load_manifest(mtl_run[0] / "manifests/test.json", demo_corpus)
    names = {"neu": "neutral", "hap": "happy", "ang": "angry", "sad": "sad"}
    lines = ["path,emotion,transcript"]
    for _, r in sorted(records.items())[:8]:
        lines.append(f"{r['wav']},{names[r['emo']]},{r['wrd']}")
    lines.append(f"{records[sorted(records)[8]]['wav']},calm,")  # a label the model lacks
    soundfile.write(str(tmp_path / "tiny.wav"), np.full(300, 0.1, np.float32), 16000)
    table = tmp_path / "other.csv"
    table.write_text("\n".join(lines) + "\n")
    model, out = str(mtl_run[0]), str(tmp_path / "out")
    base = ["evaluate", model, str(table), "--output", out]

    assert main(base) == 2
    assert "data label(s) ['angry', 'calm', 'happy', 'neutral'] have no counterpart" in (
        capsys.readouterr().err
    )
    mapping = "neutral=neu,happy=hap,angry=ang"
    assert main([*base, "--label-map", mapping]) == 2
    assert "['calm'] have no counterpart" in capsys.readouterr().err
    assert main([*base, "--label-map", mapping + ",calm=xyz"]) == 2
    assert "targets {'calm': 'xyz'} are not classes of the model" in capsys.readouterr().err
    assert main([*base, "--label-map", mapping, "--drop-unmapped"]) == 0
    results = read_json(tmp_path / "out/results.json")
    assert results["num_utterances"] == 8
    assert results["evaluation"]["excluded_unmapped"] == {"calm": 1}
    assert results["evaluation"]["label_map"] == {"angry": "ang", "happy": "hap", "neutral": "neu"}
    assert results["protocol"] == "loso-on-other"
    assert results["wer"] is not None  # the CSV's transcripts are scored
    gender = results["groups"]["columns"]["gender"]  # a CSV without a gender column: said
    assert gender["groups"] == {} and "no test utterance has a 'gender'" in gender["notes"][0]

    with open(table, "a") as f:
        f.write(f"{tmp_path / 'tiny.wav'},sad,\n")
    assert main([*base, "--label-map", mapping, "--drop-unmapped"]) == 2
    assert "tiny.wav: too short to score" in capsys.readouterr().err
    args = [*base, "--label-map", mapping, "--drop-unmapped", "--on-error", "skip"]
    assert main(args) == 0
    assert json.loads((tmp_path / "out/results.json").read_text())["evaluation"]["skipped"] == 1

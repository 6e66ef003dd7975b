"""The transcript as a second view end to end: one tiny run on the demo corpus trains the
encoder, CTC, the text branch and the fusion together with text_source: hypothesis; the
run's outputs name the transcripts it read, and export + predict reproduce its test
predictions from the model's own transcripts. (Resume: the mix draws are pure functions of
seed, epoch and utterance, tests/unit/test_text_fusion.py.)"""

import csv
import json
import shutil

import pytest

from mtl_ser.cli import main
from mtl_ser.data.manifest import load_manifest
from mtl_ser.export import export_run
from tests.recipes.helpers import ROOT, TINY, read_json, run_recipe

TEXT_FUSION = str(ROOT / "hparams/overrides/text_fusion.yaml")


@pytest.fixture(scope="module")
def text_run(demo_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("text_fusion")
    done = run_recipe(
        "train_mtl.py",
        "mtl.yaml",
        demo_corpus,
        out,
        "--number_of_epochs=1",
        "--max_len=1.5",  # crops: a short run
        overrides=(TINY, TEXT_FUSION),
    )
    (out.parent / "text_fusion.stdout").write_text(done.stdout)  # beside, not in, the run
    return out


def test_a_hypothesis_run_trains_exports_and_predicts_with_its_own_transcripts(
    text_run, demo_corpus, tmp_path
):
    results = read_json(text_run / "results.json")
    emotion = results["tasks"]["emotion"]
    assert emotion["kind"] == "TextEmotionTask" and emotion["text_source"] == "hypothesis"
    assert emotion["hypothesis_mix"] == 0.5 and emotion["fusion"] == "gated"
    assert results["text_view"].startswith("hypothesis")
    assert 0.0 <= results["task_metrics"]["emotion"]["ua"] <= 1.0
    # The spec holds the fusion head; its checkpoint trained every part of it.
    spec = read_json(text_run / "model_spec.json")
    assert spec["modules"]["emotion_head"]["class"] == "mtl_ser.models.fusion.TextFusionHead"
    with open(text_run / "predictions.csv") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    # Evaluation read the CTC head's greedy hypotheses (labelled), never the reference.
    assert all(r["emotion_text"] == r["hypothesis"] for r in rows.values())
    assert {r["emotion_text_view"] for r in rows.values()} == {"hypothesis"}

    model = tmp_path / "model"
    export_run(text_run, model)
    records = load_manifest(text_run / "manifests/test.json", demo_corpus)
    ids = list(records)[:3]
    out = tmp_path / "p.json"
    assert (
        main(["predict", str(model), *(records[u]["wav"] for u in ids), "--output", str(out)]) == 0
    )
    for utt, p in zip(ids, json.loads(out.read_text()), strict=True):
        # predict transcribes, feeds its transcript to the fusion head: the run's own
        # test predictions of the same files.
        assert p["transcript"] == rows[utt]["hypothesis"]
        for label, prob in p["probabilities"].items():
            assert prob == pytest.approx(float(rows[utt][f"p_{label}"]), abs=1e-4)


def test_an_oracle_run_says_oracle_in_its_summary_model_card_and_predict(
    text_run, demo_corpus, tmp_path, capsys
):
    # The recipe's closing summary names the transcripts the emotion head read.
    stdout = (text_run.parent / "text_fusion.stdout").read_text()
    assert "text view: hypothesis (greedy CTC transcripts, 0.5 of" in stdout
    # The same run as a text_source: reference run records it (results.json's text_view,
    # tests/unit/test_text_fusion.py): its export and predict must say "oracle".
    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    results = read_json(run / "results.json")
    results["text_view"] = "oracle (reference transcripts)"
    (run / "results.json").write_text(json.dumps(results))
    model = tmp_path / "model"
    export_run(run, model)
    card = (model / "README.md").read_text()
    assert "| test WA / UA / macro-F1 (oracle text) |" in card
    assert "**oracle text: the emotion head was trained and tested on reference" in card
    wav = next(iter(load_manifest(run / "manifests/test.json", demo_corpus).values()))["wav"]
    capsys.readouterr()
    assert main(["predict", str(model), wav, "--output", str(tmp_path / "p.csv")]) == 0
    assert "note: oracle text: the emotion head was trained" in capsys.readouterr().err

"""A run with beam search and a character LM built from its training transcripts."""

from __future__ import annotations

import csv
import json

import pytest

from mtl_ser.data.prepare import prepare_iemocap
from mtl_ser.ngram import build_lm
from tests.recipes.helpers import read_json, run_recipe


def test_a_beam_lm_run_reports_greedy_and_beam_lm_side_by_side(demo_corpus, tmp_path):
    paths = prepare_iemocap(demo_corpus, tmp_path / "manifests", verbose=False)
    lm = tmp_path / "lm.arpa"
    build_lm(paths["train"], lm, order=4, unit="char", progress=False)
    # One epoch on 16 training utterances: the test pass, not the model, is under test.
    train = dict(list(read_json(paths["train"]).items())[:16])
    (tmp_path / "manifests/train_16.json").write_text(json.dumps(train))
    paths = {**paths, "train": tmp_path / "manifests/train_16.json"}
    manifests = [f"--{split}_annotation={paths[split]}" for split in ("train", "valid", "test")]
    out = tmp_path / "run"
    decoding = ["--ctc_decoding=beam", "--beam_width=8", f"--lm_path={lm}", "--lm_weight=0.5"]
    run_recipe(
        "train_mtl.py",
        "mtl.yaml",
        demo_corpus,
        out,
        "--number_of_epochs=1",
        "--skip_prep=True",
        *manifests,
        *decoding,
    )
    results = read_json(out / "results.json")
    ctc = results["task_metrics"]["ctc"]
    # wer / cer keep their meaning (greedy); the beam decoder's are beside them.
    for name in ("wer", "cer", "wer_beam_lm", "cer_beam_lm", "wer_beam_lm_improvised"):
        assert name in ctc and name in results, name
    assert isinstance(ctc["wer_beam_lm"], float) and isinstance(ctc["cer_beam_lm"], float)
    assert results["tasks"]["ctc"]["decoding"] == {
        "ctc_decoding": "beam",
        "beam_width": 8,
        "word_score": 0.0,
        "lm": "lm.arpa",
        "lm_weight": 0.5,
    }
    values = results["setting"]["values"]
    assert values["ctc_decoding"] == "beam" and len(values["lm_digest"]) == 16
    assert "lm_path" in results["setting"]["ignored"]
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and "hypothesis" in rows[0] and "hypothesis_beam_lm" in rows[0]
    # Validation stays greedy: the epoch log has no beam metric.
    epoch = json.loads((out / "epoch_log.jsonl").read_text().splitlines()[0])
    assert epoch["valid_wer"] is not None and not any("beam" in key for key in epoch)

    # predict and evaluate transcribe with the run's decoder; export carries the LM.
    from mtl_ser.data.manifest import load_manifest
    from mtl_ser.evaluate import evaluate
    from mtl_ser.export import export_run
    from mtl_ser.inference import load_model

    exported = export_run(out, tmp_path / "export")
    assert (exported / "lm.arpa").read_bytes() == lm.read_bytes()
    evaluated = evaluate(exported, paths["test"], tmp_path / "eval", verbose=False)
    assert evaluated["wer"] == results["wer"]  # greedy, as the test pass
    assert evaluated["wer_beam_lm"] == results["wer_beam_lm"]
    first = rows[0]
    wav = load_manifest(paths["test"], demo_corpus)[first["id"]]["wav"]
    prediction = load_model(exported, window=float("inf")).predict(wav)
    assert prediction.transcript == first["hypothesis_beam_lm"]
    assert prediction.greedy_transcript == first["hypothesis"]
    # The run folder reads the LM where it was: a changed file is refused, by name.
    lm.write_text(lm.read_text().replace("\\end\\", "\\end\\\n"))
    with pytest.raises(ValueError, match="not the language model this model was tested with"):
        load_model(out)

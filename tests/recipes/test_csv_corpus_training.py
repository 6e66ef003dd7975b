"""A corpus brought as a CSV trains with the same recipe; classes come from its label set."""

import csv

from mtl_ser import load_model
from mtl_ser.cli import main
from mtl_ser.data.iemocap import scan_iemocap
from mtl_ser.data.text import CHARACTERS, CharVocabulary
from mtl_ser.export import export_run
from tests.recipes.helpers import read_json, run_recipe


def test_five_class_csv_corpus_with_german_transcripts(demo_corpus, tmp_path):
    """Classes come from the CSV's label set; letters outside A-Z survive into the manifests,
    the run's CTC vocabulary, its export and predict; dropped characters are reported."""
    utterances, _ = scan_iemocap(demo_corpus, progress=False)
    labels = ["ang", "exc", "hap", "neu", "sad"]  # exc as a class of its own
    with open(tmp_path / "corpus.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "emotion", "transcript", "speaker", "split"])
        for u in utterances:
            if u.label_raw not in labels:
                continue
            split = {1: "test", 2: "valid"}.get(u.session, "train")
            # "Ø" only in the test split: no training transcript has it.
            extra = " Øl" if split == "test" else ""
            text = f"Grüße, Café naïve über 3 Straße{extra}"
            writer.writerow([u.wav, u.label_raw, text, u.spk, split])
    manifests = tmp_path / "manifests"
    status = main(
        [
            "prepare",
            "csv",
            "--csv",
            str(tmp_path / "corpus.csv"),
            "--audio-root",
            str(demo_corpus),
            "--output-folder",
            str(manifests),
            "--labels",
            ",".join(labels),
        ]
    )
    assert status == 0
    train = read_json(manifests / "train.json")
    assert {r["wrd"] for r in train.values()} == {"GRÜßE CAFÉ NAÏVE ÜBER STRAßE"}
    summary = (manifests / "summary.txt").read_text()
    n = sum(len(read_json(manifests / f"{s}.json")) for s in ("train", "valid", "test"))
    assert f"characters dropped from transcripts (not letters): {n}: '3' {n};" in summary

    out = tmp_path / "run"
    done = run_recipe(
        "train_mtl.py",
        "mtl.yaml",
        demo_corpus,
        out,
        "--number_of_epochs=1",
        "--skip_prep=True",
        f"--train_annotation={manifests / 'train.json'}",
        f"--valid_annotation={manifests / 'valid.json'}",
        f"--test_annotation={manifests / 'test.json'}",
    )
    results = read_json(out / "results.json")
    assert results["labels"] == labels
    assert len(results["confusion_matrix"]) == 5
    assert results["num_utterances"] == len(read_json(manifests / "test.json"))
    assert (results["protocol"], results["corpus"]) == ("csv", "csv")

    vocab = CharVocabulary.load(out / "vocab.json")
    assert vocab.characters == CHARACTERS + ("É", "Ï", "Ü", "ß")
    log = done.stdout + done.stderr
    assert "lacks characters of valid/test transcripts, left out of their CTC targets" in log
    assert "'Ø' " in log

    export_run(out, tmp_path / "model")
    model = load_model(tmp_path / "model").model
    assert model.vocab == vocab
    assert model.vocab.decode(model.vocab.encode("GRÜßE STRAßE")) == "GRÜßE STRAßE"
    wav = str(demo_corpus / utterances[0].wav)
    assert main(["predict", str(tmp_path / "model"), wav, "--output", str(tmp_path / "p.csv")]) == 0

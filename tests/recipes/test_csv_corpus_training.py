"""A corpus brought as a CSV trains with the same recipe; classes come from its label set."""

import csv

from mtl_ser.cli import main
from mtl_ser.data.iemocap import scan_iemocap
from tests.recipes.helpers import read_json, run_recipe


def test_five_class_csv_corpus_trains(demo_corpus, tmp_path):
    utterances, _ = scan_iemocap(demo_corpus, progress=False)
    labels = ["ang", "exc", "hap", "neu", "sad"]  # exc as a class of its own
    with open(tmp_path / "corpus.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "emotion", "transcript", "speaker"])
        for u in utterances:
            if u.label_raw in labels:
                writer.writerow([u.wav, u.label_raw, u.transcript, u.spk])
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
    out = tmp_path / "run"
    run_recipe(
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

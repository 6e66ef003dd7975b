"""What the speed features must not change: evaluation order, and a frozen encoder's cache
(training reads it, not the audio)."""

import json
import os
import shutil

import pytest
from hyperpyyaml import load_hyperpyyaml

from mtl_ser.brain import EmotionBrain
from mtl_ser.data.pipelines import add_pipelines, dataio_prep, load_dataset
from mtl_ser.data.prepare import prepare_iemocap
from mtl_ser.data.text import CharVocabulary
from mtl_ser.experiment import label_set_of, parse_arguments, run_identity
from tests.recipes.helpers import ROOT, TINY, epoch_log, read_json, run_recipe

SUPERB = str(ROOT / "hparams/overrides/superb_probe.yaml")


def test_evaluation_in_any_order_gives_the_same_predictions_and_metrics(
    mtl_run, demo_corpus, tmp_path
):
    """The run's chosen checkpoint tested twice in-process, in manifest order and in the
    recipes' order (by duration, longest first): every utterance gets the same probabilities
    (to 1e-5), prediction and transcript, so WA, UA, macro-F1 and WER are identical, and
    equal to the recipe's own test pass."""
    run = tmp_path / "run"
    shutil.copytree(mtl_run[0], run)  # the Brain writes into its run folder
    argv = [str(ROOT / "hparams/mtl.yaml"), TINY, f"--data_folder={demo_corpus}"]
    argv += [f"--output_folder={run}", "--number_of_epochs=2"]
    hparams_file, _, overrides = parse_arguments(argv)
    with open(hparams_file) as f:
        hparams = load_hyperpyyaml(f, overrides)
    label_set, vocab = label_set_of(hparams), CharVocabulary()
    hparams["emotion_head"].set_num_classes(len(label_set.classes))
    by_duration = dataio_prep(hparams, label_set, vocab)["test"]
    in_manifest_order = load_dataset(hparams["test_annotation"], demo_corpus)
    add_pipelines(in_manifest_order, label_set, vocab, None)
    assert list(in_manifest_order.data_ids) != list(by_duration.data_ids)
    durations = [by_duration.data[u]["duration"] for u in by_duration.data_ids]
    assert durations == sorted(durations, reverse=True)

    brain = EmotionBrain(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts={"device": "cpu"},
        checkpointer=hparams["checkpointer"],
        labels=label_set.classes,
        vocab=vocab,
        identity=run_identity(hparams, label_set),
    )
    passes = []
    for dataset in (in_manifest_order, by_duration):
        brain.evaluate(dataset, test_loader_kwargs={"batch_size": 8})
        passes.append(({r.id: r for r in brain.predictions.rows}, dict(brain.results)))
    (rows_a, results_a), (rows_b, results_b) = passes
    assert rows_a.keys() == rows_b.keys() and len(rows_a) == 53
    for utt, a in rows_a.items():
        b = rows_b[utt]
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5), utt
        assert (a.predicted, a.hypothesis) == (b.predicted, b.hypothesis), utt
    recipe = read_json(mtl_run[0] / "results.json")
    for key in ("wa", "ua", "macro_f1", "wer", "cer", "confusion_matrix"):
        assert results_a[key] == results_b[key] == recipe[key], key


def test_probing_epochs_read_the_encoder_cache_and_not_the_audio(demo_corpus, tmp_path):
    """A frozen encoder with a weighted layer sum (the SUPERB override): the first run
    fills the cache and trains epoch 1. Then every training and validation recording is
    overwritten with noise of the same size and modification time (so the same cache key):
    reading it would fail. A second run of 2 epochs (its own folder, the same cache) trains
    and validates from the cache alone; the test pass reads its own, untouched, recordings."""
    corpus = tmp_path / "corpus"
    shutil.copytree(demo_corpus, corpus)
    paths = prepare_iemocap(corpus, tmp_path / "manifests", verbose=False)
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = [f"--{split}_annotation={paths[split]}" for split in ("train", "valid", "test")]
    args += ["--skip_prep=True", f"--encoder_cache_folder={cache}"]
    overrides = (TINY, SUPERB)
    first = run_recipe(
        "train_mtl.py", "mtl.yaml", corpus, out, "--number_of_epochs=1", *args, overrides=overrides
    )
    logged = first.stdout + first.stderr
    assert "all 3 hidden layers (64 dims) as float16" in logged
    assert "(0 reused, 211 computed, of which 0 rebuilt)" in logged

    trained = [r["wav"] for s in ("train", "valid") for r in read_json(paths[s]).values()]
    assert len(trained) == 211
    for wav in trained:
        path = wav.replace("{data_root}", str(corpus))
        stat = os.stat(path)
        with open(path, "r+b") as f:
            f.write(os.urandom(stat.st_size))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    # Another run (its own folder: a run folder belongs to one setting) sharing the cache.
    out = tmp_path / "run2"
    second = run_recipe(
        "train_mtl.py", "mtl.yaml", corpus, out, "--number_of_epochs=2", *args, overrides=overrides
    )
    logged = second.stdout + second.stderr
    assert "(211 reused, 0 computed, of which 0 rebuilt)" in logged
    assert "Going into epoch 1\n" in logged and "Going into epoch 2" in logged
    log = epoch_log(out)
    assert [e["epoch"] for e in log] == [1, 2] and log[1]["train_loss_emo"] is not None
    results = read_json(out / "results.json")
    assert results["num_utterances"] == 53 and results["epochs_trained"] == 2
    settings = json.loads(next(cache.glob("*/settings.json")).read_text())
    assert (settings["kind"], settings["slots"], settings["dtype"]) == (
        "hidden",
        ["layers"],
        "float16",
    )

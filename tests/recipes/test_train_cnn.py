"""Smoke runs of the CNN recipe on the demo corpus (small CNN): the outputs of every recipe,
and a feature cache shared by runs."""

import csv

import pytest
import yaml

from mtl_ser import load_model
from tests.recipes.helpers import CNN_SMALL, epoch_log, read_json, run_recipe
from tests.recipes.test_train_mtl import RESULT_KEYS

# Smaller still than cnn_small.yaml: the smoke runs check the machinery, not the model.
FAST = ["--cnn_channels=[8,16]", "--number_of_epochs=2"]


def entries(cache):
    """{entry: mtime_ns} of every feature cache entry."""
    return {p: p.stat().st_mtime_ns for p in cache.rglob("*.feat")}


@pytest.fixture(scope="module")
def cnn_runs(demo_corpus, tmp_path_factory):
    """Two runs sharing one feature cache; the first augments no waveform (so it caches
    every utterance), the second the default half of the training samples."""
    root = tmp_path_factory.mktemp("cnn")
    cache = root / "feature_cache"
    common = [f"--feature_cache_folder={cache}", *FAST]
    first = run_recipe(
        "train_cnn.py",
        "cnn.yaml",
        demo_corpus,
        root / "first",
        *common,
        "--wav_augment_prob=0.0",
        overrides=[CNN_SMALL],
    )
    after_first = entries(cache)
    second = run_recipe(
        "train_cnn.py",
        "cnn.yaml",
        demo_corpus,
        root / "second",
        *common,
        "--seed=7",
        overrides=[CNN_SMALL],
    )
    return root, cache, after_first, first, second


def test_cnn_writes_the_outputs_of_every_recipe(cnn_runs):
    root, _, _, first, _ = cnn_runs
    out = root / "first"
    results = read_json(out / "results.json")
    assert RESULT_KEYS <= set(results)
    assert (results["recipe"], results["alpha"], results["protocol"], results["fold"]) == (
        "cnn",
        0.0,
        "loso",
        1,
    )
    assert results["encoder"] == "cnn[8, 16]"
    assert results["wer"] is None and results["cer"] is None
    assert results["wer_improvised"] is None and results["cer_improvised"] is None
    test_ids = set(read_json(out / "manifests/test.json"))
    assert results["num_utterances"] == len(test_ids) == 53
    assert sum(map(sum, results["confusion_matrix"])) == 53
    assert f"WA {results['wa']:.2%}" in first.stdout
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == test_ids
    assert all(r["hypothesis"] == "" for r in rows)
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    log = epoch_log(out)
    assert [e["epoch"] for e in log] == [1, 2]
    assert all(e["train_loss_ctc"] is None and e["valid_wer"] is None for e in log)
    assert all(e["train_loss"] == e["train_loss_emo"] for e in log)
    assert "epoch: 2" in (out / "train_log.txt").read_text()
    # Chosen on validation UA; no CTC head anywhere.
    assert results["valid_ua"] == max(e["valid_ua"] for e in log)
    checkpoints = {
        yaml.safe_load((c / "CKPT.yaml").read_text())["UA"]: c for c in (out / "save").glob("CKPT*")
    }
    checkpoint = checkpoints[results["valid_ua"]]
    saved = {p.name for p in checkpoint.glob("*.ckpt")}
    assert {"encoder.ckpt", "emotion_head.ckpt", "counter.ckpt"} <= saved
    assert not any("ctc" in name for name in saved)


def test_first_run_caches_each_utterance_once(cnn_runs):
    root, cache, after_first, _, _ = cnn_runs
    utterances = set()
    for split in ("train", "valid", "test"):
        utterances |= set(read_json(root / "first/manifests" / f"{split}.json"))
    # Two epochs of training and validation, one test pass: one computation per utterance.
    assert len(after_first) == len(utterances) == 264
    (settings_folder,) = [p for p in cache.iterdir() if p.is_dir()]
    assert read_json(settings_folder / "settings.json")["n_mels"] == 40


def test_second_run_reuses_the_cache(cnn_runs):
    root, cache, after_first, _, second = cnn_runs
    # Nothing recomputed or rewritten (the same files with the same modification times);
    # the training samples drawn for augmentation were computed without touching the cache.
    assert entries(cache) == after_first
    assert read_json(root / "second/results.json")["num_utterances"] == 53
    assert read_json(root / "second/results.json")["seed"] == 7


def test_a_changed_front_end_setting_gets_its_own_entries(cnn_runs, demo_corpus):
    root, cache, after_first, _, _ = cnn_runs
    run_recipe(
        "train_cnn.py",
        "cnn.yaml",
        demo_corpus,
        root / "hop",
        f"--feature_cache_folder={cache}",
        *FAST[:1],
        "--number_of_epochs=1",
        "--wav_augment_prob=0.0",
        "--skip_prep=True",
        f"--train_annotation={root / 'first/manifests/train.json'}",
        f"--valid_annotation={root / 'first/manifests/valid.json'}",
        f"--test_annotation={root / 'first/manifests/test.json'}",
        "--front_end={hop_length: 20.0}",
        overrides=[CNN_SMALL],
    )
    now = entries(cache)
    assert {p: now[p] for p in after_first} == after_first  # the old entries are untouched
    assert len(now) == 2 * len(after_first)  # every utterance again, under new settings
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2


def test_a_trained_cnn_scores_waveforms_as_in_training(cnn_runs, demo_corpus):
    """Training read cached features; `load_model` runs the encoder's own front end on the
    waveforms: the test predictions must agree."""
    out = cnn_runs[0] / "first"
    manifest = read_json(out / "manifests/test.json")
    with open(out / "predictions.csv") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    ids = sorted(rows)[:8]
    wavs = [manifest[utt]["wav"].replace("{data_root}", str(demo_corpus)) for utt in ids]
    for utt, prediction in zip(ids, load_model(out).predict_batch(wavs), strict=True):
        for label, p in prediction.probabilities.items():
            assert p == pytest.approx(float(rows[utt][f"p_{label}"]), abs=1e-4)

"""Smoke runs of the multi-task and SER-only recipes on the demo corpus (tiny encoder)."""

import csv
import os
import signal
import subprocess
import time

import pytest
import yaml

from mtl_ser.data.text import CharVocabulary
from tests.recipes.helpers import ROOT, epoch_log, read_json, recipe_command, run_recipe

RESULT_KEYS = {
    "wa",
    "ua",
    "macro_f1",
    "wer",
    "cer",
    "confusion_matrix",
    "labels",
    "num_utterances",
    "recipe",
    "alpha",
    "protocol",
    "fold",
    "seed",
    "per_class_recall",
    "best_epoch",
    "valid_ua",
    "wer_improvised",
    "cer_improvised",
}


def test_mtl_writes_complete_results(mtl_run):
    out, done = mtl_run
    results = read_json(out / "results.json")
    assert RESULT_KEYS <= set(results)
    test_ids = set(read_json(out / "manifests/test.json"))
    assert results["num_utterances"] == len(test_ids) == 53  # Session 1, 4 classes
    assert (results["recipe"], results["alpha"], results["protocol"], results["fold"]) == (
        "mtl",
        0.1,
        "loso",
        1,
    )
    assert results["labels"] == ["neu", "hap", "ang", "sad"]
    assert sum(map(sum, results["confusion_matrix"])) == 53
    assert 0 <= results["wa"] <= 1 and 0 <= results["wer"] and 0 <= results["cer"]
    assert f"WA {results['wa']:.2%}" in done.stdout
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == test_ids
    assert set(rows[0]) >= {"true", "predicted", "p_neu", "p_sad", "reference", "hypothesis"}
    assert all(abs(sum(float(r[f"p_{c}"]) for c in results["labels"]) - 1) < 1e-4 for r in rows)
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert CharVocabulary.load(out / "vocab.json") == CharVocabulary()


def test_mtl_logs_each_task_and_chooses_on_validation(mtl_run):
    out, _ = mtl_run
    log = epoch_log(out)
    assert [e["epoch"] for e in log] == [1, 2]
    for entry in log:
        for key in (
            "train_loss",
            "train_loss_emo",
            "train_loss_ctc",
            "valid_ua",
            "valid_wa",
            "valid_wer",
            "valid_cer",
        ):
            assert entry[key] is not None
        # The total is the weighted sum of the two task losses (per-batch means).
        assert entry["train_loss"] == pytest.approx(
            entry["train_loss_emo"] + 0.1 * entry["train_loss_ctc"], rel=1e-5
        )
    results = read_json(out / "results.json")
    best = max(log, key=lambda e: e["valid_ua"])
    assert results["valid_ua"] == best["valid_ua"]
    # Every checkpoint carries validation metrics only.
    valid_uas = {e["valid_ua"] for e in log}
    for meta in (out / "save").glob("CKPT*/CKPT.yaml"):
        assert yaml.safe_load(meta.read_text())["UA"] in valid_uas


def test_finished_run_is_not_trained_again(mtl_run, demo_corpus):
    out, _ = mtl_run
    before = read_json(out / "results.json")
    done = run_recipe("train_mtl.py", "mtl.yaml", demo_corpus, out, "--number_of_epochs=2")
    assert "Going into epoch" not in done.stdout + done.stderr
    after = read_json(out / "results.json")
    assert after["wa"] == before["wa"] and after["confusion_matrix"] == before["confusion_matrix"]


def test_interrupted_run_resumes_from_its_checkpoint(demo_corpus, tmp_path):
    out = tmp_path / "run"
    command = recipe_command("train_mtl.py", "mtl.yaml", demo_corpus, out, "--number_of_epochs=3")
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not list((out / "save").glob("CKPT*/COMPLETE")) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # as a crash or a pre-empted job would
    process.wait()
    assert not (out / "results.json").exists()
    saved = [
        yaml.safe_load((c / "CKPT.yaml").read_text())["epoch"]
        for c in (out / "save").glob("CKPT*")
        if (c / "COMPLETE").is_file()
    ]
    assert saved and max(saved) < 3

    done = run_recipe("train_mtl.py", "mtl.yaml", demo_corpus, out, "--number_of_epochs=3")
    logged = done.stdout + done.stderr
    assert "Going into epoch 1\n" not in logged
    assert f"Going into epoch {max(saved) + 1}" in logged
    assert [e["epoch"] for e in epoch_log(out)][-1] == 3
    assert read_json(out / "results.json")["num_utterances"] == 53


def test_ser_only_has_no_ctc(demo_corpus, tmp_path):
    """Also exercises bf16, dynamic batching, cropping and waveform augmentation."""
    out = tmp_path / "ser"
    done = run_recipe(
        "train_ser.py",
        "ser.yaml",
        demo_corpus,
        out,
        "--number_of_epochs=1",
        "--precision=bf16",
        "--dynamic_batching=True",
        "--max_batch_length=16",
        "--max_len=2.0",
        "--augment_prob=1.0",
    )
    assert "Using training precision: `--precision=bf16`" in done.stdout + done.stderr
    results = read_json(out / "results.json")
    assert (results["recipe"], results["alpha"]) == ("ser", 0.0)
    assert results["wer"] is None and results["cer"] is None
    assert epoch_log(out)[0]["train_loss_ctc"] is None
    checkpoint = next((out / "save").glob("CKPT*"))
    assert not (checkpoint / "ctc_head.ckpt").exists()
    assert (checkpoint / "encoder.ckpt").exists() and (checkpoint / "emotion_head.ckpt").exists()
    with open(out / "predictions.csv") as f:
        assert all(row["hypothesis"] == "" for row in csv.DictReader(f))


def test_two_processes_with_gloo(demo_corpus, tmp_path, mtl_run):
    out = tmp_path / "ddp"
    command = recipe_command(
        "train_mtl.py",
        "mtl.yaml",
        demo_corpus,
        out,
        "--number_of_epochs=1",
        "--distributed_backend=gloo",
    )
    torchrun = [command[0], "-m", "torch.distributed.run", "--nproc_per_node=2"]
    done = subprocess.run(torchrun + command[1:], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert read_json(out / "results.json")["num_utterances"] == 53
    # Each process trains on half of the batches.
    single = epoch_log(mtl_run[0])[0]["optimizer_steps"]
    assert epoch_log(out)[0]["optimizer_steps"] == (single + 1) // 2

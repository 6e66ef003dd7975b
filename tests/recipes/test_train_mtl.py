"""Smoke runs of the multi-task and SER-only recipes on the demo corpus (tiny encoder)."""

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from mtl_ser.data.prepare import prepare_iemocap
from mtl_ser.data.text import CharVocabulary
from mtl_ser.experiment import parse_arguments
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


TIMINGS = ("train_seconds", "valid_seconds")


def untimed(log: list[dict]) -> list[dict]:
    """Epoch-log entries without their wall-clock seconds (which no two runs share)."""
    return [{k: v for k, v in entry.items() if k not in TIMINGS} for entry in log]


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
    # The speaker of each utterance, from the manifest: the report's bootstrap resamples them.
    test_manifest = read_json(out / "manifests/test.json")
    assert {r["id"]: r["speaker"] for r in rows} == {k: v["spk"] for k, v in test_manifest.items()}
    assert all(abs(sum(float(r[f"p_{c}"]) for c in results["labels"]) - 1) < 1e-4 for r in rows)
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert CharVocabulary.load(out / "vocab.json") == CharVocabulary()


def test_mtl_logs_each_task(mtl_run):
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
        assert entry["train_nonfinite_batches"] == entry["train_nonfinite_steps"] == 0
        # Speed without parsing progress bars: each stage's wall-clock seconds.
        assert entry["train_seconds"] > 0 and entry["valid_seconds"] > 0
    results = read_json(out / "results.json")
    assert (results["ctc_reduction"], results["ctc_sum_utterances"]) == ("sum", 2)
    assert results["checkpoint_selection"] == "best_valid"


LABELS = ["neu", "hap", "ang", "sad"]
SHIFT = {label: LABELS[(i + 1) % 4] for i, label in enumerate(LABELS)}


def test_checkpoint_is_chosen_on_validation_where_validation_and_test_disagree(
    demo_corpus, tmp_path
):
    """Validation = the test recordings under other ids with every label shifted to the next
    class: an epoch's validation UA is then computable from the test confusion matrix of the
    same model, and it rewards what test punishes. The tested checkpoint must be the epoch
    with the best validation UA (the earliest among ties), recognisable by that identity."""
    paths = prepare_iemocap(demo_corpus, tmp_path / "manifests", verbose=False)
    test = read_json(paths["test"])
    shifted = {f"copy_{utt}": {**r, "emo": SHIFT[r["emo"]]} for utt, r in test.items()}
    (tmp_path / "manifests/valid.json").write_text(json.dumps(shifted))
    out = tmp_path / "run"
    manifests = [f"--{split}_annotation={paths[split]}" for split in ("train", "valid", "test")]
    args = ("--number_of_epochs=4", "--skip_prep=True", *manifests)
    run_recipe("train_ser.py", "ser.yaml", demo_corpus, out, *args)
    log = epoch_log(out)
    valid_uas = [e["valid_ua"] for e in log]
    assert len(set(valid_uas)) > 1, "validation UA flat: the test would prove nothing"
    chosen = read_json(out / "results.json")
    assert chosen["best_epoch"] == 1 + valid_uas.index(max(valid_uas))
    assert chosen["valid_ua"] == max(valid_uas)
    assert shifted_ua(chosen) == pytest.approx(max(valid_uas), abs=1e-12)

    # The same training tested from its last epoch instead: another setting, so its own run
    # folder (the training is deterministic: the same epochs, as the log shows).
    out = tmp_path / "run_last"
    run_recipe("train_ser.py", "ser.yaml", demo_corpus, out, *args, "--checkpoint_selection=last")
    assert [e["valid_ua"] for e in epoch_log(out)] == valid_uas
    last = read_json(out / "results.json")
    assert (last["best_epoch"], last["epochs_trained"]) == (4, 4)
    assert shifted_ua(last) == pytest.approx(valid_uas[-1], abs=1e-12)


def shifted_ua(results: dict) -> float:
    """The UA the shifted validation set gives the model of a test pass: for each true class
    c, the share of its test utterances predicted as the next class."""
    matrix = results["confusion_matrix"]
    recalls = [
        matrix[i][LABELS.index(SHIFT[c])] / sum(matrix[i])
        for i, c in enumerate(results["labels"])
        if sum(matrix[i])
    ]
    return sum(recalls) / len(recalls)


def test_finished_run_is_not_trained_again(mtl_run, demo_corpus):
    out, _ = mtl_run
    before = read_json(out / "results.json")
    done = run_recipe("train_mtl.py", "mtl.yaml", demo_corpus, out, "--number_of_epochs=2")
    assert "Going into epoch" not in done.stdout + done.stderr
    after = read_json(out / "results.json")
    assert after["wa"] == before["wa"] and after["confusion_matrix"] == before["confusion_matrix"]


def test_run_killed_mid_training_resumes_to_the_uninterrupted_result(
    mtl_run, demo_corpus, tmp_path
):
    """kill -9 after the first checkpoint, re-run the same command: the same epochs, losses,
    chosen checkpoint and test results, bit for bit, as the uninterrupted run (mtl_run)."""
    out = tmp_path / "run"
    command = recipe_command("train_mtl.py", "mtl.yaml", demo_corpus, out, "--number_of_epochs=2")
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not list((out / "save").glob("CKPT*/COMPLETE")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # as a crash or a pre-empted job would
    process.wait()
    assert not (out / "results.json").exists()
    assert [e["epoch"] for e in epoch_log(out)] == [1]

    done = run_recipe("train_mtl.py", "mtl.yaml", demo_corpus, out, "--number_of_epochs=2")
    logged = done.stdout + done.stderr
    assert "Going into epoch 1\n" not in logged and "Going into epoch 2" in logged
    reference = mtl_run[0]
    # Every loss, count and metric of every epoch, exactly (the seconds differ).
    assert untimed(epoch_log(out)) == untimed(epoch_log(reference))
    resumed, uninterrupted = read_json(out / "results.json"), read_json(reference / "results.json")
    for key in ("wa", "ua", "wer", "cer", "confusion_matrix", "best_epoch", "valid_ua"):
        assert resumed[key] == uninterrupted[key], key
    assert (out / "predictions.csv").read_text() == (reference / "predictions.csv").read_text()


# The default loaders (two persistent worker processes) with random training crops drawn in
# the workers, and accumulation windows of 2 batches with a checkpoint requested every 3
# batches: each request falls inside a window and is saved at the window's end.
DEFAULT_LOADERS = (
    "--number_of_epochs=2",
    "--num_workers=2",
    "--max_len=1.5",
    "--grad_accumulation_factor=2",
    "--ckpt_interval_steps=3",
)


def intra_epoch_checkpoint_of_epoch(save: Path, epoch: int) -> bool:
    """Whether save/ holds a complete checkpoint taken inside epoch ``epoch``."""
    for folder in save.glob("CKPT*"):
        try:
            meta = (folder / "CKPT.yaml").read_text()
            counter = json.loads((folder / "counter.ckpt").read_text())
        except (OSError, ValueError):
            continue
        if (folder / "COMPLETE").is_file() and "brain_intra_epoch_ckpt" in meta:
            if counter["current"] == epoch:
                return True
    return False


def test_run_killed_inside_an_epoch_with_worker_processes_resumes_exactly(demo_corpus, tmp_path):
    """kill -9 of the training process after a checkpoint taken inside epoch 2, with the
    default loader settings (persistent workers drawing random crops) and gradient
    accumulation; the re-run's epoch log equals the uninterrupted run's in every entry and
    key (losses, optimiser steps, skips, learning rates, validation metrics; not the
    seconds), and so do the test results."""
    reference = tmp_path / "uninterrupted"
    run_recipe("train_mtl.py", "mtl.yaml", demo_corpus, reference, *DEFAULT_LOADERS)
    out = tmp_path / "run"
    command = recipe_command("train_mtl.py", "mtl.yaml", demo_corpus, out, *DEFAULT_LOADERS)
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not intra_epoch_checkpoint_of_epoch(out / "save", 2) and time.time() < deadline:
        time.sleep(0.02)
    # The recipe's own process (and its loader workers, in its process group).
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "results.json").exists(), "the run ended before the kill"
    assert [e["epoch"] for e in epoch_log(out)] == [1]

    done = run_recipe("train_mtl.py", "mtl.yaml", demo_corpus, out, *DEFAULT_LOADERS)
    logged = done.stdout + done.stderr
    assert "Going into epoch 1\n" not in logged and "Going into epoch 2" in logged
    resumed, uninterrupted = epoch_log(out), epoch_log(reference)
    assert [e["epoch"] for e in resumed] == [1, 2]
    assert untimed(resumed) == untimed(uninterrupted)
    assert all(e[key] > 0 for e in resumed for key in TIMINGS)
    assert uninterrupted[1]["optimizer_steps"] == uninterrupted[1]["batches"] // 2
    assert read_json(out / "results.json") == read_json(reference / "results.json")
    assert (out / "predictions.csv").read_text() == (reference / "predictions.csv").read_text()


def test_a_finished_run_is_not_extended_at_learning_rate_zero(mtl_run, demo_corpus):
    """A finished 2-epoch run re-run with 3 epochs: its learning-rate schedule ended at 0, so
    the third epoch would not train; refused with one line naming number_of_epochs, nothing
    trained, the results kept."""
    out, _ = mtl_run
    before = read_json(out / "results.json")
    command = recipe_command("train_mtl.py", "mtl.yaml", demo_corpus, out, "--number_of_epochs=3")
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("train_mtl.py: error:") and "number_of_epochs" in last, last
    assert "Going into epoch" not in done.stdout + done.stderr
    assert read_json(out / "results.json") == before


def test_a_log_gets_one_line_per_epoch_instead_of_progress_bars(demo_corpus, tmp_path):
    """Progress bars on (no --noprogressbar) but stderr is a pipe, as in a batch job's log:
    no tqdm lines, one line per epoch with its figures."""
    out = tmp_path / "run"
    command = recipe_command("train_ser.py", "ser.yaml", demo_corpus, out, "--number_of_epochs=2")
    command.remove("--noprogressbar")
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = done.stdout + done.stderr
    assert "it/s]" not in logged and "%|" not in logged
    lines = [line for line in done.stderr.splitlines() if line.startswith("epoch ")]
    log = epoch_log(out)
    assert len(lines) == len(log) == 2
    for line, entry in zip(lines, log, strict=True):
        assert line.startswith(f"epoch {entry['epoch']}: train {entry['batches']} batches in ")
        assert f"loss {entry['train_loss']:.4f}" in line and f"UA {entry['valid_ua']:.2%}" in line


def test_early_stopped_run_is_not_trained_again(demo_corpus, tmp_path):
    """A flat validation UA (learning rate ~0): a tie is no improvement, so patience 1 stops
    after epoch 2; re-running the finished run only re-tests it."""
    out = tmp_path / "stopped"
    args = ("--number_of_epochs=6", "--early_stop_patience=1")
    flat = ("--lr_encoder=1e-12", "--lr_heads=1e-12")
    run_recipe("train_ser.py", "ser.yaml", demo_corpus, out, *args, *flat)
    log = epoch_log(out)
    assert [e["epoch"] for e in log] == [1, 2]
    assert log[0]["valid_ua"] == log[1]["valid_ua"] and log[-1]["stopped_early"]
    before = read_json(out / "results.json")
    assert (before["best_epoch"], before["epochs_trained"], before["stopped_early"]) == (1, 2, True)
    done = run_recipe("train_ser.py", "ser.yaml", demo_corpus, out, *args, *flat)
    assert "Going into epoch" not in done.stdout + done.stderr
    assert read_json(out / "results.json") == before


def test_ser_only_has_no_ctc(demo_corpus, tmp_path):
    """Also exercises bf16, dynamic batching, cropping, waveform augmentation and gradient
    accumulation over a number of batches it does not divide."""
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
        "--grad_accumulation_factor=4",
    )
    assert "Using training precision: `--precision=bf16`" in done.stdout + done.stderr
    results = read_json(out / "results.json")
    assert (results["recipe"], results["alpha"]) == ("ser", 0.0)
    assert results["wer"] is None and results["cer"] is None
    entry = epoch_log(out)[0]
    assert entry["train_loss_ctc"] is None
    # The last, shorter accumulation window is applied too: the schedule reaches its end.
    assert entry["batches"] % 4 != 0, "choose another factor: this one divides the batches"
    assert entry["optimizer_steps"] == -(-entry["batches"] // 4)
    assert entry["lr_encoder"] == entry["lr_heads"] == 0.0
    checkpoint = next((out / "save").glob("CKPT*"))
    assert not (checkpoint / "ctc_head.ckpt").exists()
    assert (checkpoint / "encoder.ckpt").exists() and (checkpoint / "emotion_head.ckpt").exists()
    with open(out / "predictions.csv") as f:
        assert all(row["hypothesis"] == "" for row in csv.DictReader(f))


def test_two_processes_with_gloo_keep_identical_parameters(demo_corpus, tmp_path):
    """Two gloo processes train one epoch: their parameters are identical (gradients are
    averaged) and differ from the initial ones (training happened); they took the same
    number of batches, which hold every training utterance exactly once."""
    out = tmp_path / "ddp"
    command = recipe_command(
        "train_mtl.py",
        "mtl.yaml",
        demo_corpus,
        out,
        "--number_of_epochs=1",
        "--distributed_backend=gloo",
        "--batch_size=5",  # 191 training utterances: 38 batches of 5 and one of 1
    )
    torchrun = [command[0], "-m", "torch.distributed.run", "--nproc_per_node=2"]
    wrapper = [str(ROOT / "tests/recipes/ddp_params.py"), str(tmp_path)]
    done = subprocess.run(
        torchrun + wrapper + command[1:], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert read_json(out / "results.json")["num_utterances"] == 53
    batches = [read_json(tmp_path / f"batches_rank{r}.json") for r in (0, 1)]
    assert len(batches[0]) == len(batches[1]) == epoch_log(out)[0]["batches"]
    taken = sorted(u for rank in batches for b in rank for u in b)
    assert taken == sorted(read_json(out / "manifests/train.json"))
    assert len(read_json(out / "manifests/train.json")) % 10, "a count that does not divide"
    # In every DDP step (whose gradient averages the processes) the batches are alike in
    # size: no short batch beside a full one.
    assert all(abs(len(a) - len(b)) <= 1 for a, b in zip(*batches, strict=True))
    ranks = [torch.load(tmp_path / f"params_rank{r}.pt") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    hparams_file, _, overrides = parse_arguments(command[2:])
    with open(hparams_file) as f:
        initial = load_hyperpyyaml(f, overrides)["encoder"].state_dict()  # same seed
    changed = [k for k, v in initial.items() if not torch.equal(ranks[0][f"encoder.{k}"], v)]
    assert len(changed) > len(initial) // 2


def test_diverging_training_stops_with_a_clear_error(demo_corpus, tmp_path):
    """A huge learning rate: each batch with a NaN loss is skipped with a warning, and
    nonfinite_patience (3) in a row end the run with one line and exit status 1, before any
    result is written."""
    command = recipe_command(
        "train_mtl.py",
        "mtl.yaml",
        demo_corpus,
        tmp_path / "run",
        "--lr_encoder=1e8",
        "--lr_heads=1e8",
        "--warmup_fraction=0.0",
    )
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1
    logged = done.stdout + done.stderr
    assert logged.count("skipping a training batch with a non-finite loss") == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("train_mtl.py: error: 3 consecutive training batches had a non-finite")
    assert "lr_encoder / lr_heads (now 100000000.0 / 100000000.0)" in last
    assert not (tmp_path / "run/results.json").exists()

"""`mtl-ser sweep` end to end: real recipe runs (tiny encoder, 1 epoch) on the demo corpus."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.recipes.helpers import ROOT, TINY, read_json

ALPHAS = ("0.0", "0.1")
FOLDS = (1, 2)


def sweep(out, data, *options, extra=("--number_of_epochs=1",)):
    """Runs `mtl-ser sweep hparams/mtl.yaml` as a user does; returns the CompletedProcess."""
    command = [sys.executable, "-m", "mtl_ser.cli", "sweep", str(ROOT / "hparams/mtl.yaml")]
    command += ["--output-folder", str(out), *options, "--", TINY, f"--data_folder={data}"]
    return subprocess.run(
        command + list(extra), capture_output=True, text=True, cwd=ROOT, timeout=600
    )


def run_folder(out, alpha: str, fold: int):
    return out / f"mtl/loso/alpha{alpha}/fold{fold}/seed1986"


def lines_with(stdout: str, word: str) -> list[str]:
    return [line for line in stdout.splitlines() if f"] {word}" in line]


@pytest.fixture(scope="module")
def swept(demo_corpus, tmp_path_factory):
    """2 alphas x 2 folds, two at once."""
    out = tmp_path_factory.mktemp("sweep")
    done = sweep(out, demo_corpus, "--alphas", "0,0.1", "--folds", "1-2", "--jobs", "2")
    return out, done


def test_sweep_runs_every_alpha_and_fold(swept):
    out, done = swept
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(lines_with(done.stdout, "start")) == 4
    assert len(lines_with(done.stdout, "done")) == 4
    assert "4 runs, 4 done, 0 skipped, 0 failed" in done.stdout
    for alpha in ALPHAS:
        for fold in FOLDS:
            folder = run_folder(out, alpha, fold)
            results = read_json(folder / "results.json")
            assert (results["recipe"], results["protocol"]) == ("mtl", "loso")
            assert (results["alpha"], results["fold"], results["seed"]) == (
                float(alpha),
                fold,
                1986,
            )
            # alpha = 0 inside the mtl recipe is SER only: no CTC head, no WER.
            assert (results["wer"] is None) == (alpha == "0.0")
            assert results["num_utterances"] == {1: 53, 2: 52}[fold]
            stored = read_json(folder / "sweep_run.json")
            assert stored["command"][-5:] == [
                f"--alpha={alpha}",
                f"--fold={fold}",
                "--seed=1986",
                "--protocol=loso",
                f"--output_folder={folder}",
            ]
            assert TINY in stored["command"] and "--number_of_epochs=1" in stored["command"]
            assert "Going into epoch 1" in (folder / "sweep_log.txt").read_text()
            [line] = [ln for ln in lines_with(done.stdout, "done") if f"{alpha}/fold{fold}/" in ln]
            assert f"WA {results['wa']:.2%}  UA {results['ua']:.2%}" in line


def test_second_sweep_skips_and_a_lost_result_is_redone(swept, demo_corpus):
    out, first = swept
    assert first.returncode == 0
    again = sweep(out, demo_corpus, "--alphas", "0,0.1", "--folds", "1-2", "--jobs", "2")
    assert again.returncode == 0, again.stderr
    assert len(lines_with(again.stdout, "skip")) == 4 and not lines_with(again.stdout, "start")

    lost = run_folder(out, "0.1", 2)
    before = read_json(lost / "results.json")
    (lost / "results.json").unlink()
    third = sweep(out, demo_corpus, "--alphas", "0,0.1", "--folds", "1-2", "--jobs", "2")
    assert third.returncode == 0, third.stdout + third.stderr
    assert len(lines_with(third.stdout, "skip")) == 3
    [started] = lines_with(third.stdout, "start")
    assert "alpha0.1/fold2/seed1986" in started and "(resuming)" in started
    # The recipe resumed from its finished checkpoint: it tested again without training.
    last_attempt = (lost / "sweep_log.txt").read_text().split("==== ")[-1]
    assert "Going into epoch" not in last_attempt
    after = read_json(lost / "results.json")
    assert after["confusion_matrix"] == before["confusion_matrix"]


def test_changed_configuration_is_refused(swept, demo_corpus):
    out, first = swept
    assert first.returncode == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    changed = sweep(
        out, demo_corpus, "--alphas", "0.1", "--folds", "1", extra=["--number_of_epochs=2"]
    )
    assert changed.returncode == 2
    assert str(run_folder(out, "0.1", 1)) in changed.stderr
    assert "--number_of_epochs=2" in changed.stderr and "--overwrite-changed" in changed.stderr
    assert not lines_with(changed.stdout, "start")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("results.json")} == stamps


def test_a_failed_run_is_reported_and_the_others_complete(demo_corpus, tmp_path):
    # A copy of the corpus without Session2: loso fold 2 has no test utterance.
    partial = tmp_path / "corpus"
    partial.mkdir()
    for session in (1, 3, 4, 5):
        (partial / f"Session{session}").symlink_to(demo_corpus / f"Session{session}")
    out = tmp_path / "sweep"
    done = sweep(out, partial, "--alphas", "0.1", "--folds", "1,2", "--jobs", "2")
    assert done.returncode == 1
    assert "2 runs, 1 done, 0 skipped, 1 failed" in done.stdout
    [failed] = lines_with(done.stdout, "failed")
    log = run_folder(out, "0.1", 2) / "sweep_log.txt"
    assert "alpha0.1/fold2/seed1986" in failed and f"log: {log}" in failed
    assert "the test split is empty" in log.read_text()
    assert "FAILED mtl/loso/alpha0.1/fold2/seed1986" in done.stdout
    assert "the test split is empty" in done.stdout  # the log's last line, in the summary
    assert json.loads((run_folder(out, "0.1", 1) / "results.json").read_text())["fold"] == 1

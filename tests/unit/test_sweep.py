"""The sweep's plan, resume rule and scheduling, with stand-in commands instead of recipes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mtl_ser.sweep import (
    LocalLauncher,
    Run,
    execute_sweep,
    job_environments,
    parse_number_list,
    plan_sweep,
    read_config,
    run_state,
)
from mtl_ser.sweep import plan as sweep_module

ROOT = Path(__file__).resolve().parents[2]
MTL = ROOT / "hparams/mtl.yaml"
TINY = ROOT / "hparams/overrides/tiny.yaml"

# A stand-in recipe: writes results.json (with its thread / GPU environment) into argv[1];
# fails while a file <folder>.crash exists, ends without results while <folder>.silent does.
FAKE_RECIPE = """
import json, os, sys
out = sys.argv[1]
print("training in", out)
if os.path.exists(out + ".crash"):
    sys.exit("ValueError: no such fold")
if os.path.exists(out + ".silent"):
    sys.exit(print("forgot to write results"))
json.dump({"wa": 0.5, "ua": 0.25, "wer": None, "confusion_matrix": [[1, 1], [0, 0]],
           "labels": ["a", "b"], "alpha": 0.0, "fold": 1, "seed": 1, "best_epoch": 1,
           "threads": os.environ["OMP_NUM_THREADS"],
           "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}, open(out + "/results.json", "w"))
"""


def fake_run(root: Path, fold: int, code: str = FAKE_RECIPE, digest: str = "d") -> Run:
    folder = root / f"fold{fold}"
    command = (sys.executable, "-c", code, str(folder))
    return Run("mtl", "loso", 0.0, fold, 1, folder, command, digest)


def quiet_execute(runs, overwrite_changed=False, **kwargs):
    lines = []
    launcher = LocalLauncher(gpus=kwargs.pop("gpus", []), **kwargs)
    outcome = execute_sweep(runs, launcher, overwrite_changed, echo=lines.append)
    return outcome, lines


def test_parse_number_list():
    assert parse_number_list("1-3,7") == [1, 2, 3, 7]
    assert parse_number_list("0,0.001,1e-2", float) == [0.0, 0.001, 0.01]
    for bad in ("1-", "3-1", "a", "1,1"):
        with pytest.raises(ValueError):
            parse_number_list(bad)


def test_job_environments_share_cores_and_spread_gpus():
    assert (
        job_environments(2, cores=2, gpus=[])
        == [{"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}] * 2
    )
    envs = job_environments(3, cores=16, gpus=["4", "6"])
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["5"] * 3
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["4", "6", "4"]
    with pytest.raises(ValueError):
        job_environments(0, cores=2, gpus=[])


def test_plan_layout_and_commands(tmp_path):
    runs = plan_sweep(
        MTL,
        tmp_path,
        alphas=[0.0, 0.01],
        folds=[2, 3],
        seeds=[7],
        extra=[str(TINY), "--data_folder=corpus"],
        alpha0_lr=1e-5,
        python="py",
    )
    assert [r.name for r in runs] == [
        "mtl/loso/alpha0.0/fold2/seed7",
        "mtl/loso/alpha0.01/fold2/seed7",
        "mtl/loso/alpha0.0/fold3/seed7",
        "mtl/loso/alpha0.01/fold3/seed7",
    ]
    first = runs[0]
    assert first.folder == tmp_path.resolve() / first.name
    assert list(first.command) == [
        "py",
        str(ROOT / "recipes/train_mtl.py"),
        str(MTL),
        str(TINY),
        "--data_folder=corpus",
        "--noprogressbar",
        "--lr_encoder=1e-05",
        "--lr_heads=1e-05",
        "--alpha=0.0",
        "--fold=2",
        "--seed=7",
        "--protocol=loso",
        f"--output_folder={first.folder}",
    ]
    # Only alpha = 0 gets Cai et al.'s lower learning rate.
    assert not any(a.startswith("--lr_") for a in runs[1].command)


def test_plan_defaults_follow_extends_and_override_files(tmp_path):
    runs = plan_sweep(ROOT / "hparams/ser.yaml", tmp_path, folds=[1], protocol="cai2021")
    [run] = runs
    assert (run.recipe, run.alpha, run.seed, run.protocol) == ("ser", 0.0, 1986, "cai2021")
    assert run.command[1] == str(ROOT / "recipes/train_ser.py")
    all_folds = plan_sweep(MTL, tmp_path, protocol="loso_speaker")
    assert [r.fold for r in all_folds] == list(range(1, 11))
    assert {r.alpha for r in all_folds} == {0.1}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"extra": ["--alpha=0.3"]}, "set alpha with the sweep's own options"),
        ({"extra": ["--output_folder=x"]}, "set output_folder"),
        ({"folds": [6]}, "protocol loso has folds 1..5; no fold"),
        ({"alphas": [-0.1]}, "alpha must be >= 0"),
        ({"alpha0_lr": 1e-5, "extra": ["--lr_encoder=1"]}, "conflict"),
        ({"extra": ["missing.yaml"]}, "override file missing.yaml not found"),
    ],
)
def test_plan_refuses_bad_requests(tmp_path, kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        plan_sweep(MTL, tmp_path, **kwargs)


def test_missing_recipe_script_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "recipes_folder", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/train_cnn.py, which does not"):
        sweep_module.recipe_script("cnn")
    with pytest.raises(ValueError, match="unknown recipe 'rnn'"):
        sweep_module.recipe_script("rnn")


def test_config_digest_ignores_comments_not_values(tmp_path):
    hparams = tmp_path / "h.yaml"
    hparams.write_text("recipe: mtl\nalpha: 0.1\nbox: !new:collections.Counter\n  a: 1\n")
    config, digest = read_config(hparams, [])
    assert config["alpha"] == 0.1
    assert config["box"] == {"__tag__": "!new:collections.Counter", "value": {"a": 1}}
    hparams.write_text(
        "# a comment\nrecipe: mtl\nalpha: 0.1   # weight\nbox: !new:collections.Counter\n  a: 1\n"
    )
    assert read_config(hparams, [])[1] == digest
    assert read_config(hparams, ["--alpha=0.2"])[1] != digest
    hparams.write_text("recipe: mtl\nalpha: 0.1\nbox: !new:collections.Counter\n  a: 2\n")
    assert read_config(hparams, [])[1] != digest


def test_runs_go_in_parallel_with_shared_threads_and_gpus(tmp_path):
    runs = [fake_run(tmp_path, k) for k in (1, 2, 3)]
    outcome, lines = quiet_execute(runs, jobs=2, cores=4, gpus=["5", "9"])
    assert outcome.ok and len(outcome.done) == 3
    results = [json.loads((r.folder / "results.json").read_text()) for r in runs]
    assert [r["threads"] for r in results] == ["2", "2", "2"]
    assert {results[0]["gpu"], results[1]["gpu"]} == {"5", "9"}  # the first two ran at once
    assert "training in" in (runs[0].folder / "sweep_log.txt").read_text()
    assert sum("] start" in line for line in lines) == 3
    assert all("WA 50.00%  UA 25.00%  WER n/a" in ln for ln in lines if "] done" in ln)
    stored = json.loads((runs[0].folder / "sweep_run.json").read_text())
    assert stored["command"] == list(runs[0].command) and stored["config_digest"] == "d"

    outcome, lines = quiet_execute(runs, jobs=2)
    assert len(outcome.skipped) == 3 and not outcome.done
    assert all("] skip" in line for line in lines)


def test_failed_runs_do_not_stop_the_others(tmp_path):
    runs = [fake_run(tmp_path, k) for k in (1, 2, 3)]
    (tmp_path / "fold1.crash").touch()
    (tmp_path / "fold3.silent").touch()
    outcome, lines = quiet_execute(runs, jobs=1)
    assert [r.fold for r, _ in outcome.done] == [2]
    assert [(r.fold, why) for r, why in outcome.failed] == [
        (1, "exit status 1: ValueError: no such fold"),
        (3, "exited without results.json: forgot to write results"),
    ]
    [failed_line] = [ln for ln in lines if "] failed" in ln and "fold1" in ln]
    assert f"log: {runs[0].folder / 'sweep_log.txt'}" in failed_line
    # Next time the failed runs are launched again (to resume), the finished one is skipped.
    (tmp_path / "fold1.crash").unlink()
    (tmp_path / "fold3.silent").unlink()
    assert [run_state(r)[0] for r in runs] == ["resume", "complete", "resume"]
    outcome, lines = quiet_execute(runs, jobs=1)
    assert [r.fold for r, _ in outcome.done] == [1, 3] and len(outcome.skipped) == 1
    assert sum("(resuming)" in line for line in lines) == 2
    assert (runs[0].folder / "sweep_log.txt").read_text().count("==== ") == 2


def test_changed_runs_are_refused_or_redone(tmp_path):
    run = fake_run(tmp_path, 1)
    assert run_state(run) == ("new", None)
    quiet_execute([run], jobs=1)
    assert run_state(run)[0] == "complete"
    other = fake_run(tmp_path, 1, digest="edited")
    state, why = run_state(other)
    assert state == "changed" and "hparams / override files have changed" in why
    with pytest.raises(ValueError, match=f"{other.folder}: the hparams"):
        quiet_execute([other], jobs=1)
    (other.folder / "marker").write_text("from the old configuration")
    outcome, _ = quiet_execute([other], jobs=1, overwrite_changed=True)
    assert len(outcome.done) == 1 and not (other.folder / "marker").exists()
    assert json.loads((other.folder / "sweep_run.json").read_text())["config_digest"] == "edited"

    stray = fake_run(tmp_path, 2)
    stray.folder.mkdir()
    (stray.folder / "results.json").write_text("{}")
    assert run_state(stray) == (
        "changed",
        "holds files but no sweep_run.json (not started by a sweep)",
    )

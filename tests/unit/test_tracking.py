"""Experiment trackers: choice, missing packages, and the sweep passing the choice on."""

import pytest

from mtl_ser.cli import main


def test_tracker_choice_and_missing_packages(tmp_path):
    import importlib.util

    from mtl_ser.tracking import ExperimentTracker

    with pytest.raises(ValueError, match="tracker 'neptune' is not one of"):
        ExperimentTracker("neptune", tmp_path)
    for kind in ("wandb", "mlflow"):
        if importlib.util.find_spec(kind) is None:
            with pytest.raises(
                ImportError, match=f"needs the '{kind}' package: pip install {kind}"
            ):
                ExperimentTracker(kind, tmp_path)
        else:
            assert ExperimentTracker(kind, tmp_path).kind == kind


def test_the_sweep_passes_the_tracker_to_every_run(tmp_path, capsys):
    argv = ["sweep", "hparams/mtl.yaml", "--alphas", "0,0.1", "--folds", "1", "--dry-run"]
    argv += ["--output-folder", str(tmp_path), "--", "--data_folder=x", "--tracker=tensorboard"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    commands = [line for line in out if "train_mtl.py" in line and "--output_folder=" in line]
    assert len(commands) == 2 and all("--tracker=tensorboard" in c for c in commands)

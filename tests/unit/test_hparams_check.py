"""Bad hyperparameters and arguments: one line naming key, value and what is allowed,
before anything is built."""

import subprocess
import sys

import pytest

from mtl_ser.experiment import given_keys, parse_arguments
from mtl_ser.hparams_check import ConfigError, check_hparams
from tests.recipes.helpers import ROOT

MTL = str(ROOT / "hparams/mtl.yaml")
TINY = str(ROOT / "hparams/overrides/tiny.yaml")


def check(tmp_path, *args, data=None, out=None):
    data = data or tmp_path
    out = out or tmp_path / "out"
    argv = [MTL, TINY, f"--data_folder={data}", f"--output_folder={out}", *args]
    hparams_file, run_opts, overrides = parse_arguments(argv)
    return check_hparams(hparams_file, overrides, run_opts, set(given_keys(argv)))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--alpha=abc"], r"--alpha=abc: alpha must be a number in \[0.0, inf\)"),
        (["--alpha=-0.1"], r"--alpha=-0.1: alpha must be a number"),
        (["--batch_size=0"], r"--batch_size=0: batch_size must be an integer >= 1"),
        (["--grad_accumulation_factor=0"], r"--grad_accumulation_factor=0: .* integer >= 1"),
        (["--max_len=0"], r"--max_len=0: max_len must be null or a number in \(0.0, inf\)"),
        (["--fold=9"], r"--fold=9: protocol loso has folds 1..5"),
        (["--protocol=cai2021", "--fold=11"], r"--fold=11: protocol cai2021 has folds 1..10"),
        (["--number_of_epochs=0"], r"--number_of_epochs=0: .* integer >= 1"),
        (["--ctc_reduction=mean"], r"ctc_reduction must be one of sum, length_mean, token_mean"),
        (["--lr_encoder=0"], r"--lr_encoder=0: lr_encoder must be a number in \(0.0"),
        (["--alpha=1", "--alpha=2"], r"--alpha is given more than once"),
        (["--fodl=2"], r"unknown hparams key 'fodl' .*; did you mean fold\?"),
        (["--task_weighting=gradnorm"], r"task_weighting must be one of fixed, uncertainty"),
        (["--class_weighting=balanced"], r"class_weighting must be one of none, inverse_freq"),
        (["--selection_metric=dimensions/ccc_mean"], r"selection_metric 'dimensions/ccc_mean'"),
        (["--alpha=0", "--selection_metric=ctc/cer"], r"with a task of \['emotion'\]"),
        (
            ["--sampling=class_balanced", "--dynamic_batching=True"],
            r"sampling: class_balanced .* needs sorting: grouped",
        ),
        (["--group_columns=[speaker,id]"], r"group_columns must be a list of distinct manifest"),
    ],
)
def test_bad_values_are_named(tmp_path, args, message):
    with pytest.raises(ConfigError, match=message):
        check(tmp_path, *args)


def test_missing_data_and_unwritable_output(tmp_path):
    with pytest.raises(ConfigError, match="data_folder = .*nowhere: no such folder"):
        check(tmp_path, data=tmp_path / "nowhere")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="output_folder = .*a_file/run: cannot write there"):
        check(tmp_path, out=blocker / "run")
    with pytest.raises(ConfigError, match="train_annotation = .*: no such manifest"):
        check(tmp_path, "--skip_prep=True")


def test_placeholder_and_override_file_problems(tmp_path):
    hparams_file, run_opts, overrides = parse_arguments([MTL, TINY])
    with pytest.raises(ConfigError, match=r"data_folder must be given \(e.g. --data_folder="):
        check_hparams(hparams_file, overrides, run_opts, set())
    fp8 = tmp_path / "fp8.yaml"
    fp8.write_text("precision: fp8\n")
    hparams_file, run_opts, overrides = parse_arguments(
        [MTL, str(fp8), f"--data_folder={tmp_path}"]
    )
    with pytest.raises(ConfigError, match="^precision: fp8: precision must be one of fp32, bf16"):
        check_hparams(hparams_file, overrides, run_opts, {"data_folder"})
    twice = tmp_path / "twice.yaml"
    twice.write_text("alpha: 0.1\nalpha: 0.2\n")
    with pytest.raises(ConfigError, match="twice.yaml: a key appears twice"):
        parse_arguments([MTL, str(twice)])


def test_good_configuration_passes_and_resolves(tmp_path):
    config = check(tmp_path, "--alpha=0.01", "--fold=5")
    assert config["output_folder"] == str(tmp_path / "out")
    assert config["alpha"] == 0.01 and config["fold"] == 5
    assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").iterdir())


def test_the_recipe_prints_one_line_and_exits_2(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "recipes/train_mtl.py"), MTL, TINY, "--batch_size=0"]
        + [f"--data_folder={tmp_path}", f"--output_folder={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "train_mtl.py: error: --batch_size=0: batch_size must be an integer >= 1\n"
    )

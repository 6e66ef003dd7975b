"""A run folder belongs to one setting (mtl_ser/settings.py), recorded at its start."""

import shutil
import subprocess

from mtl_ser.settings import SETTING_FILE, digest
from tests.recipes.helpers import ROOT, read_json, recipe_command, run_recipe


def folder_bytes(folder):
    # run.lock records the last holder (host, pid): rewritten by any attempt, meaning nothing.
    return {
        p.relative_to(folder): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "run.lock"
    }


def test_results_and_run_folder_record_the_setting(mtl_run):
    out, _ = mtl_run
    results = read_json(out / "results.json")
    assert results["schema"] == 2
    setting = results["setting"]
    assert setting == read_json(out / SETTING_FILE)
    values = setting["values"]
    assert setting["digest"] == digest(values)
    assert (values["alpha"], values["fold"], values["seed"]) == (0.1, 1, 1986)
    assert values["number_of_epochs"] == 2 and values["encoder_source"] == "random:tiny"
    assert values["encoder_weights_digest"] is None and len(values["manifests_digest"]) == 16
    assert "num_workers" in setting["ignored"] and "num_workers" not in values


def test_a_rerun_with_another_setting_is_refused_and_an_ignored_key_resumes(
    mtl_run, demo_corpus, tmp_path
):
    """The issue's case: a finished fold-1 / alpha-0.1 run re-run with --alpha=0.01 --fold=2
    must not test the old model on fold 2 nor replace its results."""
    out = tmp_path / "run"
    shutil.copytree(mtl_run[0], out)
    before = folder_bytes(out)
    command = recipe_command(
        "train_mtl.py", "mtl.yaml", demo_corpus, out, "--number_of_epochs=2", "--alpha=0.01"
    )
    done = subprocess.run([*command, "--fold=2"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    message = done.stderr.strip().splitlines()
    assert len(message) == 1 and "alpha 0.1 -> 0.01; fold 1 -> 2" in message[0], message
    assert folder_bytes(out) == before  # results, manifests, setting.json: untouched

    # num_workers cannot change the result: the finished run is only re-tested.
    done = run_recipe(
        "train_mtl.py", "mtl.yaml", demo_corpus, out, "--number_of_epochs=2", "--num_workers=1"
    )
    assert "Going into epoch" not in done.stdout + done.stderr
    after = read_json(out / "results.json")
    assert after["wa"] == read_json(mtl_run[0] / "results.json")["wa"]
    assert after["setting"] == read_json(mtl_run[0] / "results.json")["setting"]

"""Outputs are written whole and never over files the command did not create (issue 24, §3).

A killed export leaves the previous folder or the new one, never a mix; export, evaluate,
predict and embed refuse to replace a run's results, another run's export or a user's files
without --overwrite, naming what would be replaced, and never replace a training run folder.
"""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtl_ser.atomic import OWNER_FILE
from mtl_ser.cli import main
from mtl_ser.export import load_exported
from tests.recipes.helpers import ROOT, read_json

# Kills the process that does the work with SIGKILL at a chosen moment: the working
# process itself (no wrapping shell), at a point a timer could only hit by chance.
KILLER = """
import os, signal, sys
import {module} as target
original = getattr(target, {name!r})
def kill_at(*args, **kwargs):
    if {after!r}:
        original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(target, {name!r}, kill_at)
from mtl_ser.cli import main
sys.exit(main(sys.argv[1:]))
"""
KILL_POINTS = {
    # format: {moment: (module, function, run the function before dying)}
    "mtl_ser": {
        "after the encoder's weights": ("mtl_ser.export", "save_file", True),
        "at the swap into place": ("mtl_ser.atomic", "_exchange", False),
    },
    "hf": {
        "after the classifier": ("mtl_ser.export_hf", "ctc_model", False),
    },
}


def perturbed_copy(run: Path, out: Path) -> Path:
    """A copy of ``run`` whose encoder and emotion head weights differ (checkpoint digests
    updated), so that its export differs from the original's in every weight file."""
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("run.lock"))
    for checkpoint in (out / "save").glob("CKPT*"):
        marker = checkpoint / "COMPLETE"
        manifest = json.loads(marker.read_text())
        for name in ("encoder.ckpt", "emotion_head.ckpt"):
            path = checkpoint / name
            state = torch.load(path, weights_only=True)
            torch.save({k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}, path)
            data = path.read_bytes()
            manifest[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        marker.write_text(json.dumps(manifest, indent=1))
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def two_runs(mtl_run, tmp_path_factory):
    return mtl_run[0], perturbed_copy(mtl_run[0], tmp_path_factory.mktemp("run2") / "run")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtl_ser.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "export_format, moment",
    [(f, m) for f, moments in KILL_POINTS.items() for m in moments],
)
def test_killed_export_leaves_the_previous_folder_whole(two_runs, tmp_path, export_format, moment):
    run1, run2 = two_runs
    out = tmp_path / "model"
    assert main(["export", str(run1), str(out), "--format", export_format]) == 0
    before = snapshot(out)
    module, name, after = KILL_POINTS[export_format][moment]
    command = [sys.executable, "-c", KILLER.format(module=module, name=name, after=after)]
    command += ["export", str(run2), str(out), "--format", export_format, "--overwrite"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    # RUN1's export, byte for byte: no file of RUN2's in it.
    assert snapshot(out) == before
    if export_format == "mtl_ser":
        assert load_exported(out).info["source_run"] == str(run1.resolve())
    # The export done again replaces it whole, and cleans the killed one's leftovers.
    assert main(["export", str(run2), str(out), "--format", export_format, "--overwrite"]) == 0
    after_files = snapshot(out)
    assert read_json(out / OWNER_FILE)["run"] == str(run2.resolve())
    changed = {k for k in before if before[k] != after_files.get(k)}
    assert set(before) == set(after_files)
    weights = "encoder.safetensors" if export_format == "mtl_ser" else "model.safetensors"
    assert weights in changed
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_export_refuses_a_users_folder_and_another_runs_export(two_runs, tmp_path, capsys):
    run1, run2 = two_runs
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    (out / "labels.json").write_text('["mine"]\n')
    assert main(["export", str(run1), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(out) in err and "README.md, labels.json" in err and "--overwrite" in err
    assert (out / "README.md").read_text() == "my notes\n"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "labels.json"]
    # --overwrite replaces the folder whole (the user's files are gone, as its help says).
    assert main(["export", str(run1), str(out), "--overwrite"]) == 0
    assert (out / "README.md").read_text() != "my notes\n"
    capsys.readouterr()
    # The same run again: its own export, replaced without --overwrite.
    assert main(["export", str(run1), str(out)]) == 0
    # Another run's export is not: refused, naming it.
    before = snapshot(out)
    assert main(["export", str(run2), str(out)]) == 2
    err = capsys.readouterr().err
    assert "an output of `mtl-ser export` from other inputs" in err and "--overwrite" in err
    assert snapshot(out) == before
    # Nor is a training run folder, even with --overwrite.
    assert main(["export", str(run2), str(run1), "--overwrite"]) == 2
    assert "is a training run folder" in capsys.readouterr().err


def test_predict_and_evaluate_never_replace_a_runs_results(mtl_run, demo_corpus, tmp_path, capsys):
    run = mtl_run[0]
    results = (run / "results.json").read_bytes()
    wav = next((demo_corpus / "Session1").rglob("*.wav"))
    assert main(["predict", str(run), str(wav), "--output", str(run / "results.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "results.json exists and was not written by this command" in err
    for extra in ([], ["--overwrite"]):
        assert (
            main(
                ["evaluate", str(run), str(run / "manifests/test.json")]
                + extra
                + ["--output", str(run)]
            )
            == 2
        )
        assert "is a training run folder" in capsys.readouterr().err
    assert (run / "results.json").read_bytes() == results
    # predict's own output is replaced without --overwrite; a user's file is not.
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(wav), "--output", str(out)]) == 0
    assert main(["predict", str(run), str(wav), "--output", str(out)]) == 0
    user = tmp_path / "table.csv"
    user.write_text("a,b\n1,2\n")
    assert main(["predict", str(run), str(wav), "--output", str(user)]) == 2
    assert user.read_text() == "a,b\n1,2\n"
    assert main(["predict", str(run), str(wav), "--output", str(user), "--overwrite"]) == 0
    assert user.read_text().startswith("path,emotion")
    embedded = tmp_path / "user.npy"
    embedded.write_bytes(b"mine")
    assert main(["embed", str(run), str(wav), "--output", str(embedded)]) == 2
    assert embedded.read_bytes() == b"mine"
    assert not list(tmp_path.glob(".*partial*"))


def test_evaluate_writes_its_folder_whole_and_refuses_a_users(mtl_run, tmp_path, capsys):
    run = mtl_run[0]
    manifest = run / "manifests/test.json"
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), str(manifest), "--output", str(out)]) == 0
    assert read_json(out / "results.json")["evaluation"]["model"] == str(run.resolve())
    # The same evaluation again replaces its own folder; a user's folder is refused.
    assert main(["evaluate", str(run), str(manifest), "--output", str(out)]) == 0
    user = tmp_path / "user"
    user.mkdir()
    (user / "results.json").write_text("{}")
    capsys.readouterr()
    assert main(["evaluate", str(run), str(manifest), "--output", str(user)]) == 2
    err = capsys.readouterr().err
    assert "files this command did not write (results.json)" in err
    assert (user / "results.json").read_text() == "{}"

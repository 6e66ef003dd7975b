"""Running recipes as a user does: a subprocess with the repository's hparams files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "hparams/overrides/tiny.yaml")
CNN_SMALL = str(ROOT / "hparams/overrides/cnn_small.yaml")


def recipe_command(
    recipe: str, hparams: str, data: Path, out: Path, *extra: str, overrides=(TINY,)
) -> list[str]:
    """The command line of a run of ``recipes/<recipe>`` on ``data`` with the given override
    files (default: the tiny wav2vec2 encoder)."""
    return [
        sys.executable,
        str(ROOT / "recipes" / recipe),
        str(ROOT / "hparams" / hparams),
        *overrides,
        f"--data_folder={data}",
        f"--output_folder={out}",
        "--noprogressbar",
        *extra,
    ]


def run_recipe(*args, **kwargs) -> subprocess.CompletedProcess:
    """Runs a recipe to completion; fails the test with its output if it fails."""
    done = subprocess.run(recipe_command(*args, **kwargs), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def epoch_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "epoch_log.jsonl").read_text().splitlines()]


def tiny_mtl_brain(tmp_path: Path, *overrides: str, adjust=None, checkpointed=False):
    """The tiny multi-task `EmotionBrain` (hparams/mtl.yaml + tiny.yaml) on the CPU, without a
    checkpointer, for the four IEMOCAP classes, one step per epoch, optimisers initialised.

    Args:
        tmp_path: data and output folder (nothing is read from it).
        overrides: further ``--key=value`` arguments.
        adjust: called with the loaded hparams before the Brain is built (e.g. to swap the
            optimiser classes).
        checkpointed: with the hparams' checkpointer (``<tmp_path>/save``), as a recipe.
    """
    from hyperpyyaml import load_hyperpyyaml

    from mtl_ser.brain import EmotionBrain
    from mtl_ser.data.text import CharVocabulary
    from mtl_ser.experiment import parse_arguments

    argv = [str(ROOT / "hparams/mtl.yaml"), TINY, f"--data_folder={tmp_path}"]
    argv += [f"--output_folder={tmp_path}", *overrides]
    hparams_file, _, yaml_overrides = parse_arguments(argv)
    with open(hparams_file) as f:
        hparams = load_hyperpyyaml(f, yaml_overrides)
    hparams["emotion_head"].set_num_classes(4)
    if adjust is not None:
        adjust(hparams)
    brain = EmotionBrain(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts={"device": "cpu"},
        checkpointer=hparams["checkpointer"] if checkpointed else None,
        labels=("neu", "hap", "ang", "sad"),
        vocab=CharVocabulary(),
        identity={},
    )
    brain.batches_per_epoch = brain.steps_per_epoch = 1
    brain.init_optimizers()
    return brain

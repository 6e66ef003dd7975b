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

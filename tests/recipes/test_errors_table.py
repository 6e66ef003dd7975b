"""Errors, not tracebacks (issue 24, §6): a table of expected failures walked through the
real `mtl-ser` command and the real recipe (hparams/overrides/tiny.yaml, the demo corpus).

Each case must end with exit status 2, exactly one ``<program>: error: ...`` line naming
the file, key or value (and what to do), no traceback, and, for a recipe, before anything
was prepared or built. The cases run in forked processes of one interpreter that imported
the libraries once (tests/recipes/error_driver.py); two of them also run cold, as a user
types them, to show that the driver changes nothing.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch
from transformers import Wav2Vec2FeatureExtractor

from tests.recipes.helpers import ROOT, TINY, recipe_command

DRIVER = Path(__file__).with_name("error_driver.py")
MISSING_TRACKER = next(
    (kind for kind in ("wandb", "mlflow") if importlib.util.find_spec(kind) is None), None
)


def make_inputs(root: Path) -> None:
    """The bad files of the table, under ``root``."""
    (root / "audio").mkdir()
    soundfile.write(root / "audio/a.wav", torch.zeros(1600).numpy(), 16000)
    (root / "header_only.csv").write_text("path,emotion,speaker\n")
    (root / "latin1.csv").write_bytes(b"path,emotion,speaker,transcript\na.wav,neu,s1,caf\xe9\n")
    (root / "huge_field.csv").write_text(
        'path,emotion,speaker,transcript\na.wav,neu,s1,"' + "x" * 200_000 + '"\n'
    )
    (root / "audio/loop1").symlink_to("loop2")
    (root / "audio/loop2").symlink_to("loop1")
    (root / "loop.csv").write_text("path,emotion,speaker\nloop1,neu,s1\n")
    (root / "syntax.yaml").write_text("lr_heads: [0.1\n")
    (root / "tab.yaml").write_text("lr_heads:\t0.1\n")
    text = (ROOT / "hparams/mtl.yaml").read_text()
    lines = [line for line in text.splitlines() if not line.startswith("alpha:")]
    (root / "no_alpha.yaml").write_text("\n".join(lines) + "\n")
    (root / "no_config").mkdir()
    (root / "no_config/model.safetensors").write_bytes(b"")
    # A save_pretrained encoder whose weights file was cut short (an interrupted copy).
    from mtl_ser.models.backbones import build_ssl_model

    model, _ = build_ssl_model("random:tiny")
    model.save_pretrained(root / "truncated")
    Wav2Vec2FeatureExtractor().save_pretrained(root / "truncated")
    weights = root / "truncated/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    # An exported model (untrained) whose encoder weights were cut short.
    export_untrained(root / "exported")
    encoder = root / "exported/encoder.safetensors"
    encoder.write_bytes(encoder.read_bytes()[:1000])


def export_untrained(folder: Path) -> None:
    """An export folder of a random tiny encoder and emotion head (no training needed)."""
    from mtl_ser.data.text import CharVocabulary
    from mtl_ser.export import LoadedModel, _write_export, module_spec
    from mtl_ser.model_spec import SPEC_FORMAT
    from mtl_ser.models.heads import EmotionHead
    from mtl_ser.models.ssl import SSLEncoder

    encoder = SSLEncoder("random:tiny")
    modules = {"encoder": encoder, "emotion_head": EmotionHead(encoder.output_size, n_classes=4)}
    labels = ("neu", "hap", "ang", "sad")
    spec = {
        "format": SPEC_FORMAT,
        "modules": {name: module_spec(m) for name, m in modules.items()},
        "labels": list(labels),
        "vocab": list(CharVocabulary().characters),
        "sample_rate": 16000,
        "channels": "mean",
    }
    info = {"results": None, "checkpoint_epoch": 1, "valid_ua": None, "source_run": "none"}
    folder.mkdir()
    _write_export(LoadedModel(modules, labels, CharVocabulary(), 16000, info, spec), folder)


# (case id, "cli" or "recipe", arguments ({root} = the bad inputs' folder), the strings the
# error line must hold, override files for a recipe). A recipe's own arguments: tiny.yaml,
# the demo corpus, an output folder of its own.
CSV = ["prepare", "csv", "--audio-root", "{root}/audio", "--output-folder", "{root}/out_{id}"]
CASES = [
    ("header-only CSV", "cli", [*CSV, "--csv", "{root}/header_only.csv"],
     ["header_only.csv: no data row"], ()),
    ("Latin-1 CSV", "cli", [*CSV, "--csv", "{root}/latin1.csv"],
     ["latin1.csv, line 2: not UTF-8", "0xe9", "save the CSV as UTF-8"], ()),
    ("CSV field over the csv module's limit", "cli", [*CSV, "--csv", "{root}/huge_field.csv"],
     ["huge_field.csv, line 2", "field larger than field limit"], ()),
    ("symlink loop in a CSV path", "cli", [*CSV, "--csv", "{root}/loop.csv"],
     ["loop.csv: 1 bad row"], ()),
    ("corrupt safetensors of an export", "cli",
     ["predict", "{root}/exported", "{root}/audio/a.wav"],
     ["exported/encoder.safetensors: not a readable safetensors file", "export the model again"],
     ()),
    ("predict on a device that is none", "cli",
     ["predict", "{root}/exported", "{root}/audio/a.wav", "--device=gpu"],
     ["--device=gpu: not a device"], ()),
    ("YAML syntax error in an override file", "recipe", [],
     ["syntax.yaml, line 2, column 1: not valid YAML"], ("syntax.yaml",)),
    ("tab in an override file", "recipe", [],
     ["tab.yaml, line 1, column 10: not valid YAML", "spaces, not tabs"], ("tab.yaml",)),
    ("YAML error on the command line", "recipe", ["--lr_heads=[0.1"],
     ["the command-line options (--lr_heads=[0.1): not valid YAML"], ()),
    ("hparams file without alpha", "recipe", ["hparams={root}/no_alpha.yaml"],
     ["no_alpha.yaml has no 'alpha' key"], ()),
    ("a GPU this machine lacks", "recipe", ["--device=cuda:97"],
     ["--device=cuda:97: this machine has", "use --device=cpu"], ()),
    ("a device that is none", "recipe", ["--device=gpu"], ["--device=gpu: not a device"], ()),
    ("fp16 on CPU", "recipe", ["--precision=fp16"],
     ["--precision=fp16: fp16 needs a CUDA device", "bf16"], ()),
    ("unknown random preset", "recipe", ["--encoder_source=random:huge"],
     ["--encoder_source=random:huge: unknown random preset 'huge'", "wavlm-tiny"], ()),
    ("encoder folder without config.json", "recipe", ["--encoder_source={root}/no_config"],
     ["no_config has no config.json", "save_pretrained"], ()),
    ("corrupt safetensors of an encoder", "recipe", ["--encoder_source={root}/truncated"],
     ["truncated/model.safetensors: not a readable safetensors file"], ()),
    ("wrong-type encoder", "recipe", ["--encoder_type=hubert"],
     ["--encoder_type=hubert", "is a 'wav2vec2' model, but encoder_type 'hubert'"], ()),
    ("unknown encoder type", "recipe", ["--encoder_type=wav2vec3"],
     ["--encoder_type=wav2vec3: encoder_type must be null or one of"], ()),
    pytest.param(
        "tracker whose package is missing", "recipe", [f"--tracker={MISSING_TRACKER}"],
        [f"--tracker={MISSING_TRACKER}", f"pip install {MISSING_TRACKER}"], (),
        marks=pytest.mark.skipif(MISSING_TRACKER is None, reason="every tracker installed"),
    ),
]  # fmt: skip


def command(case_id, kind, args, overrides, root: Path, demo_corpus: Path) -> list[str]:
    """The command line of a case, as a user would type it (without ``python``)."""
    args = [a.format(root=root, id=len(case_id)) for a in args]
    if kind == "cli":
        return ["mtl_ser.cli", *args]
    hparams = "mtl.yaml"
    if args and args[0].startswith("hparams="):
        hparams = args.pop(0).split("=", 1)[1]
    files = (TINY, *(str(root / f) for f in overrides))
    out = root / f"run_{abs(hash(case_id))}"
    return recipe_command("train_mtl.py", hparams, demo_corpus, out, *args, overrides=files)[1:]


def check(case_id, status: int, output: str, expected: list[str], run_folder: Path | None):
    assert "Traceback" not in output, f"{case_id}:\n{output[-3000:]}"
    errors = [line for line in output.splitlines() if ": error: " in line]
    assert len(errors) == 1, f"{case_id}: {output[-2000:]}"
    for text in expected:
        assert text in errors[0], f"{case_id}: {errors[0]!r} lacks {text!r}"
    assert status == 2, f"{case_id}: exit status {status}"
    if run_folder is not None:  # refused before preparing data or building a model
        assert not (run_folder / "manifests").exists() and not (run_folder / "save").exists()


@pytest.fixture(scope="module")
def table_results(demo_corpus, tmp_path_factory):
    """Runs every case of the table once: {case id: (status, stdout + stderr, run folder)}."""
    root = tmp_path_factory.mktemp("bad_inputs")
    make_inputs(root)
    cases, meta = [], {}
    for param in CASES:
        case_id, kind, args, expected, overrides = getattr(param, "values", param)
        argv = command(case_id, kind, args, overrides, root, demo_corpus)
        out = root / "results" / str(len(cases))
        cases.append({"argv": argv, "out": str(out)})
        folder = next((Path(a.split("=", 1)[1]) for a in argv if "--output_folder=" in a), None)
        meta[case_id] = (out, folder)
    subprocess.run(
        [sys.executable, str(DRIVER)], input=json.dumps(cases), text=True, cwd=ROOT, check=True
    )
    return {
        case_id: (
            int((out / "status").read_text()),
            (out / "stdout").read_text() + (out / "stderr").read_text(),
            folder,
        )
        for case_id, (out, folder) in meta.items()
    }


@pytest.mark.parametrize("case_id, kind, args, expected, overrides", CASES)
def test_expected_failure_is_one_line(table_results, case_id, kind, args, expected, overrides):
    status, output, folder = table_results[case_id]
    check(case_id, status, output, expected, folder)


@pytest.mark.parametrize("case_id", ["tab in an override file", "header-only CSV"])
def test_cold_runs_agree_with_the_driver(demo_corpus, tmp_path, case_id):
    """The same cases as a user types them: ``python recipes/train_mtl.py ...`` and
    ``python -m mtl_ser.cli ...`` in fresh interpreters."""
    make_inputs(tmp_path)
    _, kind, args, expected, overrides = next(c for c in CASES if c[0] == case_id)
    argv = command(case_id, kind, args, overrides, tmp_path, demo_corpus)
    argv = ["-m", *argv] if argv[0] == "mtl_ser.cli" else argv
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT)
    folder = tmp_path / f"run_{abs(hash(case_id))}" if kind == "recipe" else None
    check(case_id, done.returncode, done.stdout + done.stderr, expected, folder)

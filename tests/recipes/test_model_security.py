"""A model folder can only ever build allow-listed modules from validated arguments and
tensors: every attack of issue 14 is refused, and none of their payloads runs."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from mtl_ser.checkpoints import COMPLETE
from mtl_ser.cli import main
from mtl_ser.export import EXPORT_FILE, SPEC_FILE, export_run, load_exported, load_run
from mtl_ser.model_spec import SpecError


@pytest.fixture(scope="module")
def exported(mtl_run, tmp_path_factory):
    return export_run(mtl_run[0], tmp_path_factory.mktemp("secure") / "model")


def tampered(exported, tmp_path, change) -> "os.PathLike":
    """A copy of the export whose mtl_ser_model.json went through ``change(meta)``."""
    folder = tmp_path / "tampered"
    shutil.copytree(exported, folder)
    meta = json.loads((folder / EXPORT_FILE).read_text())
    change(meta)
    (folder / EXPORT_FILE).write_text(json.dumps(meta))
    return folder


def test_the_untampered_export_loads(exported, tmp_path):
    assert set(load_exported(exported).modules) == {"encoder", "emotion_head", "ctc_head"}

    def legacy(meta):  # exports made before the encoder was renamed still load
        meta["spec"]["modules"]["encoder"]["class"] = "mtl_ser.models.wav2vec2.Wav2Vec2Encoder"

    assert load_exported(tampered(exported, tmp_path, legacy)).modules["encoder"].num_layers == 3


def test_naming_any_other_callable_is_refused(exported, tmp_path, capsys):
    marker = tmp_path / "pwned"
    attacks = {
        # Ran a shell command during `mtl-ser predict` before the allow-list.
        "mtl_ser.sweep.main": {
            "argv": ["hparams/mtl.yaml", f"--x=!apply:os.system [touch {marker}]"]
        },
        # Overwrote a file.
        "mtl_ser.export.save_file": {"tensors": {}, "filename": str(marker)},
        "os.system": {"command": f"touch {marker}"},
    }
    for target, kwargs in attacks.items():

        def change(meta, target=target, kwargs=kwargs):
            meta["spec"]["modules"]["emotion_head"] = {"class": target, "kwargs": kwargs}

        folder = tampered(exported, tmp_path / target, change)
        with pytest.raises(SpecError, match=f"class '{target}' is not a buildable module"):
            load_exported(folder)
        assert main(["predict", str(folder), str(exported / "README.md")]) == 2
        assert "is not a buildable module" in capsys.readouterr().err
        assert not marker.exists()


@pytest.mark.parametrize(
    "module, key, value, message",
    [
        ("emotion_head", "pooling", "!apply:os.system ['touch pwned']", "pooling must be one of"),
        ("emotion_head", "backdoor", 1, r"unknown keys \['backdoor'\]"),
        ("emotion_head", "n_classes", 10**9, "n_classes must be an integer in"),
        ("ctc_head", "dropout", "0.1", "dropout must be a number"),
        ("encoder", "normalize_waveform", "yes", "must be true or false"),
    ],
)
def test_bad_arguments_are_refused(exported, tmp_path, module, key, value, message):
    def change(meta):
        meta["spec"]["modules"][module]["kwargs"][key] = value

    with pytest.raises(SpecError, match=message):
        load_exported(tampered(exported, tmp_path, change))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("model_type", "bert", "buildable encoders"),
        ("auto_map", {"AutoModel": "evil.Model"}, r"does not have: \['auto_map'\]"),
        ("hidden_size", "64", "hidden_size must be an integer"),
        ("feat_extract_norm", ["group"], "must be a string"),
    ],
)
def test_encoder_config_must_be_a_supported_hf_config(exported, tmp_path, key, value, message):
    def change(meta):
        meta["spec"]["modules"]["encoder"]["kwargs"]["source"][key] = value

    with pytest.raises(SpecError, match=message):
        load_exported(tampered(exported, tmp_path, change))


DECODING = {
    "ctc_decoding": "beam",
    "beam_width": 8,
    "lm_weight": 0.5,
    "word_score": 0.0,
    "lm": "lm.arpa",
    "lm_digest": "0123456789abcdef",
}


def test_spec_level_keys_are_checked(exported, tmp_path):
    for change, message in (
        (lambda m: m.update(extra=1), "exactly the keys spec and info"),
        (lambda m: m["spec"].update(plugins=["x"]), r"unknown keys \['plugins'\]"),
        (lambda m: m["spec"].update(labels=["a", "a"]), "repeats a class"),
        (lambda m: m["spec"]["modules"].pop("encoder"), r"lacks \['encoder'\]"),
        (lambda m: m["spec"].update(temperature=0), r"temperature must be a number in"),
        (  # a beam decoder's LM lies inside the export (or at an absolute path of a run)
            lambda m: m["spec"].update(decoding={**DECODING, "lm": "../../lm.arpa"}),
            "decoding.lm must be a file name or an absolute path",
        ),
        (
            lambda m: m["spec"].update(decoding={**DECODING, "lm_digest": "x; rm"}),
            "lm_digest must be 16 hex characters",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            load_exported(tampered(exported, tmp_path / message[:5], change))


PAYLOAD = """
import os, pickle, sys
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
with open(sys.argv[1], "wb") as f:
    pickle.dump({"classifier.weight": Payload()}, f)
"""


def test_pickle_payload_in_a_checkpoint_never_runs(mtl_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mtl_run[0], run, ignore=shutil.ignore_patterns("*optimizer*"))
    marker = tmp_path / "pwned"
    for ckpt in run.glob("save/CKPT*/emotion_head.ckpt"):
        subprocess.run([sys.executable, "-c", PAYLOAD, str(ckpt), str(marker)], check=True)
        # The attacker also rewrites the checkpoint's file list, so that it verifies.
        data = ckpt.read_bytes()
        manifest = json.loads((ckpt.parent / COMPLETE).read_text())
        manifest[ckpt.name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (ckpt.parent / COMPLETE).write_text(json.dumps(manifest))
    code = (
        "from mtl_ser.export import load_run\n"
        "try:\n"
        f"    load_run({str(run)!r})\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "emotion_head.ckpt: refusing to load it: not a plain tensor checkpoint" in done.stdout
    assert not marker.exists()


def test_run_folder_spec_is_checked_too(mtl_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mtl_run[0], run, ignore=shutil.ignore_patterns("*optimizer*"))
    spec = json.loads((run / SPEC_FILE).read_text())
    spec["modules"]["encoder"]["class"] = "mtl_ser.sweep.main"
    (run / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(SpecError, match=f"{SPEC_FILE}: refusing to load this model"):
        load_run(run)

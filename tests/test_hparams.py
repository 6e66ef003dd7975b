"""Every hparams file under hparams/ loads (with each override file that fits it)."""

from pathlib import Path

import pytest
from hyperpyyaml import load_hyperpyyaml

from mtl_ser.experiment import merge_layers, parse_arguments

HPARAMS = Path(__file__).resolve().parents[1] / "hparams"
MAIN_FILES = sorted(HPARAMS.glob("*.yaml"))
OVERRIDE_FILES = sorted((HPARAMS / "overrides").glob("*.yaml"))


def test_there_is_something_to_check():
    assert {p.name for p in MAIN_FILES} >= {"mtl.yaml", "ser.yaml"}
    assert {p.name for p in OVERRIDE_FILES} >= {"tiny.yaml"}


@pytest.mark.parametrize("override", [None, *OVERRIDE_FILES], ids=lambda p: p and p.name)
@pytest.mark.parametrize("hparams", MAIN_FILES, ids=lambda p: p.name)
def test_hparams_load(hparams, override, tmp_path):
    argv = [str(hparams)] + ([str(override)] if override else [])
    argv += [f"--data_folder={tmp_path}", f"--output_folder={tmp_path / 'out'}"]
    base, _, overrides = parse_arguments(argv)
    text = Path(base).read_text()
    if "wav2vec2_source" in text and override is None:
        # Never download in tests: the structure is what is checked here.
        overrides = merge_layers([{"wav2vec2_source": "random:tiny"}]) + overrides
    with open(base) as f:
        hparams_dict = load_hyperpyyaml(f, overrides)
    assert hparams_dict["output_folder"] == str(tmp_path / "out")
    assert "encoder" in hparams_dict["modules"] and "emotion_head" in hparams_dict["modules"]

"""Every hparams file under hparams/ loads (with each override file that fits it).

An override file fits the hparams files that have all its keys (tiny.yaml: the wav2vec2
recipes; cnn_small.yaml: the CNN recipe). A pair that does not fit is not skipped: loading
it must fail on the foreign key, as it does for a user.
"""

from pathlib import Path

import pytest
from hyperpyyaml import load_hyperpyyaml
from ruamel.yaml import YAML

from mtl_ser.experiment import merge_layers, parse_arguments, resolve_extends

HPARAMS = Path(__file__).resolve().parents[1] / "hparams"
MAIN_FILES = sorted(HPARAMS.glob("*.yaml"))
OVERRIDE_FILES = sorted((HPARAMS / "overrides").glob("*.yaml"))


def top_level_keys(path: Path) -> set[str]:
    """The keys of an hparams or override file, including those of the files it extends."""
    base, layers = resolve_extends(path)
    keys = set(YAML().load(Path(base).read_text()))
    for layer in layers:
        keys |= set(layer)
    return keys


def fits(override: Path, hparams: Path) -> bool:
    return top_level_keys(override) <= top_level_keys(hparams)


def load(hparams: Path, override: Path | None, tmp_path: Path) -> dict:
    argv = [str(hparams)] + ([str(override)] if override else [])
    argv += [f"--data_folder={tmp_path}", f"--output_folder={tmp_path / 'out'}"]
    base, _, overrides = parse_arguments(argv)
    text = Path(base).read_text()
    sets_source = override is not None and "wav2vec2_source" in override.read_text()
    if "wav2vec2_source" in text and not sets_source:
        # Never download in tests: the structure is what is checked here.
        overrides = merge_layers([{"wav2vec2_source": "random:tiny"}]) + overrides
    with open(base) as f:
        return load_hyperpyyaml(f, overrides)


def test_there_is_something_to_check():
    assert {p.name for p in MAIN_FILES} >= {"mtl.yaml", "ser.yaml", "cnn.yaml"}
    assert {p.name for p in OVERRIDE_FILES} >= {"tiny.yaml", "cnn_small.yaml", "superb_probe.yaml"}


def test_every_override_file_fits_some_hparams_file():
    fitting = {o.name: [h.name for h in MAIN_FILES if fits(o, h)] for o in OVERRIDE_FILES}
    assert all(fitting.values()), fitting
    assert fitting["tiny.yaml"] == ["mtl.yaml", "ser.yaml"]
    assert fitting["cnn_small.yaml"] == ["cnn.yaml"]
    assert fitting["superb_probe.yaml"] == ["mtl.yaml", "ser.yaml"]


@pytest.mark.parametrize("override", [None, *OVERRIDE_FILES], ids=lambda p: p and p.name)
@pytest.mark.parametrize("hparams", MAIN_FILES, ids=lambda p: p.name)
def test_hparams_load(hparams, override, tmp_path):
    if override is not None and not fits(override, hparams):
        foreign = sorted(top_level_keys(override) - top_level_keys(hparams))
        with pytest.raises(KeyError, match=f"Override '({'|'.join(foreign)})' not found"):
            load(hparams, override, tmp_path)
        return
    hparams_dict = load(hparams, override, tmp_path)
    assert hparams_dict["output_folder"] == str(tmp_path / "out")
    assert "encoder" in hparams_dict["modules"] and "emotion_head" in hparams_dict["modules"]
    # Keys every recipe's Brain and pipelines read (see mtl_ser/brain.py, data/pipelines.py).
    for key in (
        "alpha",
        "features",
        "encoder_cache",
        "batch_augment",
        "max_len",
        "encoder_name",
        "recipe",
    ):
        assert key in hparams_dict, key


def settings(name: str) -> dict:
    """The resolved settings of an hparams file as a user gets them (nothing built)."""
    from mtl_ser.hparams_check import resolved_config

    argv = [str(HPARAMS / name), "--data_folder=/corpus", "--output_folder=/out"]
    base, _, overrides = parse_arguments(argv)
    return resolved_config(base, overrides)


def test_mtl_yaml_holds_cai_et_al_settings():
    """The paper's hyperparameters (DESIGN.md section 4), and the released code's where the
    paper is silent: a change here changes the science, so it must be deliberate."""
    h = settings("mtl.yaml")
    assert h["wav2vec2_source"] == "facebook/wav2vec2-base"
    assert not h["freeze_encoder"] and not h["freeze_feature_encoder"]
    assert (h["alpha"], h["pooling"], h["head_dropout"]) == (0.1, "mean", 0.1)
    assert (h["ctc_reduction"], h["ctc_sum_utterances"]) == ("sum", 2)
    assert (h["lr_encoder"], h["lr_heads"], h["warmup_fraction"], h["lr_decay"]) == (
        5e-5,
        5e-5,
        0.1,
        True,
    )
    for opt in ("encoder_opt_class", "heads_opt_class"):
        assert h[opt]["betas"] == [0.9, 0.999] and h[opt]["eps"] == 1e-8
        assert h[opt]["weight_decay"] == 0.0
    assert "!name:torch.optim.AdamW" in (HPARAMS / "mtl.yaml").read_text()
    assert (h["batch_size"], h["grad_accumulation_factor"], h["number_of_epochs"]) == (8, 1, 100)
    assert (h["grad_clip"], h["max_grad_norm"], h["precision"], h["max_len"]) == (
        "global",
        1.0,
        "fp32",
        None,
    )
    assert h["augment_prob"] == 0.0 and h["checkpoint_selection"] == "best_valid"


def test_ser_yaml_is_mtl_without_ctc_at_the_alpha0_learning_rate():
    mtl, ser = settings("mtl.yaml"), settings("ser.yaml")
    assert (ser["alpha"], ser["lr_encoder"], ser["lr_heads"]) == (0.0, 1e-5, 1e-5)
    differing = {k for k in mtl if mtl[k] != ser[k]}
    # Optimiser mappings hold the learning rates; nothing else may drift.
    assert differing == {
        "recipe",
        "alpha",
        "lr_encoder",
        "lr_heads",
        "encoder_opt_class",
        "heads_opt_class",
    }

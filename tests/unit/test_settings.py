"""The full resolved setting of a run (mtl_ser/settings.py)."""

import json

import pytest

from mtl_ser.experiment import parse_arguments
from mtl_ser.hparams_check import ConfigError, resolved_config
from mtl_ser.settings import (
    IGNORED_KEYS,
    REPLICATE_KEYS,
    SETTING_FILE,
    check_run_folder,
    data_values,
    digest,
    encoder_weights_digest,
    group_key,
    hparams_values,
    make_setting,
    write_setting,
)
from tests.recipes.helpers import ROOT, TINY


def values_of(tmp_path, *extra, hparams=str(ROOT / "hparams/mtl.yaml")):
    """The setting values of a tiny multi-task run with ``extra`` command-line arguments."""
    files = [e for e in extra if e.endswith(".yaml")]  # override files come first
    options = [e for e in extra if not e.endswith(".yaml")]
    argv = [hparams, TINY, *files, f"--data_folder={tmp_path}", *options]
    hparams_file, run_opts, overrides = parse_arguments(argv)
    config = resolved_config(hparams_file, overrides)
    return hparams_values(hparams_file, overrides, config, run_opts)


def test_values_hold_what_changes_the_result_and_leave_out_what_cannot(tmp_path):
    values = values_of(tmp_path)
    for key in ("alpha", "fold", "seed", "lr_encoder", "pooling", "max_len", "padding_aware"):
        assert key in values, key
    for key in ("freeze_encoder", "emotion_layers", "batch_size", "sorting", "precision"):
        assert key in values, key
    assert values["encoder_source"] == "random:tiny" and values["world_size"] == 1
    assert not set(values) & set(IGNORED_KEYS)
    # Loader processes are dropped inside plain mappings too; the batch size stays.
    assert values["train_dataloader_opts"] == {"batch_size": 8}
    assert set(REPLICATE_KEYS) <= set(values)


def test_ignored_keys_may_differ_and_the_others_may_not(tmp_path):
    base = values_of(tmp_path)
    other_place = values_of(
        tmp_path / "elsewhere",
        "--num_workers=3",
        "--tracker=tensorboard",
        f"--output_folder={tmp_path / 'o'}",
        "--device=cpu",
        "--noprogressbar",
    )
    assert other_place == base
    for option in ("--alpha=0.01", "--fold=2", "--pooling=attentive", "--max_len=3.0"):
        assert values_of(tmp_path, option) != base, option
    # A command-line run option wins over the hparams file's value, as in SpeechBrain.
    assert values_of(tmp_path, "--precision=bf16")["precision"] == "bf16"
    # Run options that are no hparams keys count when given with a non-default value.
    assert values_of(tmp_path, "--eval_precision=bf16")["eval_precision"] == "bf16"


def test_a_key_added_to_an_hparams_file_counts_without_code(tmp_path):
    text = (ROOT / "hparams/mtl.yaml").read_text() + "\nnew_knob: 3\n"
    extended = tmp_path / "mtl_plus.yaml"
    extended.write_text(text)
    values = values_of(tmp_path, hparams=str(extended))
    assert values["new_knob"] == 3
    assert values_of(tmp_path, "--new_knob=4", hparams=str(extended))["new_knob"] == 4


def test_an_object_counts_by_its_definition(tmp_path):
    """Replacing the optimiser class changes the setting; only its referenced keys do not
    appear twice (they count by themselves)."""
    sgd = tmp_path / "sgd.yaml"
    sgd.write_text("encoder_opt_class: !name:torch.optim.SGD\n  lr: !ref <lr_encoder>\n")
    base = values_of(tmp_path)
    assert base["encoder_opt_class"]["!"] == "!name:torch.optim.AdamW"
    assert base["encoder_opt_class"]["lr"] == "!ref <lr_encoder>"
    assert values_of(tmp_path, str(sgd))["encoder_opt_class"] != base["encoder_opt_class"]


def test_digest_and_group_key():
    values = {"alpha": 0.1, "fold": 1, "seed": 1, "pooling": "mean"}
    setting = make_setting(values)
    assert setting["digest"] == digest(values) and len(setting["digest"]) == 16
    assert setting["values"] == values and "num_workers" in setting["ignored"]
    replicate = {**values, "fold": 3, "seed": 7}
    assert group_key(replicate) == group_key(values) and digest(replicate) != digest(values)
    assert group_key({**values, "alpha": 0.01}) != group_key(values)


def test_a_run_folder_of_another_setting_is_refused_in_one_line(tmp_path):
    values = {"alpha": 0.1, "fold": 1, "seed": 1, "manifests_digest": "aa"}
    write_setting(tmp_path, values)
    assert json.loads((tmp_path / SETTING_FILE).read_text())["values"] == values
    check_run_folder(tmp_path, values)  # the same setting resumes
    check_run_folder(tmp_path, {"alpha": 0.1, "fold": 1, "seed": 1}, partial=True)
    with pytest.raises(ConfigError) as err:
        check_run_folder(tmp_path, {**values, "alpha": 0.01, "fold": 2}, partial=True)
    message = str(err.value)
    assert "\n" not in message
    assert "alpha 0.1 -> 0.01; fold 1 -> 2" in message and "seed" not in message
    with pytest.raises(ConfigError, match='manifests_digest "aa" -> "bb"'):
        check_run_folder(tmp_path, {**values, "manifests_digest": "bb"})
    (tmp_path / SETTING_FILE).write_text("{trunc")
    with pytest.raises(ConfigError, match="setting.json: unreadable"):
        check_run_folder(tmp_path, values)


def test_encoder_and_manifest_digests_follow_the_bytes(tmp_path):
    assert encoder_weights_digest("random:tiny") is None
    encoder = tmp_path / "enc"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    (encoder / "model.safetensors").write_bytes(b"\x00" * 64)
    (encoder / "README.md").write_text("notes")
    first = encoder_weights_digest(str(encoder))
    (encoder / "README.md").write_text("other notes")  # not a weight file
    assert encoder_weights_digest(str(encoder)) == first
    (encoder / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 63)
    assert encoder_weights_digest(str(encoder)) != first
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no weight files"):
        encoder_weights_digest(str(tmp_path / "empty"))
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.json").write_text("{}")
    hparams = {f"{s}_annotation": str(tmp_path / f"{s}.json") for s in ("train", "valid", "test")}
    manifests = data_values(hparams)["manifests_digest"]
    (tmp_path / "test.json").write_text('{"a": 1}')
    assert data_values(hparams)["manifests_digest"] != manifests

"""Every save_pretrained checkpoint of every backbone loads under every documented masking
and freezing option, with every one of its encoder weights used (issue 24, section 5).

Real wav2vec2 / HuBERT / WavLM checkpoints hold ``masked_spec_embed`` (pretraining's learned
mask vector); transformers builds the model without it when both masking probabilities are
0 (``--mask_time_prob=0.0``), and builds it (randomly initialised) when a checkpoint saved
without masking is loaded with masking on. Both directions must load.
"""

import logging

import pytest
import torch
from safetensors.torch import load_file
from transformers import Wav2Vec2FeatureExtractor

from mtl_ser.models.backbones import RANDOM_PRESETS, build_ssl_model
from mtl_ser.models.ssl import SSLEncoder

PRETRAINING_MASK = "masked_spec_embed"
BACKBONE_PRESETS = [p for p in RANDOM_PRESETS if p.endswith("-tiny")]
# How the checkpoint was saved: with the mask vector (its config masks in time or in the
# feature axis, as real pretrained checkpoints do) or without (both probabilities 0).
CHECKPOINT_MASKING = {
    "time": {"mask_time_prob": 0.05, "mask_feature_prob": 0.0},
    "feature": {"mask_time_prob": 0.0, "mask_feature_prob": 0.1},
    "none": {"mask_time_prob": 0.0, "mask_feature_prob": 0.0},
}
FREEZING = {
    "fine-tune": {},
    "freeze_feature_encoder": {"freeze_feature_encoder": True},
    "freeze_encoder": {"freeze": True},
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{(preset, masking): folder} of tiny random checkpoints saved as transformers does."""
    folders = {}
    root = tmp_path_factory.mktemp("checkpoints")
    for preset in BACKBONE_PRESETS:
        for masking, probs in CHECKPOINT_MASKING.items():
            torch.manual_seed(0)
            model, _ = build_ssl_model(f"random:{preset}", **probs)
            assert (getattr(model, PRETRAINING_MASK, None) is not None) == (masking != "none")
            folder = root / f"{preset}-{masking}"
            model.save_pretrained(folder)
            Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(folder)
            folders[preset, masking] = folder
    return folders


@pytest.mark.parametrize("freezing", FREEZING)
@pytest.mark.parametrize("mask_time_prob", [0.0, 0.05])
@pytest.mark.parametrize("masking", CHECKPOINT_MASKING)
@pytest.mark.parametrize("preset", BACKBONE_PRESETS)
def test_checkpoint_loads_under_every_option(
    checkpoints, preset, masking, mask_time_prob, freezing, caplog
):
    folder = checkpoints[preset, masking]
    with caplog.at_level(logging.INFO, logger="mtl_ser.models.backbones"):
        encoder = SSLEncoder(str(folder), mask_time_prob=mask_time_prob, **FREEZING[freezing])
    saved = load_file(str(folder / "model.safetensors"))
    loaded = encoder.model.state_dict()
    # Every encoder weight of the checkpoint is used as saved; only the mask vector may differ.
    for key, tensor in saved.items():
        if key != PRETRAINING_MASK:
            torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0, msg=key)
    assert set(loaded) - {PRETRAINING_MASK} == set(saved) - {PRETRAINING_MASK}
    builds_mask = mask_time_prob > 0 or CHECKPOINT_MASKING[masking]["mask_feature_prob"] > 0
    assert (PRETRAINING_MASK in loaded) == builds_mask
    if (PRETRAINING_MASK in saved) != builds_mask:  # one of the two allowed differences
        assert PRETRAINING_MASK in caplog.text
    # The mask vector is never trained; frozen parts have no gradient.
    trainable = {n for n, p in encoder.model.named_parameters() if p.requires_grad}
    assert PRETRAINING_MASK not in trainable
    if freezing == "freeze_encoder":
        assert not trainable
    elif freezing == "freeze_feature_encoder":
        assert trainable and not any(n.startswith("feature_extractor.") for n in trainable)
    if freezing != "fine-tune":
        return  # a frozen encoder runs in eval mode: no masking, the forward pass below
    if preset == "wavlm-tiny" and masking == "feature":
        return  # transformers' WavLMConfig lacks mask_feature_min_masks: its bug, not ours
    # A training step's forward pass runs (masking applied where on).
    encoder.train()
    wavs = 0.1 * torch.randn(2, 8000)
    encoder(wavs, torch.tensor([1.0, 0.7]))


def test_other_unexpected_tensors_are_still_refused(checkpoints):
    """The mask vector is the exception, not a hole: another unknown tensor still fails."""
    from safetensors.torch import save_file

    folder = checkpoints["hubert-tiny", "time"]
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    try:
        save_file({**tensors, "masked_spec_embed_extra": torch.zeros(3)}, str(weights))
        with pytest.raises(ValueError, match="in the checkpoint but not in the model"):
            SSLEncoder(str(folder), mask_time_prob=0.0)
    finally:
        save_file(tensors, str(weights))

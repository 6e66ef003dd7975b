"""finetuning: full | frozen | lora | adapters on every backbone, adapter-only checkpoints and
merging adapters into plain weights."""

import pytest
import torch

from mtl_ser.export import load_tensors, module_spec
from mtl_ser.model_spec import build_module
from mtl_ser.models.encoders import build_encoder
from mtl_ser.models.peft_tuning import (
    AdapterCheckpoint,
    merged_encoder_state,
    parameter_counts,
    resolve_finetuning,
)

PRESETS = [
    "random:tiny",
    "random:hubert-tiny",
    "random:wavlm-tiny",
    "random:data2vec-audio-tiny",
    "random:whisper-tiny",
]


def _batch():
    gen = torch.Generator().manual_seed(3)
    wavs = 0.1 * torch.randn(2, 12000, generator=gen)
    wavs[1, 8000:] = 0
    return wavs, torch.tensor([1.0, 8000 / 12000])


def test_finetuning_and_the_older_freeze_switches():
    assert resolve_finetuning(None, False) == "full"
    assert resolve_finetuning(None, True) == "frozen"
    assert resolve_finetuning("frozen", True) == "frozen"
    with pytest.raises(ValueError, match="^freeze_encoder: True contradicts finetuning: lora"):
        resolve_finetuning("lora", True)
    with pytest.raises(ValueError, match="finetuning must be one of"):
        resolve_finetuning("prefix", False)
    # finetuning: frozen is freeze_encoder: True: nothing of the encoder trains, eval mode.
    for encoder in (
        build_encoder("random:tiny", finetuning="frozen"),
        build_encoder("random:tiny", freeze=True),
    ):
        assert not any(p.requires_grad for p in encoder.parameters())
        assert not encoder.train().training


@pytest.mark.parametrize("source", PRESETS)
@pytest.mark.parametrize("mode", ["lora", "adapters"])
def test_adapters_train_a_small_part_of_every_backbone(source, mode):
    torch.manual_seed(0)
    # Rank 4: the tiny presets are 64 wide, where rank 8 on WavLM's feed-forward is 6%.
    encoder = build_encoder(source, finetuning=mode, peft={"rank": 4})
    counts = parameter_counts({"encoder": encoder})
    assert 0 < counts["trained_encoder_parameters"] < 0.05 * counts["encoder_parameters"]
    trained = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert all(("lora_" if mode == "lora" else "ia3_") in n for n in trained)
    wavs, lens = _batch()
    encoder.train()(wavs, lens).hidden.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "source, mode", [("random:whisper-tiny", "lora"), ("random:wavlm-tiny", "adapters")]
)
def test_checkpoint_holds_adapters_only_and_merged_weights_give_the_same_output(
    source, mode, tmp_path
):
    torch.manual_seed(0)
    encoder = build_encoder(source, finetuning=mode, peft={"rank": 4, "alpha": 8})
    with torch.no_grad():  # adapters as after training (LoRA's B starts at zero)
        for p in encoder.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    checkpoint = tmp_path / "save" / "CKPT+1" / "encoder.ckpt"
    checkpoint.parent.mkdir(parents=True)
    AdapterCheckpoint(encoder).save(checkpoint)
    saved = load_tensors(checkpoint)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert set(saved) == trainable

    plain = build_module(module_spec(encoder))
    plain.load_state_dict(merged_encoder_state(tmp_path / "save", module_spec(encoder), saved))
    assert not any("lora_" in n or "ia3_" in n for n in plain.state_dict())
    wavs, lens = _batch()
    with torch.no_grad():
        expected = encoder.eval()(wavs, lens).hidden
        assert torch.allclose(plain.eval()(wavs, lens).hidden, expected, atol=1e-5)

    # Resume: a fresh encoder (other random weights) becomes the saved one exactly.
    torch.manual_seed(1)
    fresh = build_encoder(source, finetuning=mode, peft={"rank": 4, "alpha": 8})
    AdapterCheckpoint(fresh).load(checkpoint, end_of_epoch=True)
    state, fresh_state = encoder.state_dict(), fresh.state_dict()
    assert all(torch.equal(state[k], fresh_state[k]) for k in state)
    other = build_encoder(source, finetuning=mode, peft={"rank": 2, "alpha": 8})
    with pytest.raises(ValueError, match="trained with adapters"):
        AdapterCheckpoint(other).load(checkpoint, end_of_epoch=True)


def test_target_modules_that_match_nothing_are_an_error():
    with pytest.raises(ValueError, match="finetuning: lora: peft could not place adapters"):
        build_encoder("random:tiny", finetuning="lora", peft={"target_modules": ["nope"]})


def test_wavlm_attention_targets_are_refused():
    # transformers' WavLM attention never calls q_proj / v_proj: LoRA there would not train.
    with pytest.raises(ValueError, match=r"peft_target_modules \['q_proj'\]: transformers' wavlm"):
        build_encoder("random:wavlm-tiny", finetuning="lora", peft={"target_modules": ["q_proj"]})

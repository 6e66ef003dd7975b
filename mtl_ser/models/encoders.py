"""The one factory from a checkpoint to its padding-aware encoder wrapper, fine-tuning applied.

``model_type`` -> wrapper: wav2vec2, hubert, wavlm, data2vec-audio -> `SSLEncoder`
(`mtl_ser.models.backbones.BACKBONES`); whisper -> `WhisperEncoder`. `build_encoder` is what
the recipes' YAML calls; it reads the checkpoint's type (random preset, config dict or
config.json), refuses one of another type than ``encoder_type`` naming both, builds the
wrapper and applies ``finetuning`` (`mtl_ser.models.peft_tuning`).
"""

from __future__ import annotations

import transformers

from mtl_ser.models import backbones, peft_tuning, whisper
from mtl_ser.models.ssl import SSLEncoder

ENCODER_TYPES = (*backbones.BACKBONES, whisper.MODEL_TYPE)


def checkpoint_model_type(source: str | dict, save_path: str | None = None) -> str:
    """The ``model_type`` of an encoder source (random preset, config dict, hub id or folder).

    Raises ValueError for an unknown random preset; OSError (with instructions) for a
    checkpoint that cannot be found.
    """
    if isinstance(source, dict):
        return source.get("model_type")
    if source.startswith("random:"):
        preset = source.split(":", 1)[1]
        if preset in whisper.RANDOM_PRESETS:
            return whisper.MODEL_TYPE
        if preset not in backbones.RANDOM_PRESETS:
            presets = [*backbones.RANDOM_PRESETS, *whisper.RANDOM_PRESETS]
            raise ValueError(f"unknown random preset {preset!r}; use one of {presets}")
        return backbones.RANDOM_PRESETS[preset][0]
    try:
        return transformers.AutoConfig.from_pretrained(source, cache_dir=save_path).model_type
    except (OSError, ValueError) as err:
        raise backbones.ModelNotFoundError(
            backbones._missing_model_message(source, save_path, err)
        ) from err


def build_encoder(
    source: str | dict,
    save_path: str | None = None,
    encoder_type: str | None = None,
    freeze: bool = False,
    freeze_feature_encoder: bool = False,
    finetuning: str | None = None,
    peft: dict | None = None,
    whisper_input: str = "true_length",
    normalize_waveform: bool | None = None,
    layerdrop: float | None = 0.0,
    mask_time_prob: float = 0.05,
    gradient_checkpointing: bool = False,
    padding_aware: bool = True,
):
    """The encoder of a run.

    Args:
        source, save_path: as `SSLEncoder` / `WhisperEncoder`.
        encoder_type: the ``model_type`` asked for (`ENCODER_TYPES`); None: the checkpoint's.
        freeze, freeze_feature_encoder: the older freezing switches (see `finetuning`).
        finetuning: full | frozen | lora | adapters, or None (``freeze`` decides: frozen or
            full); `mtl_ser.models.peft_tuning.resolve_finetuning` refuses contradictions.
        peft: the adapters' settings (`mtl_ser.models.peft_tuning.PEFT_DEFAULTS` keys).
        whisper_input: Whisper only: true_length | padded_30s.
        normalize_waveform, mask_time_prob, padding_aware: self-supervised encoders only.
        layerdrop, gradient_checkpointing: both families.

    Returns: an `SSLEncoder` or `WhisperEncoder`, its adapters injected for lora / adapters.
    Raises ValueError naming both types when the checkpoint is not of ``encoder_type``.
    """
    mode = peft_tuning.resolve_finetuning(finetuning, freeze)
    if encoder_type is not None and encoder_type not in ENCODER_TYPES:
        raise ValueError(f"encoder_type {encoder_type!r} is not one of {list(ENCODER_TYPES)}")
    model_type = checkpoint_model_type(source, save_path)
    where = "config" if isinstance(source, dict) else repr(source)
    whisper.check_type(model_type, encoder_type, where)
    frozen = mode == "frozen"
    if model_type == whisper.MODEL_TYPE:
        if not padding_aware:
            raise ValueError(
                "padding_aware: False is not defined for Whisper: use whisper_input: "
                "padded_30s for Whisper's own 30 s input"
            )
        encoder = whisper.WhisperEncoder(
            source,
            save_path,
            whisper_input=whisper_input,
            freeze=frozen,
            freeze_feature_encoder=freeze_feature_encoder,
            layerdrop=layerdrop,
            gradient_checkpointing=gradient_checkpointing,
        )
    else:
        encoder = SSLEncoder(
            source,
            save_path,
            encoder_type=encoder_type,
            freeze=frozen,
            freeze_feature_encoder=freeze_feature_encoder,
            normalize_waveform=normalize_waveform,
            layerdrop=layerdrop,
            mask_time_prob=mask_time_prob,
            gradient_checkpointing=gradient_checkpointing,
            padding_aware=padding_aware,
        )
    return peft_tuning.apply_finetuning(encoder, mode, peft)

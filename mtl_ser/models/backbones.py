"""The encoder families mtl_ser supports and the one factory that loads them.

`BACKBONES` maps a checkpoint's ``model_type`` (wav2vec2, hubert, wavlm, data2vec-audio) to its
transformers classes and conventions; `build_ssl_model` builds or loads the base model of any
of them, refusing a checkpoint of an unexpected or unsupported type and any load that would
drop, invent or reshape a weight; `RANDOM_PRESETS` are small random models for tests and CPU
runs (``random:<name>``). The padding-aware wrapper is `mtl_ser.models.ssl.SSLEncoder`.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import transformers

logger = logging.getLogger(__name__)

if not sys.stderr.isatty():
    # transformers' "Loading weights" / "Writing model shards" bars: only on a terminal.
    transformers.utils.logging.disable_progress_bar()


@dataclass(frozen=True)
class Backbone:
    """A supported encoder family: its transformers classes and conventions."""

    model_type: str  # config.json's model_type
    config: str  # transformers class names
    model: str
    for_classification: str
    for_ctc: str
    # "sdpa" where transformers implements it for the model, else "eager".
    attention: str
    # What the family's base checkpoint's feature extractor does; used for random presets
    # only (a real checkpoint's preprocessor_config.json decides).
    normalize: bool
    # The positional embedding is a stack of convolutions whose padded frames must be
    # re-zeroed between layers (data2vec-audio).
    stacked_positional_conv: bool = False

    def cls(self, role: str):
        return getattr(transformers, getattr(self, role))


BACKBONES = {
    b.model_type: b
    for b in (
        Backbone(
            "wav2vec2",
            "Wav2Vec2Config",
            "Wav2Vec2Model",
            "Wav2Vec2ForSequenceClassification",
            "Wav2Vec2ForCTC",
            "sdpa",
            True,
        ),
        Backbone(
            "hubert",
            "HubertConfig",
            "HubertModel",
            "HubertForSequenceClassification",
            "HubertForCTC",
            "sdpa",
            False,
        ),
        # transformers has no SDPA path for WavLM's gated relative position bias.
        Backbone(
            "wavlm",
            "WavLMConfig",
            "WavLMModel",
            "WavLMForSequenceClassification",
            "WavLMForCTC",
            "eager",
            False,
        ),
        Backbone(
            "data2vec-audio",
            "Data2VecAudioConfig",
            "Data2VecAudioModel",
            "Data2VecAudioForSequenceClassification",
            "Data2VecAudioForCTC",
            "sdpa",
            True,
            stacked_positional_conv=True,
        ),
    )
}

# The learned mask vector of pretraining (never trained here): transformers builds it only
# when mask_time_prob or mask_feature_prob is > 0, and checkpoints hold it or not whatever
# our masking option is, so its absence and its presence are both fine (and logged).
PRETRAINING_MASK = "masked_spec_embed"
# Checkpoint tensors that may be absent from / left out of the encoder without changing it:
# pretraining-only parts and task heads of fine-tuned checkpoints (we build our own heads).
# Anything else missing, unexpected or of another shape is an error: never a partial load.
IGNORED_UNEXPECTED = (
    "quantizer",  # wav2vec2 / WavLM pretraining: codebooks
    "project_q",
    "project_hid",
    "final_proj",  # HuBERT pretraining targets
    "label_embs_concat",
    "lm_head",  # task heads of fine-tuned checkpoints
    "projector",
    "classifier",
    "layer_weights",
    PRETRAINING_MASK,  # the model was built without masking (both probabilities 0)
)
IGNORED_MISSING = (PRETRAINING_MASK,)

_TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)
# Between the two, for CPU benchmarks where compute, not data loading, must dominate
# (benchmarks/train_epoch.py): ~3.7 M parameters, the base architecture's shape.
_SMALL = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=1024,
    conv_dim=(128,) * 7,
    num_conv_pos_embeddings=64,
    num_conv_pos_embedding_groups=16,
)
# ``random:<name>`` -> (model_type, config arguments). "tiny" models have ~0.2 M parameters
# and 20 ms frames like the real ones (2 CPU cores); "base" ones are the base architectures
# (transformers' defaults) without download.
RANDOM_PRESETS = {
    "tiny": ("wav2vec2", _TINY),
    "small": ("wav2vec2", _SMALL),
    "base": ("wav2vec2", {}),
    "wav2vec2-tiny": ("wav2vec2", _TINY),
    "wav2vec2-base": ("wav2vec2", {}),
    # wav2vec2-large-lv60 style: LayerNorm feature encoder, pre-norm transformer.
    "wav2vec2-lv60-tiny": (
        "wav2vec2",
        {**_TINY, "feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True},
    ),
    "hubert-tiny": ("hubert", _TINY),
    "hubert-base": ("hubert", {}),
    "wavlm-tiny": ("wavlm", {**_TINY, "num_buckets": 32, "max_bucket_distance": 100}),
    "wavlm-base": ("wavlm", {}),
    "data2vec-audio-tiny": (
        "data2vec-audio",
        {**_TINY, "num_conv_pos_embeddings": 2, "conv_pos_kernel_size": 5},
    ),
    "data2vec-audio-base": ("data2vec-audio", {}),
}


def backbone_of(model_type: str, expected: str | None = None, where: str = "") -> Backbone:
    """The `Backbone` of ``model_type``.

    Raises ValueError naming both types when ``expected`` is given and differs, or when the
    type is not supported (``where`` names the checkpoint in the message).
    """
    where = f" {where}" if where else ""
    if expected is not None and expected not in BACKBONES:
        raise ValueError(f"encoder_type {expected!r} is not one of {sorted(BACKBONES)}")
    if expected is not None and model_type != expected:
        raise ValueError(
            f"the checkpoint{where} is a {model_type!r} model, but encoder_type {expected!r} "
            "was asked for: set encoder_type to the checkpoint's type (or null) or use "
            "another checkpoint"
        )
    if model_type not in BACKBONES:
        raise ValueError(
            f"the checkpoint{where} has model_type {model_type!r}, which mtl_ser does not "
            f"support; supported: {sorted(BACKBONES)}"
        )
    return BACKBONES[model_type]


class ModelNotFoundError(OSError):
    """A pretrained encoder that is neither cached nor downloadable; says how to provide it."""


def _missing_model_message(source: str, save_path: str | None, err: Exception) -> str:
    return (
        f"could not load the encoder model {source!r} ({type(err).__name__}: {err}).\n"
        "Provide it in one of these ways:\n"
        f"  - run once with network access; it is then cached in {save_path or 'the HF cache'}\n"
        '  - on a machine with access: python -c "from transformers import AutoModel, '
        f"AutoFeatureExtractor as F; m='{source}'; "
        "AutoModel.from_pretrained(m).save_pretrained('enc'); "
        "F.from_pretrained(m).save_pretrained('enc')\", copy the folder and pass "
        "--encoder_source=path/to/enc\n"
        "  - for tests and the CPU demo, a random model: --encoder_source=random:tiny"
    )


def _check_loading_info(source: str, info: dict) -> None:
    """Raises ValueError when loading dropped, invented or reshaped any encoder weight."""

    def relevant(keys, ignored):
        return sorted(k for k in keys if k.split(".")[0] not in ignored)

    problems = {
        "missing from the checkpoint": relevant(info.get("missing_keys", ()), IGNORED_MISSING),
        "in the checkpoint but not in the model": relevant(
            info.get("unexpected_keys", ()), IGNORED_UNEXPECTED
        ),
        "of another shape": sorted(str(k) for k in info.get("mismatched_keys", ())),
    }
    for what, keys in (
        ("absent from the checkpoint: the model keeps its initial one", "missing_keys"),
        ("unused: the model masks nothing", "unexpected_keys"),
    ):
        if PRETRAINING_MASK in info.get(keys, ()):
            logger.info("%s: pretraining tensor %s %s", source, PRETRAINING_MASK, what)
    found = {what: keys for what, keys in problems.items() if keys}
    if found:
        detail = "; ".join(
            f"{len(keys)} tensor(s) {what} ({', '.join(keys[:5])}{', ...' * (len(keys) > 5)})"
            for what, keys in found.items()
        )
        raise ValueError(f"loading {source!r} would not use the checkpoint as saved: {detail}")


def build_ssl_model(
    source: str | dict,
    save_path: str | None = None,
    expected_type: str | None = None,
    **config_overrides,
):
    """Creates the Hugging Face base model of a supported backbone.

    Args:
        source: hub id, local folder with config.json + weights, ``random:<preset>``, or a
            config as a dict with its ``model_type`` (random weights, to be loaded from an
            export).
        save_path: hub cache folder for downloads (None: the default HF cache).
        expected_type: the ``model_type`` asked for (None: any supported one).
        **config_overrides: config attributes to override (layerdrop, mask_time_prob...).

    Returns: (model, Backbone). Raises ValueError for an unsupported or unexpected
    model_type, or a checkpoint whose weights do not all load; OSError with instructions
    when a pretrained model cannot be found.
    """
    if isinstance(source, dict):
        backbone = backbone_of(source.get("model_type"), expected_type, "config")
        config = backbone.cls("config").from_dict({**source, **config_overrides})
        return _instantiate(backbone, config), backbone
    if source.startswith("random:"):
        preset = source.split(":", 1)[1]
        if preset not in RANDOM_PRESETS:
            raise ValueError(f"unknown random preset {preset!r}; use one of {list(RANDOM_PRESETS)}")
        model_type, kwargs = RANDOM_PRESETS[preset]
        backbone = backbone_of(model_type, expected_type, source)
        config = backbone.cls("config")(**{**kwargs, **config_overrides})
        return _instantiate(backbone, config), backbone
    local = Path(source)
    if local.exists() and not (local / "config.json").is_file():
        raise OSError(f"{local} has no config.json: not a save_pretrained folder")
    try:
        config = transformers.AutoConfig.from_pretrained(source, cache_dir=save_path)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(_missing_model_message(source, save_path, err)) from err
    backbone = backbone_of(config.model_type, expected_type, repr(source))
    try:
        model, info = backbone.cls("model").from_pretrained(
            source,
            cache_dir=save_path,
            attn_implementation=backbone.attention,
            output_loading_info=True,
            **config_overrides,
        )
    except OSError as err:
        raise ModelNotFoundError(_missing_model_message(source, save_path, err)) from err
    _check_loading_info(source, info)
    return model, backbone


def _instantiate(backbone: Backbone, config):
    config._attn_implementation = backbone.attention
    return backbone.cls("model")(config)


def checkpoint_normalizes(source: str, save_path: str | None = None) -> bool | None:
    """``do_normalize`` of the checkpoint's preprocessor_config.json, or None without one."""
    path = Path(source) / "preprocessor_config.json"
    if not Path(source).is_dir():
        path = transformers.utils.cached_file(
            source,
            "preprocessor_config.json",
            cache_dir=save_path,
            _raise_exceptions_for_missing_entries=False,
        )
    if path is None or not Path(path).is_file():
        return None
    return bool(json.loads(Path(path).read_text()).get("do_normalize", False))

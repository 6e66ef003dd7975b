"""The only way a model folder becomes modules: an explicit allow-list with validated arguments.

A run's ``model_spec.json`` (and an export's ``mtl_ser_model.json``) names each module's class
and constructor arguments. Loading builds nothing but the classes in `BUILDABLE`, each with
arguments checked by its validator: known keys only, the expected JSON types, values in
range; an encoder's Hugging Face config must be one of a supported ``model_type`` with that
config class's own keys and value types. No class is imported by name, no YAML is parsed, no
code runs: a tampered file is refused with an error naming the file and what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from mtl_ser.models.backbones import BACKBONES
from mtl_ser.models.cnn import NORMALIZATIONS, CNNEncoder
from mtl_ser.models.fusion import FUSIONS, TextFusionHead
from mtl_ser.models.heads import LAYER_CHOICES, POOLINGS, CTCHead, EmotionHead
from mtl_ser.models.ssl import SSLEncoder
from mtl_ser.models.text_encoder import PRESETS as TEXT_PRESETS
from mtl_ser.models.text_encoder import text_config_classes
from mtl_ser.models.whisper import FRONT_END_KEYS, WHISPER_INPUTS, WhisperEncoder

SPEC_FORMAT = 1
INFERENCE_MODULES = ("encoder", "emotion_head", "ctc_head")
MAX_SIZE = 1 << 16  # no layer of a speech model is wider; keeps a tampered file from OOM


class SpecError(ValueError):
    """A model spec that is not one of the buildable, valid configurations."""


# ------------------------------------------------------------------------- value checks
def _int(value, key, low=1, high=MAX_SIZE):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{key} must be an integer in [{low}, {high}], not {value!r}")
    return value


def _float(value, key, low=0.0, high=1.0):
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise SpecError(f"{key} must be a number in [{low}, {high}], not {value!r}")
    return value


def _bool(value, key):
    if not isinstance(value, bool):
        raise SpecError(f"{key} must be true or false, not {value!r}")
    return value


def _choice(choices):
    def check(value, key):
        if value not in choices:
            raise SpecError(f"{key} must be one of {list(choices)}, not {value!r}")
        return value

    return check


def _optional(check):
    def optional(value, key):
        return None if value is None else check(value, key)

    return optional


def _mapping(value, where, schema: dict[str, Callable], required=()) -> dict:
    """Checks a dict against ``schema`` (key -> check): known keys only, required present."""
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be a mapping, not {type(value).__name__}")
    unknown = sorted(set(value) - set(schema))
    if unknown:
        raise SpecError(f"{where} has unknown keys {unknown}; allowed: {sorted(schema)}")
    missing = sorted(set(required) - set(value))
    if missing:
        raise SpecError(f"{where} lacks {missing}")
    return {key: schema[key](v, f"{where}.{key}") for key, v in value.items()}


_JSON_SCALARS = (str, int, float, bool, type(None))


def _json_like(value, key):
    """A plain JSON value (no objects that could be anything but data)."""
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, list):
        return [_json_like(v, key) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_like(v, key) for k, v in value.items()}
    raise SpecError(f"{key} holds a {type(value).__name__}, not plain JSON data")


def _same_kind(value, default, key):
    """``value`` of the JSON kind of the config class's default ``default`` (or null)."""
    if value is None:
        return None
    if isinstance(default, bool):
        return _bool(value, key)
    if isinstance(default, int):
        return _int(value, key, low=-MAX_SIZE, high=1 << 20)
    if isinstance(default, float):
        return _float(value, key, low=-1e9, high=1e9)
    if isinstance(default, str) and not isinstance(value, str):
        raise SpecError(f"{key} must be a string, not {value!r}")
    if isinstance(default, list | tuple):
        if not isinstance(value, list):
            raise SpecError(f"{key} must be a list, not {value!r}")
        return [_same_kind(v, default[0], key) if default else _json_like(v, key) for v in value]
    return _json_like(value, key)


# Config attributes that size tensors: positive and bounded.
_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_WHISPER_SIZES = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim")
_SSL_CONFIGS = {model_type: backbone.cls("config") for model_type, backbone in BACKBONES.items()}


def _hf_config(value, key, config_classes=None) -> dict:
    """A Hugging Face config dict of a supported encoder family (``config_classes``:
    model_type -> config class; default the self-supervised ones), and nothing else."""
    config_classes = config_classes or _SSL_CONFIGS
    if not isinstance(value, dict):
        raise SpecError(f"{key} must be a Hugging Face config mapping, not {value!r}")
    model_type = value.get("model_type")
    if model_type not in config_classes:
        raise SpecError(
            f"{key}.model_type is {model_type!r}; buildable encoders: {sorted(config_classes)}"
        )
    defaults = config_classes[model_type]().to_dict()
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise SpecError(f"{key} has keys that a {model_type} config does not have: {unknown}")
    checked = {k: _same_kind(v, defaults[k], f"{key}.{k}") for k, v in value.items()}
    for size in (*_SIZES, *_WHISPER_SIZES):
        if size in checked:
            _int(checked[size], f"{key}.{size}")
    for width in checked.get("conv_dim", []):
        _int(width, f"{key}.conv_dim")
    return checked


_LAYER_KEYS = {"layers": _choice(LAYER_CHOICES), "num_layers": _optional(_int)}

_FRONT_END = {
    "sample_rate": lambda v, k: _int(v, k, 1000, 384000),
    "n_fft": _int,
    "win_length": lambda v, k: _float(v, k, 0.1, 1000.0),
    "hop_length": lambda v, k: _float(v, k, 0.1, 1000.0),
    "n_mels": _int,
    "f_min": lambda v, k: _float(v, k, 0.0, 192000.0),
    "f_max": lambda v, k: _float(v, k, 0.0, 192000.0),
    "log_mel": _bool,
    "top_db": lambda v, k: _float(v, k, 0.0, 1000.0),
    "normalize": _choice(NORMALIZATIONS),
}


def _channels(value, key):
    if not isinstance(value, list) or not value:
        raise SpecError(f"{key} must be a non-empty list of channel counts, not {value!r}")
    return [_int(c, key) for c in value]


def _odd(value, key):
    if _int(value, key, 1, 31) % 2 != 1:
        raise SpecError(f"{key} must be odd, not {value}")
    return value


def _text_encoder(value, key):
    """A text encoder built locally (no download, no file read): a preset's name, or a
    Hugging Face text model's config (a supported family) and its tokenizer.json."""
    if isinstance(value, dict):
        return _mapping(
            value,
            key,
            {
                "config": lambda v, k: _hf_config(v, k, text_config_classes()),
                "tokenizer": _json_like,
            },
            required=("config", "tokenizer"),
        )
    if value not in TEXT_PRESETS:
        raise SpecError(
            f"{key} is {value!r}: a model spec builds the text encoders {list(TEXT_PRESETS)} "
            "or a Hugging Face text model from its config and tokenizer, never a download"
        )
    return value


_SSL = {"source": _hf_config, "normalize_waveform": _bool, "padding_aware": _bool}
_WHISPER = {
    "source": lambda v, k: _hf_config(v, k, {"whisper": transformers.WhisperConfig}),
    "front_end": lambda v, k: _mapping(v, k, dict.fromkeys(FRONT_END_KEYS, _int), FRONT_END_KEYS),
    "whisper_input": _choice(WHISPER_INPUTS),
}
# class name in a spec -> (class, argument schema, required arguments)
BUILDABLE: dict[str, tuple[type, dict, tuple]] = {
    "mtl_ser.models.ssl.SSLEncoder": (SSLEncoder, _SSL, ("source", "normalize_waveform")),
    # The same encoder under its name before HuBERT / WavLM / data2vec-audio support: runs
    # and exports made then load unchanged.
    "mtl_ser.models.wav2vec2.Wav2Vec2Encoder": (
        SSLEncoder,
        _SSL,
        ("source", "normalize_waveform"),
    ),
    "mtl_ser.models.whisper.WhisperEncoder": (
        WhisperEncoder,
        _WHISPER,
        ("source", "front_end", "whisper_input"),
    ),
    "mtl_ser.models.cnn.CNNEncoder": (
        CNNEncoder,
        {
            "front_end": lambda v, k: _mapping(v, k, _FRONT_END, tuple(_FRONT_END)),
            "channels": _channels,
            "kernel_size": _odd,
        },
        ("front_end", "channels"),
    ),
    "mtl_ser.models.heads.EmotionHead": (
        EmotionHead,
        {
            "input_size": _int,
            "pooling": _choice(POOLINGS),
            "dropout": lambda v, k: _float(v, k, 0.0, 0.99),
            "n_classes": _int,
            "attention_size": _int,
            **_LAYER_KEYS,
        },
        ("input_size", "n_classes"),
    ),
    # The emotion head with the transcript as a second view (mtl_ser.tasks.text_emotion).
    "mtl_ser.models.fusion.TextFusionHead": (
        TextFusionHead,
        {
            "input_size": _int,
            "n_classes": _int,
            "text_encoder": _text_encoder,
            "fusion": _choice(FUSIONS),
            "text_size": _int,
            "fusion_size": _int,
            "fusion_heads": _int,
            "max_text_length": lambda v, k: _int(v, k, 2, 4096),
            "pooling": _choice(POOLINGS),
            "dropout": lambda v, k: _float(v, k, 0.0, 0.99),
            "attention_size": _int,
            **_LAYER_KEYS,
        },
        ("input_size", "n_classes", "text_encoder", "fusion"),
    ),
    "mtl_ser.models.heads.CTCHead": (
        CTCHead,
        {
            "input_size": _int,
            "n_tokens": lambda v, k: _int(v, k, 2),
            "dropout": lambda v, k: _float(v, k, 0.0, 0.99),
            **_LAYER_KEYS,
        },
        ("input_size", "n_tokens"),
    ),
}


def _labels(value, key):
    if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
        raise SpecError(f"{key} must be a non-empty list of class names, not {value!r}")
    if len(set(value)) != len(value):
        raise SpecError(f"{key} repeats a class: {value}")
    return value


def _vocab(value, key):
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise SpecError(f"{key} must be a list of symbols, not {value!r}")
    return value


# Heads of the other tasks (`tasks` below): "<task>_head", built as an EmotionHead only.
_TASK_HEAD = re.compile(r"[a-z][a-z0-9_]{0,40}_head")
TASK_HEAD_CLASS = "mtl_ser.models.heads.EmotionHead"


def _module_specs(value, key):
    names = (
        [n for n in value if isinstance(n, str) and _TASK_HEAD.fullmatch(n)]
        if isinstance(value, dict)
        else []
    )
    modules = _mapping(
        value,
        key,
        {name: (lambda v, k: v) for name in (*INFERENCE_MODULES, *names)},
        required=("encoder", "emotion_head"),
    )
    for name, spec in modules.items():
        where = f"{key}.{name}"
        spec = _mapping(spec, where, {"class": lambda v, k: v, "kwargs": lambda v, k: v})
        if spec.get("class") not in BUILDABLE:
            raise SpecError(
                f"{where}.class {spec.get('class')!r} is not a buildable module; allowed: "
                f"{sorted(BUILDABLE)}"
            )
        if name not in INFERENCE_MODULES and spec["class"] != TASK_HEAD_CLASS:
            raise SpecError(f"{where}.class must be {TASK_HEAD_CLASS}, not {spec['class']!r}")
        _, schema, required = BUILDABLE[spec["class"]]
        spec["kwargs"] = _mapping(spec.get("kwargs", {}), f"{where}.kwargs", schema, required)
        modules[name] = spec
    return modules


# What predict needs of each exported task besides its head (`Task.export_info`).
TASK_EXPORT_KINDS = ("dimensions", "speaker_attribute")


def _names(value, key):
    if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
        raise SpecError(f"{key} must be a non-empty list of names, not {value!r}")
    return value


def _column(value, key):
    if not isinstance(value, str) or not 0 < len(value) <= 100:
        raise SpecError(f"{key} must be a manifest column's name, not {value!r}")
    return value


def _task_specs(value, key):
    if not isinstance(value, dict):
        raise SpecError(f"{key} must be a mapping, not {type(value).__name__}")
    out = {}
    for name, task in value.items():
        where = f"{key}.{name}"
        task = _mapping(
            task,
            where,
            {
                "kind": _choice(TASK_EXPORT_KINDS),
                "head": lambda v, k: (
                    v if isinstance(v, str) and _TASK_HEAD.fullmatch(v) else _bad(k, v)
                ),
                "dimensions": _names,
                "classes": _labels,
                # The manifest column of a speaker attribute's targets (evaluate reads it).
                "column": _column,
            },
            required=("kind", "head"),
        )
        out[name] = task
    return out


def _bad(key, value):
    raise SpecError(f"{key} is not a task head's name: {value!r}")


def _lm_file(value, key):
    """The LM's path: a file name inside an export, or an absolute path (a run folder)."""
    if not isinstance(value, str) or not (Path(value).is_absolute() or "/" not in value):
        raise SpecError(f"{key} must be a file name or an absolute path, not {value!r}")
    if value in ("", ".", "..") or value.startswith("."):
        raise SpecError(f"{key} must be a file name or an absolute path, not {value!r}")
    return value


def _hex16(value, key):
    if not (isinstance(value, str) and len(value) == 16 and set(value) <= set("0123456789abcdef")):
        raise SpecError(f"{key} must be 16 hex characters, not {value!r}")
    return value


_DECODING = {
    "ctc_decoding": _choice(("beam",)),
    "beam_width": _int,
    "lm_weight": lambda v, k: _float(v, k, 0.0, 1e3),
    "word_score": lambda v, k: _float(v, k, -1e3, 1e3),
    "lm": _optional(_lm_file),
    "lm_digest": _optional(_hex16),
}

_SPEC = {
    "format": _choice((SPEC_FORMAT,)),
    "modules": _module_specs,
    "labels": _labels,
    "vocab": _vocab,
    "sample_rate": lambda v, k: _int(v, k, 1000, 384000),
    "channels": _choice(("mean",)),
    "tasks": _task_specs,
    # Optional: the emotion logits are divided by it (temperature scaling fitted on
    # validation, `mtl_ser.calibration`).
    "temperature": lambda v, k: _float(v, k, 1e-3, 1e3),
    # Optional: the CTC beam decoder predict and evaluate use (`mtl_ser.decoding`).
    "decoding": lambda v, k: _mapping(v, k, _DECODING, tuple(_DECODING)),
}
_OPTIONAL_SPEC_KEYS = ("temperature", "tasks", "decoding")


def validate_spec(spec, source: str | Path) -> dict:
    """Returns ``spec`` (a parsed model_spec.json) checked against the allow-list.

    Raises SpecError naming ``source`` (the file it came from) and the offending key.
    """
    try:
        required = tuple(k for k in _SPEC if k not in _OPTIONAL_SPEC_KEYS)
        spec = _mapping(spec, "spec", _SPEC, required=required)
        for name, task in spec.get("tasks", {}).items():
            if task["head"] not in spec["modules"]:
                raise SpecError(f"spec.tasks.{name}.head {task['head']!r} is not in modules")
        return spec
    except SpecError as err:
        raise SpecError(f"{source}: refusing to load this model: {err}") from None


def build_module(spec: dict) -> torch.nn.Module:
    """Instantiates one module of a validated spec (random weights)."""
    cls, _, _ = BUILDABLE[spec["class"]]
    return cls(**spec["kwargs"])

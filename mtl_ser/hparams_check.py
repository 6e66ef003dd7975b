"""Checks a recipe's hyperparameters before anything is built.

A wrong value must not cost a model download, a data preparation or an epoch of training,
nor end in a traceback deep inside a library: every check here reads the configuration
with its references resolved but no object instantiated, and a failure is a `ConfigError`
whose one-line message names the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from hyperpyyaml.core import resolve_references
from ruamel.yaml import YAML

from mtl_ser.brain import GRAD_CLIPS
from mtl_ser.calibration import CALIBRATION_METHODS
from mtl_ser.checkpoints import CHECKPOINT_SELECTIONS
from mtl_ser.data.encoder_cache import cache_kind
from mtl_ser.data.feature_cache import DTYPES
from mtl_ser.data.pipelines import EVAL_ORDERS, SORTINGS
from mtl_ser.data.protocols import PROTOCOL_FOLDS
from mtl_ser.decoding import DECODINGS
from mtl_ser.groups import check_columns
from mtl_ser.models import whisper
from mtl_ser.models.backbones import backbone_of
from mtl_ser.models.encoders import ENCODER_TYPES, checkpoint_model_type
from mtl_ser.models.heads import POOLINGS
from mtl_ser.models.objective import CTC_REDUCTIONS
from mtl_ser.models.peft_tuning import FINETUNING, resolve_finetuning
from mtl_ser.models.whisper import WHISPER_INPUTS
from mtl_ser.tasks import configured_tasks, parse_metric
from mtl_ser.tasks.balance import CLASS_WEIGHTINGS
from mtl_ser.tasks.weighting import TASK_WEIGHTINGS


class ConfigError(ValueError):
    """A hyperparameter or command-line problem, explained in one line."""


# A rule returns None when the value is fine, else what is allowed.
Rule = Callable[[object], str | None]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int) -> Rule:
    def rule(value):
        return None if _is_int(value) and value >= minimum else f"an integer >= {minimum}"

    return rule


def number(low: float, high: float | None = None, low_open=False, high_open=True) -> Rule:
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    allowed = f"a number in {left}{low}, {'inf' if high is None else high}{right}"

    def rule(value):
        if not _is_number(value):
            return allowed
        if value < low or (low_open and value == low):
            return allowed
        if high is not None and (value > high or (high_open and value == high)):
            return allowed
        return None

    return rule


def choice(*options) -> Rule:
    def rule(value):
        return None if value in options else "one of " + ", ".join(map(str, options))

    return rule


def optional(inner: Rule) -> Rule:
    def rule(value):
        message = None if value is None else inner(value)
        return None if message is None else f"null or {message}"

    return rule


def boolean(value) -> str | None:
    return None if isinstance(value, bool) else "True or False"


def group_columns(value) -> str | None:
    allowed = "a list of distinct manifest column names such as [speaker, gender]"
    if not isinstance(value, list):
        return allowed
    try:
        check_columns(value)
    except ValueError:
        return allowed + " (not one of predictions.csv's own columns)"
    return None


# Keys checked when the hparams file has them (the CNN recipe lacks the wav2vec2 ones).
RULES: dict[str, Rule] = {
    "alpha": number(0.0),
    "seed": integer(0),
    "split_seed": integer(0),
    "protocol": choice(*sorted(PROTOCOL_FOLDS)),
    "fold": integer(1),
    "keep_exc_apart": boolean,
    "valid_strategy": optional(choice("stratified", "speaker")),
    "valid_fraction": number(0.0, 1.0, low_open=True),
    "skip_prep": boolean,
    "batch_size": integer(1),
    "eval_batch_size": integer(1),
    "max_len": optional(number(0.0, low_open=True)),
    "eval_order": choice(*EVAL_ORDERS),
    "sorting": choice(*SORTINGS),
    "group_pool": integer(1),
    "pin_memory": optional(boolean),
    "persistent_workers": optional(boolean),
    "encoder_cache_dtype": choice(*sorted(DTYPES)),
    "encoder_cache_max_gb": number(0.0, low_open=True),
    "dynamic_batching": boolean,
    "max_batch_length": number(0.0, low_open=True),
    "num_buckets": integer(1),
    "num_workers": integer(0),
    "number_of_epochs": integer(1),
    "early_stop_patience": optional(integer(1)),
    "checkpoint_selection": choice(*CHECKPOINT_SELECTIONS),
    "calibration": choice(*CALIBRATION_METHODS),
    "calibration_bins": integer(1),
    "lr_encoder": number(0.0, low_open=True),
    "lr_heads": number(0.0, low_open=True),
    "warmup_fraction": number(0.0, 1.0),
    "lr_decay": boolean,
    "weight_decay": number(0.0),
    "grad_accumulation_factor": integer(1),
    "grad_clip": choice(*GRAD_CLIPS),
    "max_grad_norm": number(0.0, low_open=True),
    "nonfinite_patience": integer(1),
    "precision": choice("fp32", "bf16", "fp16"),
    "augment_prob": number(0.0, 1.0, high_open=False),
    "ctc_reduction": choice(*CTC_REDUCTIONS),
    "ctc_sum_utterances": integer(1),
    "ctc_zero_infinity": boolean,
    "ctc_decoding": choice(*DECODINGS),
    "beam_width": integer(1),
    "lm_weight": number(0.0),
    "word_score": number(-math.inf),
    "head_dropout": number(0.0, 1.0),
    "mask_time_prob": number(0.0, 1.0),
    "freeze_encoder": boolean,
    "freeze_feature_encoder": boolean,
    "encoder_type": optional(choice(*ENCODER_TYPES)),
    "finetuning": optional(choice(*FINETUNING)),
    "lora_rank": integer(1),
    "lora_alpha": number(0.0, low_open=True),
    "lora_dropout": number(0.0, 1.0),
    "whisper_input": choice(*WHISPER_INPUTS),
    "pooling": choice(*POOLINGS),
    "layerdrop": optional(number(0.0, 1.0)),
    "padding_aware": boolean,
    "gradient_checkpointing": boolean,
    "task_weighting": choice(*TASK_WEIGHTINGS),
    "class_weighting": choice(*CLASS_WEIGHTINGS),
    "class_weighting_beta": number(0.0, 1.0),
    "sampling": choice("natural", "class_balanced"),
    "group_columns": group_columns,
}
# Keys every recipe reads: an hparams file without one is refused before any work.
REQUIRED = ("recipe", "seed", "alpha", "output_folder", "skip_prep")
# SpeechBrain run options: a command-line value wins over the hparams file's.
RUN_OPTIONS = ("grad_accumulation_factor", "max_grad_norm", "nonfinite_patience", "precision")


def resolved_config(hparams_file: str | Path, overrides: str) -> dict:
    """The configuration a recipe would load, references resolved, nothing instantiated
    (tagged objects stay as plain mappings). Raises ConfigError for a missing placeholder."""
    try:
        with open(hparams_file) as f:
            text = resolve_references(f, overrides or None).getvalue()
    except ValueError as err:
        if "PLACEHOLDER" in str(err):
            key = str(err).split("'")[1] if "'" in str(err) else str(err)
            raise ConfigError(f"{key} must be given (e.g. --{key}=...)") from None
        raise ConfigError(f"{hparams_file}: {err}") from None
    return _load_round_trip(text)


def _load_round_trip(text: str) -> dict:
    # The round-trip loader keeps unknown tags (!new:, !name:) as data instead of failing.
    return YAML().load(text) or {}


def _flag(key: str, value, cli_keys: set[str]) -> str:
    shown = "null" if value is None else value
    return f"--{key}={shown}" if key in cli_keys else f"{key}: {shown}"


def check_hparams(
    hparams_file: str | Path, overrides: str, run_opts, override_keys: set[str]
) -> dict:
    """Checks every rule, the protocol's fold, the data and the output folder.

    Args:
        hparams_file: the base hparams file (after ``extends:`` resolution).
        overrides: the merged override YAML (override files + command line).
        run_opts: SpeechBrain's run options (``overridden_args`` holds those given).
        override_keys: the keys given on the command line (for the messages).

    Returns: the resolved configuration. Raises ConfigError naming the first problem.
    """
    base = _load_round_trip(Path(hparams_file).read_text())
    given = _load_round_trip(overrides) if overrides else {}
    unknown = [k for k in given if k not in base]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(base), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"unknown hparams key {key!r} (not in {hparams_file}){hint}")
    absent = [key for key in REQUIRED if key not in base]
    if absent:
        raise ConfigError(
            f"{hparams_file} has no {absent[0]!r} key, which every recipe reads: add it (see "
            "hparams/mtl.yaml)"
        )
    config = resolved_config(hparams_file, overrides)
    cli_keys = set(override_keys) | set(getattr(run_opts, "overridden_args", ()) or ())
    effective = dict(config)
    for key in RUN_OPTIONS:
        if key in cli_keys:
            effective[key] = getattr(run_opts, key)
    for key, rule in RULES.items():
        if key in effective:
            allowed = rule(effective[key])
            if allowed is not None:
                raise ConfigError(
                    f"{_flag(key, effective[key], cli_keys)}: {key} must be {allowed}"
                )
    _check_fold(effective, cli_keys)
    _check_tasks(effective)
    _check_device(run_opts, cli_keys)
    _check_encoder(effective, cli_keys)
    _check_tracker(effective, cli_keys)
    _check_finetuning(effective)
    _check_encoder_cache(effective)
    _check_workers(effective)
    _check_distributed(effective, run_opts)
    _check_data(effective)
    _check_writable(Path(effective["output_folder"]))
    return config


def _check_tasks(config: dict) -> None:
    """The ``tasks`` mapping builds (known kinds and options, CTC weight from alpha),
    ``selection_metric`` names one of its tasks, and ``sampling: class_balanced`` comes
    with length-grouped batches."""
    from mtl_ser.data.text import CharVocabulary

    try:
        tasks = configured_tasks(config, CharVocabulary())
        parse_metric(config.get("selection_metric", "emotion/ua"), tasks)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if config.get("sampling") == "class_balanced" and (
        config.get("dynamic_batching") or config.get("sorting") != "grouped"
    ):
        raise ConfigError(
            "sampling: class_balanced groups batches by length itself: it needs sorting: "
            "grouped and dynamic_batching: False"
        )


def _check_fold(config: dict, cli_keys: set[str]) -> None:
    if config.get("skip_prep") or "protocol" not in config:
        return  # manifests given: their own split, no protocol fold
    folds = PROTOCOL_FOLDS[config["protocol"]]
    if not 1 <= config["fold"] <= folds:
        raise ConfigError(
            f"{_flag('fold', config['fold'], cli_keys)}: protocol {config['protocol']} has "
            f"folds 1..{folds}"
        )


def check_device(device: str) -> None:
    """Raises ConfigError unless ``device`` is cpu, mps, cuda or a cuda:N of this machine."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count()
        if (index and not index.isdigit()) or (int(index) if index.isdigit() else 0) >= count:
            have = f"GPUs cuda:0..cuda:{count - 1}" if count else "no CUDA GPU"
            raise ConfigError(f"--device={device}: this machine has {have}; use --device=cpu")
    elif device not in ("cpu", "mps"):
        raise ConfigError(f"--device={device}: not a device; use cpu, cuda or cuda:N")


def _check_device(run_opts, cli_keys: set[str]) -> None:
    """The device exists on this machine and supports the precision asked for."""
    from speechbrain.utils.distributed import infer_device

    # None: SpeechBrain's own choice (cuda:N of this process's rank where there is a GPU).
    device = str(getattr(run_opts, "device", None) or infer_device())
    check_device(device)
    if not device.startswith("cuda"):
        for key in ("precision", "eval_precision"):
            if getattr(run_opts, key, None) == "fp16":
                raise ConfigError(
                    f"{_flag(key, 'fp16', cli_keys)}: fp16 needs a CUDA device, and "
                    f"--device={device}; on CPU use bf16 or fp32"
                )


def _check_encoder(config: dict, cli_keys: set[str]) -> None:
    """The encoder exists and is of the type asked for, without building it: a random
    preset's name, a local folder's config.json and safetensors headers, the family."""
    source, expected = config.get("encoder_source"), config.get("encoder_type")
    if expected is not None and expected not in ENCODER_TYPES:
        raise ConfigError(
            f"{_flag('encoder_type', expected, cli_keys)}: encoder_type must be null or one "
            f"of {', '.join(sorted(ENCODER_TYPES))}"
        )
    if not isinstance(source, str):
        return
    flag = _flag("encoder_source", source, cli_keys)
    if source.startswith("random:"):
        try:
            model_type = checkpoint_model_type(source)
        except ValueError as err:
            raise ConfigError(f"{flag}: {err}") from None
    elif Path(source).exists():
        folder = Path(source)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ConfigError(
                f"{flag}: {folder} has no config.json: give a folder written by "
                "save_pretrained (config.json, weights, preprocessor_config.json)"
            )
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (ValueError, AttributeError) as err:
            raise ConfigError(f"{config_file}: not a JSON config ({err})") from None
        _check_safetensors(folder)
    else:
        return  # a hub id: checked when it is fetched
    try:
        whisper.check_type(model_type, expected, repr(source))
        if model_type != whisper.MODEL_TYPE:
            backbone_of(model_type, None, source)  # a family mtl_ser supports
    except ValueError as err:
        asked = f" with {_flag('encoder_type', expected, cli_keys)}" if expected else ""
        raise ConfigError(f"{flag}{asked}: {err}") from None


def _check_safetensors(folder: Path) -> None:
    """Reads the header of every safetensors file of ``folder`` (cheap: no tensor data)."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
        except Exception as err:  # SafetensorError derives from Exception only
            raise ConfigError(
                f"{path}: not a readable safetensors file ({err}); copy or save the model again"
            ) from None


def _check_tracker(config: dict, cli_keys: set[str]) -> None:
    """The tracker is one mtl_ser knows and its package is installed."""
    kind = config.get("tracker")
    if kind in (None, "none"):
        return
    # Imported only here: SpeechBrain's loggers print a notice on import.
    from mtl_ser.tracking import TRACKERS, _require

    if kind not in TRACKERS:
        raise ConfigError(
            f"{_flag('tracker', kind, cli_keys)}: tracker must be one of {', '.join(TRACKERS)}"
        )
    try:
        _require(kind)
    except ImportError as err:
        raise ConfigError(f"{_flag('tracker', kind, cli_keys)}: {err}") from None


def _check_finetuning(config: dict) -> None:
    """``finetuning`` and ``freeze_encoder`` must agree."""
    if "finetuning" in config:
        try:
            resolve_finetuning(config["finetuning"], config["freeze_encoder"])
        except ValueError as err:
            raise ConfigError(str(err)) from None


def _check_encoder_cache(config: dict) -> None:
    """A cache of frozen encoder outputs must give what every epoch would compute."""
    if "encoder_cache_folder" not in config:
        return
    frozen = config["freeze_encoder"] or config.get("finetuning") == "frozen"
    try:
        cache_kind(
            config["encoder_cache_folder"],
            frozen,
            config["freeze_feature_encoder"],
            config["augment_prob"],
            config["max_len"],
            config["padding_aware"],
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_workers(config: dict) -> None:
    if config.get("persistent_workers") and config.get("num_workers") == 0:
        raise ConfigError("persistent_workers: True needs num_workers > 0 (or null: automatic)")


def _check_distributed(config: dict, run_opts) -> None:
    """Layers skipped by layerdrop get no gradient, which stops DDP unless it looks for
    unused parameters."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and config.get("layerdrop", 0.0) != 0.0:
        if not getattr(run_opts, "find_unused_parameters", False):
            raise ConfigError(
                f"layerdrop: {config['layerdrop']} with {processes} processes needs "
                "--find_unused_parameters=True (skipped layers get no gradient)"
            )


def _check_data(config: dict) -> None:
    if config.get("skip_prep"):
        for split in ("train", "valid", "test"):
            path = config.get(f"{split}_annotation")
            if path is not None and not Path(path).is_file():
                raise ConfigError(
                    f"{split}_annotation = {path}: no such manifest (skip_prep is True: "
                    "prepare the data first, e.g. with `mtl-ser prepare`)"
                )
        return
    if config.get("data_folder") is None:
        raise ConfigError("data_folder must be given (e.g. --data_folder=...)")
    folder = Path(config["data_folder"])
    if not folder.is_dir():
        raise ConfigError(f"data_folder = {folder}: no such folder")


def _check_writable(folder: Path) -> None:
    """Creates the output folder and writes a probe file in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_probe_{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"output_folder = {folder}: cannot write there ({err.strerror or err})"
        ) from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"output_folder = {folder}: not writable")

"""How much of the encoder trains: ``finetuning: full | frozen | lora | adapters``, via peft.

- ``full``: every encoder weight trains (``freeze_feature_encoder`` may still freeze the
  convolutional front end).
- ``frozen``: no encoder weight trains (the same as the older ``freeze_encoder: True``).
- ``lora``: low-rank updates (Hu et al. 2021, "LoRA") of the ``target_modules`` linear
  layers, injected by peft's ``LoraConfig``; the encoder's own weights stay frozen.
- ``adapters``: peft has no bottleneck (Houlsby) adapter, so this is peft's (IA)^3 (Liu et
  al. 2022): learned vectors rescaling the attention keys and values and the feed-forward's
  inner activations; the encoder's own weights stay frozen.

The heads always train fully. Settings (``peft`` in the YAML, `PEFT_DEFAULTS`):

- ``rank`` 8, ``alpha`` 8, ``dropout`` 0.0: peft 0.21's ``LoraConfig`` defaults
  (``r``, ``lora_alpha``, ``lora_dropout``; the update is scaled by alpha / rank = 1).
- ``target_modules`` null: LoRA on the attention query and value projections
  (``q_proj``, ``v_proj``: Hu et al. 2021, section 4.2 / 7.1, found adapting W_q and W_v
  best for a given budget); (IA)^3 on ``k_proj``, ``v_proj`` and the feed-forward output
  layer (``fc2`` in Whisper, ``output_dense`` in wav2vec2-style encoders), the places of
  Liu et al. 2022. WavLM is the exception: transformers' WavLM attention passes its
  projections' weights to ``F.multi_head_attention_forward`` without calling the layers,
  so adapters there would never run; WavLM gets LoRA on the feed-forward layers
  (``intermediate_dense``, ``output_dense``) and (IA)^3 on ``output_dense``, and attention
  targets are refused. Names match module names or their last parts.

Checkpoints of a lora / adapters run hold the trainable tensors only (adapters; the heads
have their own files): the frozen encoder weights are written once per run, beside the
checkpoints (`BASE_WEIGHTS`, with the adapter settings in `ADAPTER_SETTINGS`), and resume
reads both. `merged_encoder_state` folds the adapters into plain weights (peft's
``merge_and_unload``) for export and prediction, which then need no peft.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

logger = logging.getLogger(__name__)

FINETUNING = ("full", "frozen", "lora", "adapters")
PEFT_DEFAULTS = {"rank": 8, "alpha": 8, "dropout": 0.0, "target_modules": None}
LORA_TARGETS = ("q_proj", "v_proj")
# model_type -> the feed-forward (inner, output) layers: (IA)^3 scales the output layer's
# input (the inner activations).
FEED_FORWARD = {"whisper": ("fc1", "fc2")}
DEFAULT_FEED_FORWARD = ("intermediate_dense", "output_dense")
# transformers' WavLM attention hands these layers' weights to
# F.multi_head_attention_forward instead of calling them: an adapter there would never run.
UNREACHABLE = {"wavlm": ("q_proj", "k_proj", "v_proj", "out_proj")}
BASE_WEIGHTS = "encoder_base.safetensors"
ADAPTER_SETTINGS = "encoder_adapters.json"


def resolve_finetuning(finetuning: str | None, freeze_encoder: bool) -> str:
    """The fine-tuning mode of a run from ``finetuning`` and the older ``freeze_encoder``.

    None: ``freeze_encoder`` decides (frozen or full). Raises ValueError (one line) for an
    unknown mode or ``freeze_encoder: True`` with a mode that trains the encoder.
    """
    if finetuning is None:
        return "frozen" if freeze_encoder else "full"
    if finetuning not in FINETUNING:
        raise ValueError(f"finetuning must be one of {list(FINETUNING)}, not {finetuning!r}")
    if freeze_encoder and finetuning != "frozen":
        raise ValueError(
            f"freeze_encoder: True contradicts finetuning: {finetuning}: set one of them "
            "(freeze_encoder: True is finetuning: frozen)"
        )
    return finetuning


def _config(mode: str, settings: dict, model_type: str):
    """The peft config of ``mode`` (lora | adapters) with ``settings`` (`PEFT_DEFAULTS`)."""
    from peft import IA3Config, LoraConfig

    targets = settings["target_modules"]
    inner, output = FEED_FORWARD.get(model_type, DEFAULT_FEED_FORWARD)
    unreachable = UNREACHABLE.get(model_type, ())
    if unreachable:  # the attention cannot be adapted: the feed-forward layers instead
        defaults = {"lora": (inner, output), "adapters": (output,)}
    else:
        defaults = {"lora": LORA_TARGETS, "adapters": ("k_proj", "v_proj", output)}
    targets = list(targets or defaults[mode])
    refused = sorted(set(targets) & set(unreachable))
    if refused:
        raise ValueError(
            f"peft_target_modules {refused}: transformers' {model_type} attention uses these "
            "layers' weights without calling them, so adapters there would never run: "
            f"target other layers (e.g. {inner}, {output})"
        )
    if mode == "lora":
        return LoraConfig(
            r=settings["rank"],
            lora_alpha=settings["alpha"],
            lora_dropout=settings["dropout"],
            target_modules=targets,
            bias="none",
        )
    return IA3Config(
        target_modules=targets,
        feedforward_modules=[t for t in targets if t == output],
    )


def _tuner_class(mode: str):
    from peft import IA3Model, LoraModel

    return LoraModel if mode == "lora" else IA3Model


def apply_finetuning(encoder: torch.nn.Module, mode: str, peft: dict | None = None):
    """Injects ``mode``'s adapters into ``encoder.model`` (lora | adapters; nothing for full
    or frozen, which the encoder's ``freeze`` already did).

    Args: encoder: an `SSLEncoder` or `WhisperEncoder`; mode: a `FINETUNING` value;
    peft: settings overriding `PEFT_DEFAULTS`.

    Returns: ``encoder``, with ``finetuning`` (the mode) and ``peft_settings`` (None, or the
    method and settings that rebuild the adapters) set. Raises ValueError for unknown
    settings or target modules that match no layer.
    """
    encoder.finetuning = mode
    encoder.peft_settings = None
    if mode not in ("lora", "adapters"):
        return encoder
    unknown = sorted(set(peft or {}) - set(PEFT_DEFAULTS))
    if unknown:
        raise ValueError(f"peft has unknown keys {unknown}; allowed: {sorted(PEFT_DEFAULTS)}")
    settings = {**PEFT_DEFAULTS, **(peft or {})}
    if settings["target_modules"] is not None:
        settings["target_modules"] = list(settings["target_modules"])
    try:
        # The tuner injects the layers in place and leaves only them trainable.
        _tuner_class(mode)(encoder.model, _config(mode, settings, encoder.model_type), "default")
    except ValueError as err:
        raise ValueError(
            f"finetuning: {mode}: peft could not place adapters on {encoder.model_type} "
            f"(target_modules {settings['target_modules']}): {str(err).splitlines()[0]}"
        ) from None
    encoder.peft_settings = {"method": mode, "model_type": encoder.model_type, **settings}
    return encoder


def parameter_counts(modules: dict) -> dict:
    """Trained parameter counts of a run's modules (name -> module; ``encoder`` is the
    encoder, every other module counts as a head: give the modules the Brain trains, after
    its tasks attached their heads): ``trained_parameters`` (all), ``trained_encoder_parameters``,
    ``encoder_parameters`` (the encoder's own weights, adapters excluded)."""
    encoder = modules["encoder"]
    heads = [m for n, m in modules.items() if n != "encoder"]
    adapters = {p for n, p in encoder.named_parameters() if _is_adapter(n)}
    own = sum(p.numel() for p in encoder.parameters() if p not in adapters)
    trained_encoder = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    trained_heads = sum(p.numel() for m in heads for p in m.parameters() if p.requires_grad)
    return {
        "trained_parameters": trained_encoder + trained_heads,
        "trained_encoder_parameters": trained_encoder,
        "encoder_parameters": own,
    }


def trained_parameters(modules: dict, mode: str | None) -> dict:
    """The run's fine-tuning ``mode`` (None: the CNN recipe has none) and its
    `parameter_counts` over ``modules`` (the Brain's, with every task's head and any learned
    task weighting), for results.json; also logged."""
    counts = parameter_counts(modules)
    share = counts["trained_encoder_parameters"] / max(counts["encoder_parameters"], 1)
    logger.info(
        "finetuning %s: %s trained parameters (encoder %s = %.2f%% of its %s, heads %s)",
        mode,
        f"{counts['trained_parameters']:,}",
        f"{counts['trained_encoder_parameters']:,}",
        100 * share,
        f"{counts['encoder_parameters']:,}",
        f"{counts['trained_parameters'] - counts['trained_encoder_parameters']:,}",
    )
    return {"finetuning": mode, **counts}


def _is_adapter(name: str) -> bool:
    return any(part.startswith(("lora_", "ia3_")) for part in name.split("."))


def checkpointed(encoder: torch.nn.Module):
    """What the checkpointer saves for ``encoder``: the encoder itself (its whole state), or
    for a lora / adapters run an `AdapterCheckpoint` (trainable tensors only)."""
    return encoder if encoder.peft_settings is None else AdapterCheckpoint(encoder)


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


@register_checkpoint_hooks
class AdapterCheckpoint:
    """A checkpointer recoverable saving an adapted encoder's trainable tensors only.

    The frozen weights go once to `BASE_WEIGHTS` (and the adapter settings to
    `ADAPTER_SETTINGS`) in the checkpoints' folder; loading combines both and loads the
    encoder strictly, refusing other adapter settings than the run's.
    """

    def __init__(self, encoder: torch.nn.Module):
        self.encoder = encoder

    def _trainable(self) -> set[str]:
        return {n for n, p in self.encoder.named_parameters() if p.requires_grad}

    @mark_as_saver
    def save(self, path):
        path = Path(path)
        folder = path.parent.parent
        state = self.encoder.state_dict()
        trainable = self._trainable()
        if not (folder / BASE_WEIGHTS).is_file():
            base = {
                k: v.detach().cpu().contiguous() for k, v in state.items() if k not in trainable
            }
            _write_atomically(folder / BASE_WEIGHTS, lambda p: save_file(base, str(p)))
            settings = json.dumps(self.encoder.peft_settings, indent=2) + "\n"
            _write_atomically(folder / ADAPTER_SETTINGS, lambda p: p.write_text(settings))
        torch.save({k: v.detach().cpu() for k, v in state.items() if k in trainable}, path)

    @mark_as_loader
    def load(self, path, end_of_epoch):
        from mtl_ser.export import load_tensors

        del end_of_epoch
        folder = Path(path).parent.parent
        saved = json.loads((folder / ADAPTER_SETTINGS).read_text())
        if saved != self.encoder.peft_settings:
            raise ValueError(
                f"{folder / ADAPTER_SETTINGS}: the checkpoints were trained with adapters "
                f"{saved}, this run asks for {self.encoder.peft_settings}: use another "
                "output_folder or the same settings"
            )
        state = {**load_file(str(folder / BASE_WEIGHTS)), **load_tensors(path)}
        self.encoder.load_state_dict(state, strict=True)


def merged_encoder_state(save_folder: str | Path, encoder_spec: dict, state: dict) -> dict:
    """The plain encoder state (adapters merged) of a run's checkpoint.

    Args: save_folder: the run's checkpoints folder; encoder_spec: the encoder's entry of
    model_spec.json (validated); state: the checkpoint's encoder tensors.

    Returns: ``state`` itself when the run has no adapters; else the encoder's own weights
    with the adapters folded in (peft's ``merge_and_unload``), keyed as a plain encoder.
    """
    from mtl_ser.model_spec import build_module

    folder = Path(save_folder)
    if not (folder / ADAPTER_SETTINGS).is_file():
        return state
    settings = json.loads((folder / ADAPTER_SETTINGS).read_text())
    module = build_module(encoder_spec)
    mode = settings["method"]
    peft = {k: settings[k] for k in PEFT_DEFAULTS}
    tuner = _tuner_class(mode)(module.model, _config(mode, peft, settings["model_type"]), "default")
    module.load_state_dict({**load_file(str(folder / BASE_WEIGHTS)), **state}, strict=True)
    tuner.merge_and_unload()
    return module.state_dict()

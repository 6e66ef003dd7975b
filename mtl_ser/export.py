"""Self-contained models: what a run saves to be rebuilt, and `mtl-ser export`.

A training run writes ``model_spec.json`` (how to rebuild each module offline: class and
constructor arguments, the label order, the character vocabulary, the audio settings). With
the best checkpoint (by validation UA) that is all inference needs, so

    mtl-ser export RUN_FOLDER OUT_DIR

writes a folder that loads without the training YAML, the data or the network::

    mtl_ser_model.json     the spec + provenance (run identity, checkpoint epoch, metrics)
    encoder.safetensors  emotion_head.safetensors  [ctc_head.safetensors]
    [lm.arpa | lm.bin]     the beam decoder's language model (runs with ``lm_path``)
    encoder_config.json    the encoder's constructor arguments (for wav2vec2: its HF config)
    vocab.json  labels.json
    README.md              model card
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mtl_ser.atomic import atomic_folder, atomic_write_text, check_folder
from mtl_ser.checkpoints import CrashSafeCheckpointer, find_selected_checkpoint
from mtl_ser.data.audio import SAMPLE_RATE
from mtl_ser.data.labels import LabelSet
from mtl_ser.data.text import CharVocabulary
from mtl_ser.model_spec import (
    INFERENCE_MODULES,
    SPEC_FORMAT,
    TASK_EXPORT_KINDS,
    build_module,
    validate_spec,
)
from mtl_ser.models.peft_tuning import merged_encoder_state
from mtl_ser.tasks.text_emotion import ORACLE_NOTE, is_oracle, oracle_suffix

SPEC_FILE = "model_spec.json"
EXPORT_FILE = "mtl_ser_model.json"


def module_spec(module: torch.nn.Module) -> dict:
    """``{"class": "mtl_ser....Name", "kwargs": {...}}`` from the module's `export_kwargs`."""
    cls = type(module)
    if not hasattr(module, "export_kwargs"):
        raise TypeError(f"{cls.__qualname__} cannot be exported: it has no export_kwargs()")
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "kwargs": module.export_kwargs()}


def write_model_spec(
    folder: str | Path,
    modules: dict[str, torch.nn.Module],
    labels: tuple[str, ...],
    vocab: CharVocabulary,
    tasks=(),
) -> Path:
    """Writes ``model_spec.json`` for the inference modules present in ``modules``.

    Args:
        folder: the run's output folder.
        modules: the Brain's modules (encoder, emotion_head and, with CTC, ctc_head).
        labels: class order.
        vocab: CTC vocabulary.
        tasks: the run's tasks (`mtl_ser.tasks.base.Task`): those with `export_info` (the
            dimensions and speaker-attribute tasks) add their head and what predict needs.

    Returns: the path written.
    """
    spec = {
        "format": SPEC_FORMAT,
        "modules": {
            name: module_spec(modules[name]) for name in INFERENCE_MODULES if name in modules
        },
        "labels": list(labels),
        "vocab": list(vocab.characters),
        "sample_rate": SAMPLE_RATE,
        "channels": "mean",  # multi-channel input is averaged to mono
    }
    for task in tasks:
        spec.update(task.model_spec_entries())  # e.g. the CTC decoder's settings and LM
    exported = {
        t.name: {**t.export_info(), "head": t.head_module} for t in tasks if t.export_info()
    }
    exported = {n: t for n, t in exported.items() if t["kind"] in TASK_EXPORT_KINDS}
    if exported:
        spec["tasks"] = exported
        for task in exported.values():
            spec["modules"][task["head"]] = module_spec(modules[task["head"]])
    path = Path(folder) / SPEC_FILE
    # Refuse now, not at export time, a model that could not be loaded back.
    validate_spec(json.loads(json.dumps(spec)), path)
    return atomic_write_text(path, json.dumps(spec, indent=2) + "\n")


def store_temperature(folder: str | Path, temperature: float) -> Path:
    """Adds the calibration temperature (fitted on validation) to a run's model_spec.json,
    so that every use of the model divides the emotion logits by it. Returns the path."""
    path = Path(folder) / SPEC_FILE
    spec = validate_spec({**_read_json(path), "temperature": float(temperature)}, path)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(spec, indent=2) + "\n")
    os.replace(tmp, path)
    return path


@dataclass
class LoadedModel:
    """Modules with their weights plus what is needed to use them."""

    modules: dict[str, torch.nn.Module]  # encoder, emotion_head, [ctc_head], in eval mode
    labels: tuple[str, ...]
    vocab: CharVocabulary
    sample_rate: int
    info: dict  # provenance: run identity, metrics, checkpoint epoch
    spec: dict | None = None  # the model_spec.json it was built from
    folder: Path | None = None  # the run or export folder (an exported LM lies in it)

    def decoder(self):
        """The CTC decoder the model was tested with (`mtl_ser.decoding.decoder_from_spec`:
        greedy unless the spec records a beam decoder)."""
        from mtl_ser.decoding import decoder_from_spec

        return decoder_from_spec((self.spec or {}).get("decoding"), self.folder, self.vocab)

    @property
    def temperature(self) -> float:
        """The emotion logits' divisor (calibration fitted on validation; 1: none)."""
        return float((self.spec or {}).get("temperature", 1.0))


def _from_spec(
    spec: dict, state_dicts: dict[str, dict], info: dict, folder: Path | None = None
) -> LoadedModel:
    """Builds every module of a validated ``spec``, loads its weights and wraps them with
    the spec's labels, vocabulary and audio settings."""
    modules = {}
    for name, module_spec_ in spec["modules"].items():
        module = build_module(module_spec_)
        module.load_state_dict(state_dicts[name], strict=True)  # raises on any mismatch
        modules[name] = module.eval()
    return LoadedModel(
        modules=modules,
        labels=tuple(spec["labels"]),
        vocab=CharVocabulary(tuple(spec["vocab"])),
        sample_rate=spec["sample_rate"],
        info=info,
        spec=spec,
        folder=folder,
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file, never running code from it.

    ``.safetensors`` files are read as such; anything else (SpeechBrain's ``.ckpt``, a torch
    pickle) only with ``weights_only=True``, which `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` does not
    override. Raises ValueError naming the file when it holds anything but tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the model folder is incomplete")
        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError derives from Exception only
            raise ValueError(
                f"{path}: not a readable safetensors file ({err}); export the model again"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError and friends: refuse, whatever the cause
        raise ValueError(
            f"{path}: refusing to load it: not a plain tensor checkpoint ({type(err).__name__})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state


def load_run(run_folder: str | Path) -> LoadedModel:
    """Loads the best checkpoint (by validation UA) of a finished or running training run.

    Raises FileNotFoundError naming what is missing (model_spec.json, checkpoints), ValueError
    for a model spec outside the allow-list or a checkpoint that is not plain tensors.
    """
    run = Path(run_folder)
    spec_path = run / SPEC_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(
            f"{spec_path} not found: {run} is not a training run folder of mtl_ser "
            "(or was trained by a version that did not save model specs)"
        )
    spec = validate_spec(_read_json(spec_path), spec_path)
    results_path = run / "results.json"
    results = _read_json(results_path) if results_path.is_file() else None
    # The checkpoint the run itself tested (a run still training: the best on validation).
    selection = (results or {}).get("checkpoint_selection", "best_valid")
    checkpoint = find_selected_checkpoint(CrashSafeCheckpointer(run / "save"), selection)
    if checkpoint is None:
        raise FileNotFoundError(f"no complete checkpoint with a validation UA in {run / 'save'}")
    CrashSafeCheckpointer.verify(checkpoint, [f"{name}.ckpt" for name in spec["modules"]])
    state_dicts = {}
    for name in spec["modules"]:
        if name not in checkpoint.paramfiles:
            raise FileNotFoundError(f"checkpoint {checkpoint.path} has no {name}.ckpt")
        state_dicts[name] = load_tensors(checkpoint.paramfiles[name])
    # A lora / adapters run: its adapters folded into plain weights (no peft needed later).
    state_dicts["encoder"] = merged_encoder_state(
        checkpoint.path.parent, spec["modules"]["encoder"], state_dicts["encoder"]
    )
    info = {
        "source_run": str(run.resolve()),
        "checkpoint": checkpoint.path.name,
        "checkpoint_epoch": checkpoint.meta.get("epoch"),
        "valid_ua": checkpoint.meta.get("UA"),
        "results": results,
    }
    return _from_spec(spec, state_dicts, info, run)


def load_exported(folder: str | Path) -> LoadedModel:
    """Loads a folder written by `export_run` (no YAML, data or network needed; only the
    allow-listed module classes of `mtl_ser.model_spec`, weights from safetensors)."""
    folder = Path(folder)
    meta = _read_json(folder / EXPORT_FILE)
    if not isinstance(meta, dict) or set(meta) != {"spec", "info"}:
        raise ValueError(f"{folder / EXPORT_FILE}: expected exactly the keys spec and info")
    spec = validate_spec(meta["spec"], folder / EXPORT_FILE)
    state_dicts = {name: load_tensors(folder / f"{name}.safetensors") for name in spec["modules"]}
    return _from_spec(spec, state_dicts, meta["info"], folder)


def export_owner(run_folder: str | Path, export_format: str) -> dict:
    """What an export folder's `mtl_ser.atomic.OWNER_FILE` records: re-exporting the same
    run in the same format may replace it without ``--overwrite``."""
    return {"command": "export", "format": export_format, "run": str(Path(run_folder).resolve())}


def check_export_target(
    run_folder: str | Path, out_dir: str | Path, export_format: str, overwrite: bool
) -> dict:
    """Refuses, before anything is loaded, an unfinished run (FileNotFoundError) or an
    output folder that holds files this export would not own (OutputExistsError, see
    `mtl_ser.atomic.check_folder`). Returns the export's owner record."""
    run = Path(run_folder)
    if not (run / "results.json").is_file():
        raise FileNotFoundError(f"{run / 'results.json'} not found: export a finished run")
    owner = export_owner(run, export_format)
    check_folder(out_dir, owner, overwrite)
    return owner


def export_run(run_folder: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Writes a self-contained model folder from a finished run (see the module docstring),
    whole: into a temporary sibling renamed into place (`mtl_ser.atomic.atomic_folder`).

    Args:
        run_folder: a finished training run.
        out_dir: the folder to write; an existing one that another run's export or the user
            made is refused (OutputExistsError) unless ``overwrite``, which replaces it whole.

    Raises FileNotFoundError when the run has no results.json (it has not been tested).
    """
    owner = check_export_target(run_folder, out_dir, "mtl_ser", overwrite)
    model = load_run(run_folder)
    with atomic_folder(out_dir, owner, overwrite) as tmp:
        _write_export(model, tmp)
    return Path(out_dir)


def _write_export(model: LoadedModel, out: Path) -> None:
    """Writes the files of an export of ``model`` into the (empty) folder ``out``."""
    spec = dict(model.spec)
    decoding = spec.get("decoding")
    if decoding and decoding.get("lm"):
        # The LM travels with the model (checked against the digest the run recorded).
        lm = Path(model.decoder().config.lm_path)
        spec["decoding"] = {**decoding, "lm": f"lm{lm.suffix or '.bin'}"}
        shutil.copyfile(lm, out / spec["decoding"]["lm"])
    for name, module in model.modules.items():
        tensors = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        save_file(tensors, str(out / f"{name}.safetensors"))
        os.chmod(out / f"{name}.safetensors", 0o644)  # safetensors writes 0600; models are shared
    (out / "encoder_config.json").write_text(
        json.dumps(spec["modules"]["encoder"]["kwargs"], indent=2) + "\n"
    )
    model.vocab.save(out / "vocab.json")
    LabelSet(model.labels).save(out)
    (out / "README.md").write_text(model_card(model, spec))
    # Written last: a folder without it is not a (complete) export.
    (out / EXPORT_FILE).write_text(json.dumps({"spec": spec, "info": model.info}, indent=2) + "\n")


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def model_card(model: LoadedModel, spec: dict, usage: list[str] | None = None) -> str:
    """A short README for an exported model: identity, test metrics, and ``usage`` lines
    (default: how to use it with mtl_ser)."""
    results = model.info["results"] or {}
    has_ctc = "ctc_head" in model.modules
    # Only this format carries the beam decoder and its LM (ONNX / HF exports: greedy).
    decoding = (spec.get("decoding") or {}) if usage is None else {}
    how = "beam search" + (" with an n-gram LM" if decoding.get("lm") else "")
    wer = results.get("wer")
    lines = [
        f"# mtl-ser model: {results.get('recipe', '?')} (alpha = {results.get('alpha', '?')})",
        "",
        "Speech emotion recognition"
        + (
            f" with a CTC character head ({how if decoding else 'greedy'} transcripts)"
            if has_ctc
            else ""
        )
        + ", trained with mtl-ser.",
        "",
        "| | |",
        "|---|---|",
        f"| encoder | `{results.get('encoder', spec['modules']['encoder']['class'])}` |",
        f"| classes (in order) | {', '.join(model.labels)} |",
        f"| protocol, fold, seed | {results.get('protocol')}, {results.get('fold')}, "
        f"{results.get('seed')} |",
        f"| checkpoint | epoch {model.info['checkpoint_epoch']}, chosen on validation UA "
        f"{_percent(model.info['valid_ua'])} |",
        f"| test WA / UA / macro-F1{oracle_suffix(results)} | {_percent(results.get('wa'))} / "
        f"{_percent(results.get('ua'))} / {_percent(results.get('macro_f1'))} |",
        f"| test WER / CER | {'n/a' if wer is None else f'{wer:.3f}'} / "
        f"{'n/a' if results.get('cer') is None else format(results['cer'], '.3f')} |",
        f"| test utterances | {results.get('num_utterances')} |",
        f"| audio | {spec['sample_rate']} Hz mono (other rates are resampled, channels averaged) |",
        "",
    ]
    if model.modules["emotion_head"].reads_text:
        lines += [
            "The emotion head also reads a transcript: here, the model's own greedy CTC "
            f"transcript (trained with: {results.get('text_view', '?')}).",
            "",
        ]
        if is_oracle(results):
            lines += [f"**{ORACLE_NOTE}.**", ""]
    if usage is not None:
        return "\n".join(lines + usage)
    lines += [
        "```python",
        "from mtl_ser import load_model",
        "model = load_model('path/to/this/folder')",
        "print(model.predict('speech.wav'))",
        "```",
        "",
        "or `mtl-ser predict path/to/this/folder recordings/ --output predictions.csv`.",
        "",
    ]
    return "\n".join(lines)

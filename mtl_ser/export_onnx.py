"""`mtl-ser export RUN OUT --format onnx`: the model as one ONNX graph for ONNX Runtime.

    model.onnx         inputs  waveforms [batch, samples] float32 (16 kHz mono, zero-padded)
                               lengths   [batch] int64 (true samples of each row)
                       outputs probabilities [batch, classes] (temperature applied, if any)
                               frames [batch] int64 (true encoder frames of each row)
                               ctc_log_probs [batch, frames, characters] (models with CTC)
                               <task> [batch, K] per other task, named as the task
                               (dimensions: A/V/D values; a speaker attribute such as
                               gender: its class probabilities)
    onnx_model.json    labels, characters, each task output's meaning (``tasks``),
                       front-end settings, temperature, the parity check's figures,
                       provenance (written last: its presence means complete)
    labels.json  README.md

Batch and time axes are dynamic. Padding never changes a row's result: the padding-aware
encoder takes the true lengths as an input (its GroupNorm statistics, attention mask and
pooling use them). On export the graph is run with ONNX Runtime on a few utterances of
different lengths, batched together, and compared with the PyTorch model on each utterance
alone; a largest probability (or task value) difference above `TOLERANCE` stops the export.

Refused, with the reason: the CNN encoder (its log-mel front end loops over the batch in
Python, utterance by utterance, which a traced graph cannot keep for a dynamic batch) and
encoders with ``padding_aware: false`` (their outputs depend on the padding of the batch,
which the exported graph cannot reproduce).

`mtl_ser.onnx_predictor` runs the folder with numpy, soundfile, scipy and onnxruntime only.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import mtl_ser
from mtl_ser.atomic import atomic_folder, check_folder
from mtl_ser.data.labels import LabelSet
from mtl_ser.export import (
    EXPORT_FILE,
    LoadedModel,
    check_export_target,
    export_owner,
    load_exported,
    load_run,
    model_card,
)
from mtl_ser.models.cnn import CNNEncoder
from mtl_ser.models.ssl import SSLEncoder
from mtl_ser.prediction_types import task_output_meaning
from mtl_ser.tasks import TASK_KINDS

ONNX_FILE = "model.onnx"
ONNX_META_FILE = "onnx_model.json"
ONNX_FORMAT = 1
OPSET = 17
TOLERANCE = 1e-4  # largest allowed probability difference, ONNX Runtime vs PyTorch
# Lengths (seconds) of the synthetic utterances of the parity check.
CHECK_SECONDS = (0.7, 1.9, 3.1)
# The graph's own input and output names (a task's output is named as the task).
RESERVED_NAMES = ("waveforms", "lengths", "probabilities", "frames", "ctc_log_probs")


class OnnxExportError(ValueError):
    """A model that cannot be exported to ONNX, or an export that failed its parity check."""


class InferenceGraph(nn.Module):
    """What the ONNX file computes: padded waveforms and lengths -> emotion probabilities
    (temperature-scaled), true frame counts, with a CTC head its log-probabilities, and one
    output per other exported task (named as the task: its per-window values,
    `Task.window_values`: A/V/D values, a speaker attribute's class probabilities)."""

    def __init__(self, model: LoadedModel):
        super().__init__()
        self.encoder = model.modules["encoder"]
        self.emotion_head = model.modules["emotion_head"]
        self.ctc_head = model.modules.get("ctc_head")
        self.temperature = model.temperature
        self.task_infos = dict((model.spec or {}).get("tasks", {}))
        clash = sorted(set(self.task_infos) & set(RESERVED_NAMES))
        if clash:
            raise OnnxExportError(
                f"task name(s) {clash} are also ONNX input / output names {list(RESERVED_NAMES)}"
                ": rename the task to export it with --format onnx (or use --format mtl_ser)"
            )
        self.task_heads = nn.ModuleDict(
            {name: model.modules[info["head"]] for name, info in self.task_infos.items()}
        )

    @property
    def output_names(self) -> list[str]:
        return (
            ["probabilities", "frames"]
            + (["ctc_log_probs"] if self.ctc_head is not None else [])
            + list(self.task_infos)
        )

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor):
        """Args: waveforms ``[B, S]`` float32, zero-padded; lengths ``[B]`` int64 samples.

        Returns: (probabilities ``[B, C]``, frames ``[B]`` int64[, ctc_log_probs
        ``[B, T, V]``], one ``[B, K]`` per other task), in `output_names`' order.
        """
        rel = lengths.to(waveforms.dtype) / waveforms.shape[1]
        enc = self.encoder(waveforms, rel)
        logits = self.emotion_head(enc.hidden, enc.lengths, enc.layers)
        out = [torch.softmax(logits.float() / self.temperature, dim=-1), enc.lengths]
        if self.ctc_head is not None:
            out.append(self.ctc_head(enc.hidden, enc.layers))
        for name, info in self.task_infos.items():
            head_out = self.task_heads[name](enc.hidden, enc.lengths, enc.layers)
            out.append(TASK_KINDS[info["kind"]].window_values(head_out))
        return tuple(out)


def _trace(graph: InferenceGraph, example: tuple, path: Path, outputs: list, axes: dict):
    torch.onnx.export(
        graph,
        example,
        str(path),
        input_names=["waveforms", "lengths"],
        output_names=outputs,
        dynamic_axes={k: v for k, v in axes.items() if k in ["waveforms", "lengths", *outputs]},
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter: offline, no onnxscript needed
    )


def check_exportable(model: LoadedModel) -> None:
    """Raises OnnxExportError naming the reason when the model cannot be exported."""
    if getattr(model.modules.get("emotion_head"), "reads_text", False):
        raise OnnxExportError(
            "the emotion head reads a transcript (tasks.emotion kind: text_emotion): its "
            "greedy decoding and tokenizer are not a graph (use --format mtl_ser)"
        )
    encoder = model.modules["encoder"]
    if isinstance(encoder, CNNEncoder):
        raise OnnxExportError(
            "the CNN encoder cannot be exported to ONNX: its log-mel front end computes each "
            "utterance's features in a Python loop over the batch, which a traced graph "
            "cannot keep for a dynamic batch axis (use --format mtl_ser)"
        )
    if not isinstance(encoder, SSLEncoder):
        raise OnnxExportError(f"{type(encoder).__name__} encoders cannot be exported to ONNX")
    if not encoder.padding_aware:
        raise OnnxExportError(
            "this model was trained with padding_aware: false, whose outputs depend on the "
            "padding of the batch; the ONNX graph cannot reproduce that (use --format mtl_ser)"
        )


def _min_samples(encoder: SSLEncoder) -> int:
    """The fewest samples that give one encoder frame."""
    frames = encoder.output_lengths(torch.arange(1, 8001))
    return int(torch.nonzero(frames >= 1)[0, 0]) + 1


def _padded(waveforms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded ``[B, S]`` float32 and lengths ``[B]`` int64."""
    lengths = np.array([w.shape[0] for w in waveforms], dtype=np.int64)
    batch = np.zeros((len(waveforms), int(lengths.max())), dtype=np.float32)
    for row, w in enumerate(waveforms):
        batch[row, : w.shape[0]] = w
    return batch, lengths


def check_waveforms(sample_rate: int) -> list[np.ndarray]:
    """Seeded synthetic utterances of `CHECK_SECONDS` (a tone with noise), float32."""
    rng = np.random.default_rng(0)
    out = []
    for seconds in CHECK_SECONDS:
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        tone = 0.3 * np.sin(2 * np.pi * (120 + 80 * seconds) * t)
        out.append((tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32))
    return out


@torch.no_grad()
def verify(graph: InferenceGraph, onnx_path: Path, waveforms: list[np.ndarray]) -> dict:
    """Runs ``onnx_path`` with ONNX Runtime on ``waveforms`` batched together and the
    PyTorch ``graph`` on each alone, and compares every output.

    Returns: ``{"max_probability_difference", "max_ctc_log_prob_difference" (None without
    CTC; over each row's true frames), "max_task_differences" ({task: largest difference
    of its values}), "lengths_samples"}``.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch, lengths = _padded(waveforms)
    names = graph.output_names
    feeds = {"waveforms": batch, "lengths": lengths}
    batched = dict(zip(names, session.run(names, feeds), strict=True))
    diffs: dict[str, float] = {}
    for row, w in enumerate(waveforms):
        outputs = graph(torch.from_numpy(w)[None], torch.tensor([w.shape[0]]))
        alone = dict(zip(names, outputs, strict=True))
        frames = int(alone["frames"][0])
        for name in names:
            if name == "frames":
                continue
            ours, theirs = alone[name][0].numpy(), batched[name][row]
            if name == "ctc_log_probs":
                ours, theirs = ours[:frames], theirs[:frames]
            diffs[name] = max(diffs.get(name, 0.0), float(np.abs(theirs - ours).max()))
    return {
        "max_probability_difference": diffs["probabilities"],
        "max_ctc_log_prob_difference": diffs.get("ctc_log_probs"),
        "max_task_differences": {name: diffs[name] for name in graph.task_infos},
        "lengths_samples": [int(n) for n in lengths],
    }


def export_onnx(
    source: str | Path, out_dir: str | Path, verbose: bool = True, overwrite: bool = False
) -> Path:
    """Writes an ONNX model folder (module docstring) from a finished training run or an
    exported mtl_ser model folder, whole: into a temporary sibling renamed into place
    (`mtl_ser.atomic.atomic_folder`), as the other export formats.

    Raises OnnxExportError for a model that cannot be exported (naming why) or one whose
    ONNX Runtime probabilities differ from PyTorch's by more than `TOLERANCE`;
    FileNotFoundError for a run without results.json; OutputExistsError for an ``out_dir``
    another export or the user made (unless ``overwrite``, which replaces it whole).
    """
    source = Path(source)
    if (source / EXPORT_FILE).is_file():
        owner = export_owner(source, "onnx")
        check_folder(out_dir, owner, overwrite)
        model = load_exported(source)
    else:
        owner = check_export_target(source, out_dir, "onnx", overwrite)
        model = load_run(source)
    with atomic_folder(out_dir, owner, overwrite) as tmp:
        write_onnx_folder(model, tmp, verbose)
    return Path(out_dir)


def write_onnx_folder(model: LoadedModel, out_dir: str | Path, verbose: bool = True) -> Path:
    """Writes the ONNX folder of a loaded model (see `export_onnx`). Returns its path."""
    check_exportable(model)
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
        import onnxruntime  # noqa: F401  (the parity check)
    except ImportError as err:
        raise ImportError(
            f"--format onnx needs onnx and onnxruntime ({err}): pip install onnx onnxruntime "
            "(or mtl-ser[onnx])"
        ) from None
    graph = InferenceGraph(model).eval()
    has_ctc = graph.ctc_head is not None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ONNX_META_FILE).unlink(missing_ok=True)  # incomplete until rewritten last
    outputs = graph.output_names
    axes = {
        "waveforms": {0: "batch", 1: "samples"},
        "lengths": {0: "batch"},
        "probabilities": {0: "batch"},
        "frames": {0: "batch"},
        "ctc_log_probs": {0: "batch", 1: "time"},
        **{name: {0: "batch"} for name in graph.task_infos},
    }
    waveforms = check_waveforms(model.sample_rate)
    # Traced on a padded batch of different lengths, so that the masking path is recorded.
    example = tuple(torch.from_numpy(a) for a in _padded(waveforms))
    started = time.perf_counter()
    with warnings.catch_warnings():
        # Tracer notes on shape arithmetic the graph keeps dynamic, and the deprecation of
        # the TorchScript exporter: the parity check below is what tells a good export.
        warnings.simplefilter("ignore")
        _trace(graph, example, out / ONNX_FILE, outputs, axes)
    check = verify(graph, out / ONNX_FILE, waveforms)
    diff = check["max_probability_difference"]
    task_diffs = check["max_task_differences"]
    if verbose:
        ctc = check["max_ctc_log_prob_difference"]
        print(
            f"ONNX parity on {len(waveforms)} utterances of {', '.join(map(str, CHECK_SECONDS))}"
            f" s, batched: max probability difference {diff:.2e} (tolerance {TOLERANCE:g})"
            + ("" if ctc is None else f", max CTC log-probability difference {ctc:.2e}")
            + "".join(f", max {name} difference {d:.2e}" for name, d in task_diffs.items())
            + f"; exported in {time.perf_counter() - started:.1f} s"
        )
    for name, d in {"probabilities": diff, **task_diffs}.items():
        if not d <= TOLERANCE:
            raise OnnxExportError(
                f"{out / ONNX_FILE}: ONNX Runtime's {name} differ from PyTorch's by {d:.2e}"
                f" (> {TOLERANCE:g}); the export is not usable"
            )
    LabelSet(model.labels).save(out)
    usage = [
        "ONNX Runtime: `model.onnx` takes `waveforms` [batch, samples] float32 at "
        f"{model.sample_rate} Hz mono, zero-padded, and `lengths` [batch] int64; it returns "
        "`probabilities` [batch, classes] in the order of labels.json"
        + (", `frames` and `ctc_log_probs` [batch, time, characters]" if has_ctc else "")
        + "".join(
            f", `{name}` {task_output_meaning(info)}" for name, info in graph.task_infos.items()
        )
        + ". Settings in onnx_model.json.",
        "",
        "`mtl-ser predict path/to/this/folder recordings/ --output predictions.csv` "
        "(needs only numpy, soundfile, scipy and onnxruntime).",
        "",
    ]
    if model.spec is not None:  # a model built in memory (benchmarks) has no card
        (out / "README.md").write_text(model_card(model, model.spec, usage))
    meta = {
        "format": ONNX_FORMAT,
        "model": ONNX_FILE,
        "opset": OPSET,
        "inputs": ["waveforms", "lengths"],
        "outputs": outputs,
        "labels": list(model.labels),
        "vocab": list(model.vocab.characters) if has_ctc else None,
        "blank_index": model.vocab.blank_index if has_ctc else None,
        "front_end": {
            "sample_rate": model.sample_rate,
            "channels": "mean",  # multi-channel input is averaged to mono
            # Applied inside the graph (per utterance, over its own samples).
            "normalize_waveform": model.modules["encoder"].normalize_waveform,
            "min_samples": _min_samples(model.modules["encoder"]),
        },
        "temperature": model.temperature,  # already applied inside the graph
        # The other tasks' outputs (named as the task): what they hold and what predict
        # needs to name their values (`Task.export_info`).
        "tasks": {
            name: {**info, "output": name, "meaning": task_output_meaning(info)}
            for name, info in graph.task_infos.items()
        },
        "verification": check,
        "mtl_ser_version": mtl_ser.__version__,
        "info": model.info,
    }
    tmp = out / f"{ONNX_META_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / ONNX_META_FILE)
    return out

"""`mtl-ser export RUN OUT --format hf`: a model that `transformers` alone loads.

The emotion model maps exactly onto transformers' ``<Family>ForSequenceClassification``:

- the encoder's weights are its base model's (the same class, the same config);
- our head is mean pooling over true frames then one linear layer; transformers' is a
  linear ``projector`` per frame, mean pooling over the frames its attention mask keeps,
  then a linear ``classifier``. Pooling and a linear layer commute, so the projector takes
  our linear layer (``classifier_proj_size`` = the number of classes) and the classifier is
  the identity;
- a weighted layer sum becomes ``use_weighted_layer_sum`` with our raw layer weights (both
  apply a softmax over the same hidden states);
- waveform normalisation is the feature extractor's ``do_normalize``; it returns the
  attention mask, so padded batches are pooled over true frames.

``OUT/`` holds the emotion classifier (``config.json`` with ``id2label``, weights,
``preprocessor_config.json``, a model card with Hugging Face metadata); ``OUT/ctc/`` the CTC
head as ``<Family>ForCTC`` with its character tokenizer (``vocab.json``, blank = pad token,
``|`` = space). A CTC head reading a weighted layer sum has no transformers equivalent and
is not exported (the reason is printed and written into the card). Every other exported
task gets ``OUT/<task>/``, a ``<Family>ForSequenceClassification`` of its pooled head
(mapped as the emotion head): A/V/D with ``problem_type`` "regression" (``logits`` are the
values, ``id2label`` names the dimensions), a speaker attribute (e.g. gender) with its
classes. Each folder repeats the encoder's weights, as ``ctc/`` does.

Exactness: transformers computes the first convolution's GroupNorm (wav2vec2-base, HuBERT,
WavLM) and data2vec-audio's positional convolutions over padding too, so in padded batches
its outputs move a little; one recording at a time (the pipelines' default) they match
mtl_ser's to float precision.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

from mtl_ser.atomic import atomic_folder
from mtl_ser.export import LoadedModel, check_export_target, load_run, model_card
from mtl_ser.models.ssl import SSLEncoder
from mtl_ser.models.whisper import WHISPER_HF_NOTE, WhisperEncoder

CTC_FOLDER = "ctc"
WORD_DELIMITER = "|"


def _require_exportable(model: LoadedModel) -> None:
    if getattr(model.modules.get("emotion_head"), "reads_text", False):
        raise ValueError(
            "--format hf: the emotion head reads a transcript (tasks.emotion kind: "
            "text_emotion), which transformers' classification models cannot: export it with "
            "--format mtl_ser"
        )
    encoder = model.modules["encoder"]
    if isinstance(encoder, WhisperEncoder):
        raise ValueError(f"--format hf: {WHISPER_HF_NOTE}: export it with --format mtl_ser")
    if not isinstance(encoder, SSLEncoder):
        raise ValueError(
            f"--format hf needs a transformers encoder; this model's is a "
            f"{type(encoder).__name__}: export it with --format mtl_ser"
        )
    heads = ["emotion_head"] + [t["head"] for t in (model.spec or {}).get("tasks", {}).values()]
    for head in heads:
        pooling = model.modules[head].export_kwargs()["pooling"]
        if pooling != "mean":
            raise ValueError(
                f"--format hf: transformers' classification models pool by the mean; this "
                f"model's {head} uses {pooling!r} pooling: export it with --format mtl_ser"
            )


def _feature_extractor(model: LoadedModel) -> Wav2Vec2FeatureExtractor:
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=model.sample_rate,
        padding_value=0.0,
        do_normalize=model.modules["encoder"].normalize_waveform,
        return_attention_mask=True,
    )


def _base_config(encoder: SSLEncoder, architecture: str, **updates):
    config = encoder.backbone.cls("config").from_dict(
        {**encoder.model.config.to_dict(), **updates, "architectures": [architecture]}
    )
    config._attn_implementation = encoder.backbone.attention
    return config


def _with_encoder(task_model, encoder: SSLEncoder):
    """Copies the encoder's weights into a transformers task model (every tensor)."""
    getattr(task_model, task_model.base_model_prefix).load_state_dict(
        encoder.model.state_dict(), strict=True
    )
    return task_model


@torch.no_grad()
def classification_model(model: LoadedModel, head=None, labels=None, regression: bool = False):
    """A pooled head (default: the emotion head and classes) as transformers'
    ``<Family>ForSequenceClassification``.

    Args: head: an `EmotionHead` of ``model`` (mean pooling); labels: its outputs' names
    (``id2label``); regression: the outputs are values (``problem_type`` "regression", as
    the A/V/D head's), not class logits.
    """
    encoder = model.modules["encoder"]
    head = model.modules["emotion_head"] if head is None else head
    labels = model.labels if labels is None else labels
    n = len(labels)
    name = encoder.backbone.for_classification
    config = _base_config(
        encoder,
        name,
        id2label={str(i): label for i, label in enumerate(labels)},
        label2id={label: i for i, label in enumerate(labels)},
        classifier_proj_size=n,
        use_weighted_layer_sum=head.layer_sum is not None,
        **({"problem_type": "regression"} if regression else {}),
    )
    hf = _with_encoder(encoder.backbone.cls("for_classification")(config), encoder)
    hf.projector.weight.copy_(head.classifier.weight)
    hf.projector.bias.copy_(head.classifier.bias)
    hf.classifier.weight.copy_(torch.eye(n))
    hf.classifier.bias.zero_()
    if head.layer_sum is not None:
        hf.layer_weights.copy_(head.layer_sum.weights)
    return hf.eval()


def task_models(model: LoadedModel) -> dict:
    """The other exported tasks (`Task.export_info` in the spec) as transformers
    classification models by task name: A/V/D as a regression model (``id2label`` the
    dimensions), a speaker attribute as a classifier of its classes. Their heads are
    pooled heads like the emotion head, so they map the same way."""
    out = {}
    for name, info in (model.spec or {}).get("tasks", {}).items():
        head = model.modules[info["head"]]
        if info["kind"] == "dimensions":
            out[name] = classification_model(model, head, info["dimensions"], regression=True)
        else:
            out[name] = classification_model(model, head, info["classes"])
    return out


@torch.no_grad()
def ctc_model(model: LoadedModel):
    """The CTC head as transformers' ``<Family>ForCTC`` (blank = pad token)."""
    encoder, head = model.modules["encoder"], model.modules["ctc_head"]
    name = encoder.backbone.for_ctc
    config = _base_config(
        encoder,
        name,
        vocab_size=len(model.vocab),
        pad_token_id=model.vocab.blank_index,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
    )
    hf = _with_encoder(encoder.backbone.cls("for_ctc")(config), encoder)
    hf.lm_head.weight.copy_(head.linear.weight)
    hf.lm_head.bias.copy_(head.linear.bias)
    return hf.eval()


def _tokenizer(model: LoadedModel, folder: Path) -> Wav2Vec2CTCTokenizer:
    """Our characters as a CTC tokenizer: the blank is its pad token, space its word
    delimiter ``|``; ids are ours."""
    blank = model.vocab.characters[model.vocab.blank_index]
    tokens = [WORD_DELIMITER if c == " " else c for c in model.vocab.characters]
    vocab_file = folder / "vocab.json"
    vocab_file.write_text(json.dumps({t: i for i, t in enumerate(tokens)}, indent=1) + "\n")
    return Wav2Vec2CTCTokenizer(
        str(vocab_file), unk_token=blank, pad_token=blank, word_delimiter_token=WORD_DELIMITER
    )


def hf_front_matter(model: LoadedModel) -> str:
    """The model card's YAML metadata (task, metrics, dataset, protocol) for the Hub."""
    results = model.info["results"] or {}
    encoder = results.get("encoder") or ""
    protocol, fold = results.get("protocol"), results.get("fold")
    corpus = results.get("corpus") or "unknown"
    metrics = [
        {"type": "accuracy", "name": "WA (accuracy)", "value": results.get("wa")},
        {
            "type": "recall",
            "name": "UA (unweighted average recall)",
            "value": results.get("ua"),
            "args": {"average": "macro"},
        },
        {
            "type": "f1",
            "name": "macro-F1",
            "value": results.get("macro_f1"),
            "args": {"average": "macro"},
        },
    ]
    if results.get("wer") is not None:
        metrics.append({"type": "wer", "name": "WER (greedy CTC)", "value": results["wer"]})
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "audio-classification",
        "tags": ["audio-classification", "speech-emotion-recognition", "mtl-ser"]
        + [model.modules["encoder"].model_type],
        "metrics": ["accuracy", "recall", "f1"] + (["wer"] if results.get("wer") else []),
        "model-index": [
            {
                "name": f"mtl-ser {results.get('recipe', '')} alpha={results.get('alpha')}",
                "results": [
                    {
                        "task": {
                            "type": "audio-classification",
                            "name": "Speech emotion recognition",
                        },
                        "dataset": {
                            "name": f"{corpus} ({protocol} fold {fold}, test split)",
                            "type": corpus,
                            "split": "test",
                            "args": {
                                "protocol": protocol,
                                "fold": fold,
                                "labels": list(model.labels),
                            },
                        },
                        "metrics": [m for m in metrics if m["value"] is not None],
                    }
                ],
            }
        ],
    }
    if corpus != "unknown":
        meta["datasets"] = [corpus]
    if encoder and not encoder.startswith("random:") and not Path(encoder).exists():
        meta["base_model"] = encoder
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n"


def _usage(has_ctc_folder: bool, ctc_note: str | None) -> list[str]:
    lines = [
        "## Use with transformers",
        "",
        "```python",
        "from transformers import pipeline",
        'classify = pipeline("audio-classification", model="path/to/this/folder", top_k=None)',
        'print(classify("speech.wav"))  # one recording at a time: exact',
        "```",
        "",
    ]
    if has_ctc_folder:
        lines += [
            "Transcripts (greedy CTC, upper-case characters) from the `ctc/` folder:",
            "",
            "```python",
            'asr = pipeline("automatic-speech-recognition", model="path/to/this/folder/ctc")',
            "```",
            "",
        ]
    if ctc_note:
        lines += [ctc_note, ""]
    lines += [
        "In padded batches transformers normalises the first convolution (GroupNorm "
        "encoders) and data2vec-audio's positional convolutions over the padding too, so "
        "batched outputs can differ slightly from one-by-one ones; mtl-ser's own loader "
        "(`mtl-ser export --format mtl_ser`) is padding-aware.",
        "",
    ]
    return lines


def _task_usage(infos: dict) -> list[str]:
    """The card's lines on the other tasks' folders (``infos``: {task: export_info})."""
    if not infos:
        return []
    lines = ["## Other tasks", ""]
    for name, info in infos.items():
        if info["kind"] == "dimensions":
            what = (
                f"regression (`problem_type: regression`): `logits` are the values of "
                f"{', '.join(info['dimensions'])} (in `id2label`'s order)"
            )
        else:
            what = f"classification of {info.get('column', name)}: {', '.join(info['classes'])}"
        lines.append(f"- `{name}/`: {what}.")
    lines += [
        "",
        "Each is a whole `AutoModelForAudioClassification` folder (the shared encoder's "
        "weights are repeated in each):",
        "",
        "```python",
        "import torch",
        "from transformers import AutoFeatureExtractor, AutoModelForAudioClassification",
        f'folder = "path/to/this/folder/{next(iter(infos))}"',
        "extract = AutoFeatureExtractor.from_pretrained(folder)",
        "model = AutoModelForAudioClassification.from_pretrained(folder)",
        'inputs = extract(waveform_16k, sampling_rate=16000, return_tensors="pt")',
        "with torch.no_grad():",
        "    values = model(**inputs).logits[0]  # see id2label",
        "```",
        "",
    ]
    return lines


def export_hf(
    run_folder: str | Path, out_dir: str | Path, echo=print, overwrite: bool = False
) -> Path:
    """Writes the transformers folders of a finished run (see the module docstring), whole:
    into a temporary sibling renamed into place (`mtl_ser.atomic.atomic_folder`).

    Returns: ``out_dir``. Raises FileNotFoundError for an unfinished run, ValueError for a
    model without a transformers equivalent (CNN encoder, attentive pooling),
    OutputExistsError for an ``out_dir`` another export or the user made (unless
    ``overwrite``, which replaces it whole).
    """
    owner = check_export_target(run_folder, out_dir, "hf", overwrite)
    model = load_run(run_folder)
    _require_exportable(model)
    with atomic_folder(out_dir, owner, overwrite) as tmp:
        _write_hf(model, tmp, echo)
    return Path(out_dir)


def _write_hf(model: LoadedModel, out: Path, echo) -> None:
    """Writes the transformers folders of ``model`` into the (empty) folder ``out``."""
    classification_model(model).save_pretrained(out)
    _feature_extractor(model).save_pretrained(out)
    ctc_note = None
    has_ctc = "ctc_head" in model.modules
    if has_ctc and model.modules["ctc_head"].layer_sum is not None:
        ctc_note = (
            "The CTC head reads a weighted sum of the encoder's layers, which transformers' "
            "CTC models cannot express: it is not part of this export (use --format mtl_ser)."
        )
        echo(f"not exported: {ctc_note}")
        has_ctc = False
    if has_ctc:
        folder = out / CTC_FOLDER
        folder.mkdir(exist_ok=True)
        ctc_model(model).save_pretrained(folder)
        _feature_extractor(model).save_pretrained(folder)
        _tokenizer(model, folder).save_pretrained(folder)
    tasks = task_models(model)
    for name, hf in tasks.items():
        hf.save_pretrained(out / name)
        _feature_extractor(model).save_pretrained(out / name)
    if tasks:
        echo(
            "other tasks as transformers classification models: "
            + ", ".join(f"{name}/" for name in tasks)
        )
    infos = (model.spec or {}).get("tasks", {})
    usage = _usage(has_ctc, ctc_note) + _task_usage({t: infos[t] for t in tasks})
    card = model_card(model, model.spec, usage=usage)
    (out / "README.md").write_text(hf_front_matter(model) + card)

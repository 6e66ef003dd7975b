"""What every recipe does around the Brain: arguments, preparation, labels, vocabulary, identity.

Recipes take one hparams file, then optional override files, then ``--key=value`` overrides::

    python recipes/train_mtl.py hparams/mtl.yaml hparams/overrides/tiny.yaml --fold=2

Override files are plain YAML mappings of existing keys (later ones win, command-line
overrides win over all); HyperPyYAML refuses keys the hparams file does not have.

An hparams file whose first key is ``extends: <other file>`` holds only what differs from
that file (e.g. hparams/ser.yaml extends mtl.yaml), so variants never drift from their base.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections import Counter
from pathlib import Path

import speechbrain as sb
import torch
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.tag import Tag

import mtl_ser
from mtl_ser.data.labels import LabelSet
from mtl_ser.data.prepare import prepare_iemocap
from mtl_ser.data.text import CharVocabulary
from mtl_ser.hparams_check import ConfigError
from mtl_ser.runlock import RunLock

logger = logging.getLogger(__name__)

logger = logging.getLogger(__name__)
VOCAB_FILE = "vocab.json"
COMMAND_LINE = "the command-line options"


def parse_arguments(argv: list[str]):
    """Splits ``argv`` into (base hparams file, run options, overrides YAML string).

    Positional ``*.yaml`` files right after the hparams file are override files. When the
    hparams file extends another, the base file is returned and the extending file's keys
    become the first override layer.
    """
    argv = list(argv)
    files = []
    while len(argv) > 1 and not argv[1].startswith("-") and argv[1].endswith((".yaml", ".yml")):
        files.append(argv.pop(1))
    twice = [key for key, n in Counter(given_keys(argv)).items() if n > 1]
    if twice:
        raise ConfigError(f"--{twice[0]} is given more than once; give each option once")
    hparams_file, run_opts, cli_overrides = sb.parse_arguments(argv)
    base_file, layers = resolve_extends(hparams_file)
    layers += [_read_mapping(path) for path in files]
    if cli_overrides:
        layers.append(_parse_yaml(cli_overrides, COMMAND_LINE))
    return base_file, run_opts, merge_layers(layers, base=_read_mapping(base_file))


def given_keys(argv: list[str]) -> list[str]:
    """The option names of ``--key=value`` and ``--key value`` arguments, in order."""
    return [arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--") and len(arg) > 2]


_YAML = YAML()  # round-trip mode: keeps !ref, !new: ... tags of override files


def _parse_yaml(text: str, where: str):
    """``text`` parsed (round trip); ConfigError naming ``where``, the line and the problem
    for a duplicate key or a syntax error."""
    try:
        return _YAML.load(text) or {}
    except DuplicateKeyError as err:
        raise ConfigError(f"{where}: a key appears twice ({err.problem})") from None
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        if where == COMMAND_LINE:  # merged "key: value" lines: name the first bad option
            bad = next((line for line in text.splitlines() if not _parses(line)), None)
            at = f" (--{bad.replace(': ', '=', 1)})" if bad else ""
        hint = "; YAML indents with spaces, not tabs" if "'\\t'" in str(err.problem) else ""
        raise ConfigError(f"{where}{at}: not valid YAML ({err.problem}){hint}") from None
    except YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({err})") from None


def _parses(text: str) -> bool:
    try:
        _YAML.load(text)
    except YAMLError:
        return False
    return True


def _read_mapping(path: str | Path):
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such hparams file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err})") from None
    data = _parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of hparams keys")
    return data


def resolve_extends(hparams_file: str | Path) -> tuple[str, list]:
    """Follows ``extends:`` chains.

    Returns: (the file that extends nothing, [override mappings from the most basic
    extending file to ``hparams_file``]).
    """
    layers, seen, path = [], set(), Path(hparams_file)
    while True:
        if path.resolve() in seen:
            raise ValueError(f"hparams files extend each other in a loop at {path}")
        seen.add(path.resolve())
        data = _read_mapping(path)
        if "extends" not in data:
            return str(path), layers
        base = path.parent / data.pop("extends")
        layers.insert(0, data)
        path = base


def merge_layers(layers: list, base: dict | None = None) -> str:
    """Merges override mappings (later wins; nested mappings merge key by key, as
    HyperPyYAML does) into one YAML string for ``load_hyperpyyaml``; "" when empty.

    ``base`` (the hparams file's mapping) lets an override give a key an object of another
    class (``train_logger: !new:...TensorboardLogger``): HyperPyYAML would merge its
    arguments into the base object's and keep the base's class, so such a value is passed
    wrapped in `replacement`, which HyperPyYAML substitutes whole.
    """
    merged = {}
    for layer in layers:
        merge_into(merged, layer)
    if base is not None:
        _wrap_new_classes(merged, base)
    if not merged:
        return ""
    out = io.StringIO()
    _YAML.dump(merged, out)
    return out.getvalue()


def merge_into(target: dict, layer: dict) -> None:
    """Updates ``target`` with ``layer`` in place; nested mappings merge key by key, except
    that a mapping tagged with another class (``!new:...``) replaces the old one whole."""
    for key, value in layer.items():
        old = target.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and not _retagged(old, value):
            merge_into(old, value)
        else:
            target[key] = value


def _tag(node) -> str | None:
    """The YAML tag of a ruamel node (or of the sweep's plain ``{"__tag__": ...}`` form)."""
    tag = getattr(getattr(node, "tag", None), "value", None)
    if tag is None and isinstance(node, dict):
        tag = node.get("__tag__")
    return tag


def _retagged(old, new) -> bool:
    return _tag(new) is not None and _tag(new) != _tag(old)


def replacement(value):
    """Returns ``value``: the wrapper `merge_layers` puts around an override object of
    another class than the base's (a one-element list, which HyperPyYAML does not merge)."""
    return value


def _wrap_new_classes(overrides: dict, base: dict) -> None:
    for key, value in overrides.items():
        old = base.get(key) if isinstance(base, dict) else None
        if not (isinstance(value, dict) and isinstance(old, dict)):
            continue
        if _retagged(old, value):
            wrapped = CommentedSeq([value])
            wrapped.yaml_set_ctag(Tag(suffix="!apply:mtl_ser.experiment.replacement"))
            overrides[key] = wrapped
        else:
            _wrap_new_classes(value, old)


def prepare_data(hparams: dict) -> None:
    """Runs IEMOCAP preparation on the main process unless ``skip_prep`` (then the
    ``*_annotation`` manifests must exist, e.g. from ``mtl-ser prepare csv``)."""
    if hparams["skip_prep"]:
        return
    sb.utils.distributed.run_on_main(
        prepare_iemocap,
        kwargs={
            "data_folder": hparams["data_folder"],
            "output_folder": hparams["manifest_folder"],
            "protocol": hparams["protocol"],
            "fold": hparams["fold"],
            "keep_exc_apart": hparams["keep_exc_apart"],
            "valid_strategy": hparams["valid_strategy"],
            "valid_fraction": hparams["valid_fraction"],
            "valid_speaker": hparams["valid_speaker"],
            "seed": hparams["split_seed"],
        },
    )


def label_set_of(hparams: dict) -> LabelSet:
    """The label set saved next to the training manifest."""
    return LabelSet.load(Path(hparams["train_annotation"]).parent)


def experiment_vocabulary(
    output_folder: str | Path, train_annotation: str | Path, others: tuple = ()
) -> CharVocabulary:
    """The run's CTC vocabulary: the base set plus every other character of the training
    transcripts (`CharVocabulary.from_transcripts`; English corpora give exactly the base
    set), saved as ``vocab.json`` in the run folder. A run folder saved with another
    vocabulary is refused (its checkpoints would not match).

    Args:
        output_folder: the run folder.
        train_annotation: the training manifest (its ``wrd`` fields decide the set).
        others: further manifests (valid, test): characters of theirs outside the set are
            left out of their CTC targets, and counted in one logged line.

    Returns: the vocabulary.
    """
    train = json.loads(Path(train_annotation).read_text())
    vocab = CharVocabulary.from_transcripts(r.get("wrd") or "" for r in train.values())
    path = Path(output_folder) / VOCAB_FILE
    if path.is_file():
        saved = CharVocabulary.load(path)
        if saved != vocab:
            differ = sorted(set(saved.characters) ^ set(vocab.characters))
            raise ValueError(
                f"{path} holds another character vocabulary ({len(saved)} symbols) than the "
                f"transcripts of {train_annotation} give ({len(vocab)}; differing: "
                f"{''.join(differ[:20])!r}); use a new output folder"
            )
    elif sb.utils.distributed.if_main_process():
        vocab.save(path)
    unknown, where = Counter(), []
    for manifest in others:
        for utt_id, record in json.loads(Path(manifest).read_text()).items():
            missing = vocab.unknown(record.get("wrd") or "")
            if missing:
                unknown.update(missing)
                where.append(utt_id)
    if unknown:
        chars = ", ".join(f"{c!r} {n}" for c, n in unknown.most_common(10))
        logger.warning(
            "CTC vocabulary (%d symbols, from %s) lacks characters of valid/test transcripts, "
            "left out of their CTC targets: %d: %s; in %d utterance(s), e.g. %s",
            len(vocab),
            train_annotation,
            sum(unknown.values()),
            chars,
            len(where),
            ", ".join(where[:3]),
        )
    return vocab


def lock_run_folder(output_folder: str | Path) -> RunLock | None:
    """Takes the run folder's lock on the main process (held until the process ends), so a
    second run into the same folder stops with `RunLockedError` instead of deleting the
    first one's checkpoints. Returns the lock (None on other processes)."""
    # Before the process group exists, so the rank comes from the launcher's environment.
    if sb.utils.distributed.get_rank() not in (None, 0):
        return None
    return RunLock(output_folder).acquire()


def run_setting_values(hparams_file, overrides: str, config: dict, run_opts) -> dict:
    """This run's setting values from its configuration (`mtl_ser.settings`), after checking
    that the output folder holds no run of another setting (before anything is written
    there: a re-run with another fold or alpha must not touch the earlier run)."""
    from mtl_ser.settings import check_run_folder, hparams_values

    values = hparams_values(hparams_file, overrides, config, run_opts)
    check_run_folder(config["output_folder"], values, partial=True)
    return values


def claim_run_folder(hparams: dict, values: dict) -> dict:
    """Completes the setting with the encoder's and the manifests' digests, refuses a run
    folder of another setting, and records it in ``setting.json`` (main process).

    Returns: the setting record for results.json.
    """
    from mtl_ser.settings import check_run_folder, data_values, make_setting, write_setting

    values = {**values, **data_values(hparams)}
    check_run_folder(hparams["output_folder"], values)
    if sb.utils.distributed.if_main_process():
        return write_setting(hparams["output_folder"], values)
    return make_setting(values)


def run_recipe_main(main, argv: list[str]) -> int:
    """Runs a recipe's ``main(argv)``; a configuration problem, a busy run folder, a
    pretrained model that cannot be found or an unusable manifest is a message on stderr
    and exit status 2 (no traceback); a diverged training, unusable checkpoints, a batch too
    large for memory or a cache problem exit status 1.

    Returns: the exit status.
    """
    from mtl_ser.brain import NonFiniteLossError, OutOfMemoryBatchError
    from mtl_ser.checkpoints import CheckpointLoadError, DamagedCheckpointError
    from mtl_ser.data.encoder_cache import EncoderCacheError
    from mtl_ser.errors import expected_errors, report

    program = Path(sys.argv[0]).name
    try:
        main(argv)
    except expected_errors() as err:
        return report(program, err)
    except (
        NonFiniteLossError,
        DamagedCheckpointError,
        CheckpointLoadError,
        OutOfMemoryBatchError,
        EncoderCacheError,
    ) as err:
        print(f"{program}: error: {err}", file=sys.stderr)
        return 1
    return 0


def end_distributed() -> None:
    """Under torchrun: waits for every process, then closes the process group (a process
    leaving with gloo's threads still open can abort, failing the whole launch)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run_identity(hparams: dict, label_set: LabelSet) -> dict:
    """Facts that identify a run in results.json and in reports (the `EmotionBrain` adds
    the trained parameter counts once its tasks have their heads).

    The protocol, fold, number of folds and speaker independence come from the ``split``
    facts `mtl-ser prepare` saved with the manifests (any corpus); manifests prepared before
    those existed fall back to the old rules (CSV: protocol "csv", fold 1).
    """
    options_file = Path(hparams["train_annotation"]).parent / "prepare_options.json"
    prepared = json.loads(options_file.read_text()) if options_file.is_file() else {}
    split = prepared.get("split") or {}
    if split:
        protocol, fold = split["protocol"], split["fold"]
    elif prepared.get("corpus") == "csv":  # split by the CSV, not by an IEMOCAP protocol
        protocol, fold = "csv", 1
    else:
        protocol = prepared.get("protocol", hparams["protocol"])
        fold = prepared.get("fold", hparams["fold"])
    return {
        "recipe": hparams["recipe"],
        "alpha": hparams["alpha"],
        "protocol": protocol,
        "fold": fold,
        "folds": split.get("folds"),
        "speaker_independent": split.get("speaker_independent"),
        "seed": hparams["seed"],
        # Learning rates identify a setting too (Cai et al. used 1e-5 for alpha = 0).
        "lr_encoder": hparams["lr_encoder"],
        "lr_heads": hparams["lr_heads"],
        "encoder": hparams["encoder_name"],
        "corpus": prepared.get("corpus"),
        "labels": list(label_set.classes),
        "mtl_ser_version": mtl_ser.__version__,
    }


def fit_calibration(brain, valid_set, loader_kwargs: dict) -> dict:
    """The run's calibration setting, put in ``brain.identity["calibration"]`` (results.json).

    With hparams ``calibration: temperature`` the temperature is fitted on the VALIDATION
    set's emotion logits from the checkpoint ``checkpoint_selection`` chooses (the one the
    test pass uses), never on test data, and stored in the run's model_spec.json so that
    `predict`, `evaluate` and every export apply it. Call after ``fit`` and before the test.

    Args:
        brain: the trained `EmotionBrain` (hparams ``calibration``, ``calibration_bins``).
        valid_set: the validation dataset given to ``fit``.
        loader_kwargs: its loader options (as for validation).

    Returns: ``{"bins"}``, plus with temperature scaling ``"temperature"``,
    ``"valid_nll_before"``, ``"valid_nll_after"`` and ``"valid_utterances"``.
    """
    from mtl_ser.calibration import fit_temperature, nll
    from mtl_ser.checkpoints import find_selected_checkpoint
    from mtl_ser.export import load_tensors, store_temperature

    hp = brain.hparams
    setting = {"bins": hp.calibration_bins}
    if hp.calibration == "temperature":
        checkpoint = find_selected_checkpoint(brain.checkpointer, hp.checkpoint_selection)
        if checkpoint is None:
            raise RuntimeError(
                f"no checkpoint with validation metrics in {brain.checkpointer.checkpoints_dir}:"
                " nothing to calibrate"
            )
        for name, module in brain.modules.items():
            if name in checkpoint.paramfiles:  # the weights only: the epoch counter stays
                bare = getattr(module, "module", module)  # DDP-wrapped or not
                bare.load_state_dict(load_tensors(checkpoint.paramfiles[name]))
        logits, targets = validation_logits(brain, valid_set, loader_kwargs)
        temperature = fit_temperature(logits, targets)
        setting.update(
            temperature=temperature,
            valid_nll_before=nll(logits, targets),
            valid_nll_after=nll(logits, targets, temperature),
            valid_utterances=len(targets),
        )
        if sb.utils.distributed.if_main_process():
            store_temperature(hp.output_folder, temperature)
    brain.identity["calibration"] = setting
    return setting


@torch.no_grad()
def validation_logits(brain, valid_set, loader_kwargs: dict):
    """Emotion logits ``[N, C]`` and targets ``[N]`` (numpy) of ``valid_set`` from the
    brain's current weights, in eval mode."""
    loader = brain.make_dataloader(valid_set, stage=sb.Stage.VALID, **loader_kwargs)
    brain.modules.eval()
    logits, targets = [], []
    for batch in loader:
        with brain.evaluation_ctx:
            outputs = brain.compute_forward(batch, stage=sb.Stage.VALID)
        logits.append(outputs.by_task["emotion"].float().cpu())  # the emotion task's logits
        targets.append(batch.emo_encoded.data.squeeze(-1).cpu())
    return torch.cat(logits).numpy(), torch.cat(targets).numpy()

"""The full resolved setting of a run: every value that can change the trained model or its
result, recorded in the run folder and in results.json, and compared on every resume.

A setting is built from the merged hparams (the hparams file + override files + command-line
overrides), so that a key added to an hparams file later counts without touching this
module, plus:

- the SpeechBrain run options given on the command line that are not hparams keys and are
  not listed below (e.g. ``--eval_precision``), when they differ from SpeechBrain's default;
- ``world_size``: processes under torchrun (each takes its own batches, so the number of
  utterances per optimiser step scales with it);
- ``encoder_weights_digest``: a digest of the encoder checkpoint's weight and config files
  (None for ``random:<preset>`` encoders, which ``encoder_source`` and ``seed`` identify);
- ``manifests_digest``: a digest of the train / valid / test manifests' bytes (the data the
  run sees, wherever it lies on disk);
- ``lm_digest``: a digest of the beam decoder's language model file (``lm_path``), when
  there is one (the test pass's ``wer_beam_lm`` depends on its bytes, not on where it lies).

A key whose value holds an object (``!new:``, ``!name:``, ``!apply:``) is recorded by its
definition as written (``!ref <key>`` kept by name), so it counts when a user replaces it
(``encoder_opt_class: !name:torch.optim.SGD``) and not when only the keys it refers to
change (those count by themselves). Paths inside plain mappings are not special: only the
loader keys of `NESTED_IGNORED` are dropped inside them (``train_dataloader_opts``).

`IGNORED_KEYS` lists, with the reason, the keys known not to change the result; they are
left out of the values and may differ on a resume. Everything else counts.

``setting.json`` in the run folder and the ``setting`` key of results.json hold::

    {"digest": "<16 hex>", "values": {key: value, ...}, "ignored": [key, ...]}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mtl_ser.data.fingerprint import file_digest

SETTING_FILE = "setting.json"
# The values that vary between replicates of one setting: the report and the sweep group
# runs by the values without these (`group_key`).
REPLICATE_KEYS = ("fold", "seed")

# Keys that cannot change the trained model or the test result, and why.
IGNORED_KEYS: dict[str, str] = {
    # Where things are; the data itself counts through manifests_digest.
    "data_folder": "where the corpus lies (manifests_digest counts the data)",
    "skip_prep": "whether the manifests were prepared here (manifests_digest counts them)",
    "output_folder": "where the run is written",
    "save_folder": "where checkpoints are written",
    "manifest_folder": "where the manifests are written (manifests_digest counts them)",
    "train_annotation": "a manifest's path (manifests_digest counts its bytes)",
    "valid_annotation": "a manifest's path (manifests_digest counts its bytes)",
    "test_annotation": "a manifest's path (manifests_digest counts its bytes)",
    "wav2vec2_cache": "where hub files are cached (encoder_weights_digest counts them)",
    "encoder_name": "the encoder's display name (encoder_source and its digest count)",
    "lm_path": "where the decoder's language model lies (lm_digest counts its bytes)",
    "checkpointer": "where checkpoints are written",
    # Loader processes. With random crops or augmentation the draws of a given batch come
    # from another worker's generator, as they would after any restart: the distribution
    # of the experiment is the same.
    "num_workers": "loader processes",
    "pin_memory": "host memory of the loader",
    "persistent_workers": "loader processes kept between epochs",
    # A cache of frozen encoder outputs holds what the encoder computes (hparams_check
    # refuses it where it would not); encoder_cache_dtype counts.
    "encoder_cache_folder": "where the encoder cache lies",
    "encoder_cache_max_gb": "a size limit of the encoder cache",
    "encoder_cache": "built from keys that count by themselves",
    # Logging.
    "tracker": "experiment tracker (logging only)",
    "tracker_folder": "experiment tracker folder (logging only)",
    "experiment_tracker": "experiment tracker (logging only)",
    "train_logger": "the text log",
    "group_columns": "which per-group tables results.json adds (the metrics are the same)",
    # SpeechBrain run options that change where or how visibly the same computation runs.
    "device": "the same computation on another device",
    "noprogressbar": "progress display",
    "tqdm_colored_bar": "progress display",
    "tqdm_barcolor": "progress display",
    "ckpt_interval_minutes": "when checkpoints are taken (a resume continues exactly)",
    "ckpt_interval_steps": "when checkpoints are taken (a resume continues exactly)",
    "find_unused_parameters": "a DDP bookkeeping option",
    "distributed_backend": "the DDP transport (nccl, gloo)",
    "distributed_launch": "set by torchrun (world_size counts)",
    "data_parallel_backend": "refused with torchrun; world_size counts",
    "data_parallel_count": "refused with torchrun; world_size counts",
    "jit": "the same computation, compiled",
    "jit_module_keys": "the same computation, compiled",
    "compile": "the same computation, compiled",
    "compile_module_keys": "the same computation, compiled",
    "compile_mode": "the same computation, compiled",
    "compile_using_fullgraph": "the same computation, compiled",
    "compile_using_dynamic_shape_tracing": "the same computation, compiled",
    "profile_training": "profiling",
    "profile_warmup": "profiling",
    "profile_steps": "profiling",
    "log_config": "logging",
    "param_file": "the hparams file's path (its merged values count)",
    "test_only": "a test pass of the trained run",
    "overridden_args": "bookkeeping of SpeechBrain's parser",
}
# Inside plain mappings (e.g. train_dataloader_opts), keys dropped for the same reasons.
NESTED_IGNORED = ("num_workers", "pin_memory", "persistent_workers")
# Weight and configuration files of an encoder checkpoint folder.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")
_ABSENT = "<absent>"


def _config_error(message: str) -> Exception:
    # Imported here: the report and the sweep read settings without loading the training code.
    from mtl_ser.hparams_check import ConfigError

    return ConfigError(message)


def canonical_json(values: dict) -> str:
    """The JSON text digests are taken of (sorted keys, no spaces)."""
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def digest(values: dict) -> str:
    """The first 16 hex characters of the sha256 of ``canonical_json(values)``."""
    return hashlib.sha256(canonical_json(values).encode()).hexdigest()[:16]


def group_key(values: dict) -> str:
    """The digest of a setting's values without the per-replicate keys (fold, seed): equal
    for the replicates of one setting, different for any other difference."""
    return digest({k: v for k, v in values.items() if k not in REPLICATE_KEYS})


def make_setting(values: dict) -> dict:
    """The ``setting`` record: {"digest", "values", "ignored"} (module docstring)."""
    values = json.loads(canonical_json(values))  # plain JSON types, as read back from disk
    return {"digest": digest(values), "values": values, "ignored": sorted(IGNORED_KEYS)}


# ------------------------------------------------------------------------ values


def _tag(node) -> str | None:
    return getattr(getattr(node, "tag", None), "value", None)


def _has_tag(node) -> bool:
    if _tag(node) is not None:
        return True
    if isinstance(node, dict):
        return any(_has_tag(v) for v in node.values())
    if isinstance(node, list | tuple):
        return any(_has_tag(v) for v in node)
    return False


def _plain(node, drop: tuple[str, ...] = ()):
    """A YAML node as JSON data: a tagged node as {"!": tag, ...} (a scalar's tag and text
    as one string); ``drop``: keys left out of mappings at every depth."""
    tag = _tag(node)
    if isinstance(node, dict):
        out = {str(k): _plain(v, drop) for k, v in node.items() if k not in drop}
        return {"!": tag, **out} if tag else out
    if isinstance(node, list | tuple):
        items = [_plain(v, drop) for v in node]
        return {"!": tag, "args": items} if tag else items
    if tag is not None:  # a tagged scalar: !ref <key>, !PLACEHOLDER
        return f"{tag} {getattr(node, 'value', node)}"
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return str(node)


def hparams_values(hparams_file: str | Path, overrides: str, config: dict, run_opts=None) -> dict:
    """The setting's values that the configuration alone gives (no digests yet).

    Args:
        hparams_file: the base hparams file (after ``extends:`` resolution).
        overrides: the merged override YAML (override files + command line).
        config: the resolved configuration (`hparams_check.check_hparams`'s return).
        run_opts: SpeechBrain's run options (None: defaults).

    Returns: {key: JSON value} for every key not in `IGNORED_KEYS`, plus ``world_size``.
    """
    from speechbrain.core import RunOptions

    from mtl_ser.experiment import merge_into
    from mtl_ser.hparams_check import RUN_OPTIONS, _load_round_trip

    # The definitions as written (references by name), for keys that hold objects.
    definitions = _load_round_trip(Path(hparams_file).read_text())
    merge_into(definitions, _load_round_trip(overrides) if overrides else {})
    given = set(getattr(run_opts, "overridden_args", ()) or ())
    values = {}
    for key, value in config.items():
        if key in IGNORED_KEYS:
            continue
        if key in RUN_OPTIONS and key in given:  # a command-line run option wins
            value = getattr(run_opts, key)
        if _has_tag(value):
            values[key] = _plain(definitions.get(key, value))
        else:
            values[key] = _plain(value, NESTED_IGNORED)
    defaults = RunOptions().as_dict()
    for key in sorted(given):
        if key in IGNORED_KEYS or key in values or key not in defaults:
            continue
        if getattr(run_opts, key) != defaults[key]:
            values[key] = _plain(getattr(run_opts, key))
    values["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return values


def files_digest(paths: list[Path], root: Path | None = None) -> str:
    """sha256 (16 hex) over the names (relative to ``root``, else the file names) and the
    bytes of ``paths``, in name order."""
    named = sorted((str(p.relative_to(root)) if root else p.name, p) for p in paths)
    sha = hashlib.sha256()
    for name, path in named:
        sha.update(f"{name}\0{file_digest(path)}\n".encode())
    return sha.hexdigest()[:16]


def encoder_weights_digest(source: str, cache_dir: str | None = None) -> str | None:
    """A digest of an encoder checkpoint's weight files and config.json.

    Args:
        source: ``random:<preset>`` (None: the preset name and the seed identify it), a
            local ``save_pretrained`` folder, or a hub id (its cached snapshot).
        cache_dir: the hub cache folder (None: the default).

    Returns: 16 hex characters, or None for a random encoder. Raises ConfigError when a
    hub model is not in the cache (call it after the encoder was loaded).
    """
    if source.startswith("random:"):
        return None
    folder = Path(source)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(source, cache_dir=cache_dir, local_files_only=True))
        except Exception as err:  # noqa: BLE001 - any failure means: not cached
            raise _config_error(
                f"encoder_source = {source}: cannot find its cached files to record their "
                f"digest ({type(err).__name__})"
            ) from None
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json")
    ]
    if not files:
        raise _config_error(f"encoder_source = {source}: no weight files in {folder}")
    return files_digest(files, folder)


def data_values(hparams: dict) -> dict:
    """The values that need the loaded encoder and the prepared manifests.

    Args:
        hparams: the loaded hparams (``*_annotation`` paths; ``encoder_source`` and
            ``wav2vec2_cache`` where the recipe has a pretrained encoder).

    Returns: {"manifests_digest": ..., "encoder_weights_digest": ..., "lm_digest": ...}
    (the encoder's only when the hparams have an ``encoder_source``, the LM's only with an
    ``lm_path``).
    """
    manifests = [Path(hparams[f"{s}_annotation"]) for s in ("train", "valid", "test")]
    sha = hashlib.sha256()
    for split, path in zip(("train", "valid", "test"), manifests, strict=True):
        sha.update(f"{split}\0{file_digest(path)}\n".encode())
    values = {"manifests_digest": sha.hexdigest()[:16]}
    if "encoder_source" in hparams:
        values["encoder_weights_digest"] = encoder_weights_digest(
            hparams["encoder_source"], hparams.get("wav2vec2_cache")
        )
    if hparams.get("lm_path"):
        from mtl_ser.ngram import lm_digest

        values["lm_digest"] = lm_digest(hparams["lm_path"])
    return values


# --------------------------------------------------------------------- run folder


def read_setting(folder: str | Path) -> dict | None:
    """The setting recorded in ``folder/setting.json``; None when there is none."""
    path = Path(folder) / SETTING_FILE
    if not path.is_file():
        return None
    try:
        setting = json.loads(path.read_text())
        if not isinstance(setting.get("values"), dict):
            raise ValueError("no values")
    except (ValueError, AttributeError) as err:
        raise _config_error(
            f"{path}: unreadable ({err}); delete it only if this folder holds no run"
        ) from None
    return setting


def differences(old: dict, new: dict, keys=None) -> list[str]:
    """``key: old -> new`` for each key (of ``keys``, default all) whose values differ."""
    keys = sorted(set(old) | set(new)) if keys is None else sorted(keys)
    out = []
    for key in keys:
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a != b:
            out.append(f"{key} {_shown(a)} -> {_shown(b)}")
    return out


def _shown(value) -> str:
    return value if value is _ABSENT else json.dumps(value, sort_keys=True)


def check_run_folder(folder: str | Path, values: dict, partial: bool = False) -> None:
    """Refuses a run folder that holds a run of another setting.

    Args:
        folder: the run's output folder.
        values: this run's setting values.
        partial: compare only the keys of ``values`` (before the digests are known).

    Raises ConfigError naming every differing key (old -> new); keys of `IGNORED_KEYS`
    never count.
    """
    old = read_setting(folder)
    if old is None:
        return
    new = make_setting(values)["values"]
    keys = set(new) if partial else None
    changed = differences(old["values"], new, keys)
    if changed:
        raise _config_error(
            f"{folder} holds a run of another setting ({'; '.join(changed)}): use another "
            f"--output_folder, or delete {folder} to start again (keys that may differ: "
            "IGNORED_KEYS in mtl_ser/settings.py)"
        )


def write_setting(folder: str | Path, values: dict) -> dict:
    """Writes ``folder/setting.json`` atomically. Returns the setting record."""
    setting = make_setting(values)
    path = Path(folder) / SETTING_FILE
    tmp = path.with_name(f".{SETTING_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(setting, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return setting

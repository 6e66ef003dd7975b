#!/usr/bin/env python3
"""Seconds per training epoch and per evaluation pass: the recipe against plain transformers.

On a corpus with IEMOCAP's duration distribution (synthesised once into ``--corpus``, or
reused from there) it times, in one process on one machine, interleaved over ``--rounds``
rounds, with random training batches of 8, the feature encoder frozen, no time masking and
no encoder cache:

- (r) the recipe with its default ``padding_aware: True``;
- (p) the reference: a loop of plain ``transformers`` calls (``Wav2Vec2FeatureExtractor``
  in the loader, ``model(x, attention_mask=...)``, mean pooling over the valid frames, two
  linear heads, CE + alpha * CTC, AdamW, global clipping) on (r)'s batches;
- (o) a plain loop over the project's own modules (no SpeechBrain) on (r)'s batches: what
  the Brain and the data pipeline cost on top of the modules;
- (r0) the recipe with ``padding_aware: False`` (the released code's way) and (p0) the
  transformers loop without attention masks on (r0)'s batches;
- probing: a frozen encoder read through a weighted layer sum with the encoder cache: the
  first epoch (which fills the cache) against the next.

It prints s/epoch (the fastest round, and every round), the share of padding in the
batches, the peak memory of each configuration (CUDA: ``torch.cuda.max_memory_allocated``;
CPU: the process's peak resident memory, reset before each configuration through
``/proc/self/clear_refs``), the ratios r/p, r0/p0, r/o, o/p (the median of the rounds'
ratios, the fastest round against the fastest, and each round's), the probing ratio, and
the command for a GPU. ``--warmup`` rounds (1 by default) run first and are not counted:
a process's first epoch runs cold (allocator, thread pools, lazy initialisation) and the
recipe, which runs first in a round, would pay for it.

The corpus: durations log-normal with IEMOCAP's mean 4.56 s and standard deviation 3.2 s
(the 4-class set's statistics used by the README's compute estimate and DESIGN.md),
clipped to its range [0.6, 34] s (from 1000 training utterances on, the longest is set to
34 s so that peak memory covers IEMOCAP's longest utterance); audio is a tone in noise
(16 kHz), transcripts random letters (12 per second), labels random; a tenth as many
validation utterances (at least 16) and 8 test ones.

    # CPU, minutes on 2 cores (random:small, a wav2vec2-shaped 3.7 M-parameter model)
    python benchmarks/train_epoch.py --corpus /tmp/iemocap_like --threads 2
    # GPU: the base architecture, a few minutes (the command the CPU run prints)
    python benchmarks/train_epoch.py --corpus /tmp/iemocap_like --device cuda \\
        --encoder random:base --utterances 400 --rounds 3 --workers 4 --no-probing
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from torch.utils.data import DataLoader, Dataset
from transformers import Wav2Vec2FeatureExtractor

from mtl_ser.brain import EmotionBrain
from mtl_ser.data.audio import SAMPLE_RATE
from mtl_ser.data.labels import IEMOCAP_CLASSES, LabelSet
from mtl_ser.data.pipelines import (
    add_pipelines,
    dataio_prep,
    eval_loader_options,
    load_dataset,
    train_loader_options,
)
from mtl_ser.data.sampler import padding_share
from mtl_ser.data.text import CharVocabulary
from mtl_ser.experiment import parse_arguments
from mtl_ser.models.backbones import build_ssl_model
from mtl_ser.models.heads import CTCHead, EmotionHead
from mtl_ser.models.outputs import EncoderOutput
from mtl_ser.models.ssl import SSLEncoder

ROOT = Path(__file__).resolve().parents[1]
MEAN_S, SD_S, MIN_S, MAX_S = 4.56, 3.2, 0.6, 34.0
CHARS_PER_SECOND = 12
MARKER = "benchmark_corpus.json"
# Every loop: the feature encoder frozen, no time masking (the setting; the
# transformer and the heads train).
ENCODER_SETTINGS = {"freeze_feature_encoder": True, "mask_time_prob": 0.0}
RECIPE_SETTINGS = {**ENCODER_SETTINGS, "encoder_cache_folder": "null", "sorting": "random"}


# ------------------------------------------------------------------------------ corpus
def iemocap_like_durations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` durations (s), log-normal with IEMOCAP's mean and sd, clipped to its range."""
    sigma2 = math.log(1 + (SD_S / MEAN_S) ** 2)
    draws = rng.lognormal(math.log(MEAN_S) - sigma2 / 2, sigma2**0.5, n)
    return np.clip(draws, MIN_S, MAX_S)


def synthesize_corpus(folder: Path, n_train: int, n_valid: int, seed: int = 0) -> dict:
    """Writes the corpus (wav files, train / valid / test manifests, labels.json) into
    ``folder`` unless it already holds this one; returns the manifest paths."""
    spec = {"train": n_train, "valid": n_valid, "test": 8, "seed": seed, "version": 1}
    marker = folder / MARKER
    paths = {split: folder / f"{split}.json" for split in ("train", "valid", "test")}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    letters = [c for c in CharVocabulary().characters if c.isalpha()]
    for split in ("train", "valid", "test"):
        durations = iemocap_like_durations(spec[split], rng)
        if split == "train" and spec[split] >= 1000:  # an IEMOCAP-sized set: its longest
            durations[int(np.argmax(durations))] = MAX_S
        records = {}
        for i, seconds in enumerate(durations):
            samples = int(round(seconds * SAMPLE_RATE))
            t = np.arange(samples) / SAMPLE_RATE
            tone = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 400) * t)
            audio = (tone + 0.02 * rng.standard_normal(samples)).astype(np.float32)
            name = f"{split}/{split}_{i:05d}.wav"
            (folder / split).mkdir(exist_ok=True)
            soundfile.write(folder / name, audio, SAMPLE_RATE, subtype="PCM_16")
            words = "".join(rng.choice(letters, max(1, int(seconds * CHARS_PER_SECOND))))
            text = " ".join(words[j : j + 5] for j in range(0, len(words), 5))
            emotion = str(rng.choice(IEMOCAP_CLASSES))
            records[f"{split}_{i:05d}"] = {
                "wav": "{data_root}/" + name,
                "duration": samples / SAMPLE_RATE,
                "emo": emotion,
                "label_raw": emotion,
                "wrd": text,
                "transcript": text,
                "has_text": True,
                "spk": f"{split}{i % 10}",
                "scripted": False,
            }
        paths[split].write_text(json.dumps(records, indent=1))
    LabelSet(IEMOCAP_CLASSES).save(folder)
    marker.write_text(json.dumps(spec))
    return paths


# ------------------------------------------------------------------------------ timing
def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(work, device: str) -> float:
    """Seconds one call of ``work()`` takes on ``device`` (its queued CUDA work included:
    synchronised before and after)."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


class PeakMemory:
    """Peak memory of a block: CUDA allocations, or the process's resident memory."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:  # Linux: resets VmHWM (the peak resident set) to the current size
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_gb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 1e9
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


class TimedBrain(EmotionBrain):
    """The recipe's Brain, timing its stages (``seconds["TRAIN"]``, ``seconds["VALID"]``,
    ``seconds["fit_start"]``) and recording its training batches (``train_batches``); no
    checkpoints or logs: those are per epoch, not per step, and the bare loop has none."""

    def on_fit_start(self):
        self.seconds = {}
        synchronize(self.device)
        start = time.perf_counter()
        super().on_fit_start()  # optimisers, and the encoder cache when there is one
        synchronize(self.device)
        self.seconds["fit_start"] = time.perf_counter() - start

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        if stage.name == "TRAIN":
            self.train_batches = []
        synchronize(self.device)
        self.stage_began = time.perf_counter()

    def fit_batch(self, batch):
        self.train_batches.append(list(batch.id))
        return super().fit_batch(batch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        synchronize(self.device)
        self.seconds[stage.name] = time.perf_counter() - self.stage_began
        super().on_stage_end(stage, stage_loss, epoch)

    def _end_of_epoch(self, epoch, valid_stats):
        pass


def load_hparams(args, paths: dict, work: Path, **overrides) -> dict:
    argv = [str(ROOT / "hparams/mtl.yaml"), f"--data_folder={args.corpus}"]
    argv += [f"--output_folder={work}", "--skip_prep=True", f"--encoder_source={args.encoder}"]
    argv += [f"--{split}_annotation={path}" for split, path in paths.items()]
    argv += [f"--num_workers={args.workers}", f"--precision={args.precision}"]
    argv += [f"--seed={args.seed}", "--number_of_epochs=100"]
    argv += [f"--{key}={value}" for key, value in overrides.items()]
    hparams_file, _, yaml_overrides = parse_arguments(argv)
    with open(hparams_file) as f:
        return load_hyperpyyaml(f, yaml_overrides)


class Recipe:
    """One recipe configuration: its Brain, datasets and loader options."""

    def __init__(self, name, args, paths, work, manifest_order_eval=False, **overrides):
        self.name, self.device = name, args.device
        folder = work / name.split()[0].strip("()")
        folder.mkdir(parents=True, exist_ok=True)
        self.hparams = load_hparams(args, paths, folder, **overrides)
        labels = LabelSet.load(args.corpus)
        self.hparams["emotion_head"].set_num_classes(len(labels.classes))
        datasets = dataio_prep(self.hparams, labels, CharVocabulary())
        self.train, self.valid = datasets["train"], datasets["valid"]
        if manifest_order_eval:  # as evaluation ran before it was sorted by duration
            self.valid = load_dataset(paths["valid"], args.corpus)
            add_pipelines(self.valid, labels, CharVocabulary(), None)
        self.brain = TimedBrain(
            modules=self.hparams["modules"],
            hparams=self.hparams,
            run_opts={"device": args.device, "noprogressbar": True},
            checkpointer=None,
            labels=labels.classes,
            vocab=CharVocabulary(),
            identity={},
        )
        self.times = {"train": [], "eval": [], "fit_start": []}
        self.peaks, self.batches, self.eval_batches = [], [], []

    def epoch(self, epoch: int, memory: PeakMemory) -> None:
        """One training epoch and one validation pass (``epoch`` chooses the batches)."""
        memory.reset()
        self.brain.fit(
            [epoch],
            self.train,
            self.valid,
            train_loader_kwargs=train_loader_options(self.hparams, self.train, self.device),
            valid_loader_kwargs=eval_loader_options(self.hparams, self.device),
        )
        self.peaks.append(memory.peak_gb())
        seconds = self.brain.seconds
        self.times["fit_start"].append(seconds["fit_start"])
        self.times["train"].append(seconds["TRAIN"])
        self.times["eval"].append(seconds["VALID"])
        self.batches.append(self.brain.train_batches)
        ids = list(self.valid.data_ids)
        size = self.hparams["eval_batch_size"]
        self.eval_batches.append([ids[i : i + size] for i in range(0, len(ids), size)])

    def forget_last(self) -> None:
        """Drops the last epoch's figures (a warm-up epoch)."""
        for values in self.times.values():
            values.pop()
        self.peaks.pop()
        self.batches.pop()
        self.eval_batches.pop()


# --------------------------------------------------------------------------- bare loop
class BareData(Dataset):
    """(waveform ``[S]``, emotion id, character ids ``[L]``) read with soundfile."""

    def __init__(self, manifest: Path, corpus: Path):
        self.records = json.loads(manifest.read_text())
        self.ids = list(self.records)
        self.index = {utt: i for i, utt in enumerate(self.ids)}
        self.corpus, self.vocab = corpus, CharVocabulary()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        record = self.records[self.ids[i]]
        path = record["wav"].replace("{data_root}", str(self.corpus))
        audio, _ = soundfile.read(path, dtype="float32")
        label = IEMOCAP_CLASSES.index(record["emo"])
        return torch.from_numpy(audio), label, self.vocab.encode(record["wrd"])


def bare_collate(items):
    wavs = torch.nn.utils.rnn.pad_sequence([w for w, _, _ in items], batch_first=True)
    rel = torch.tensor([len(w) for w, _, _ in items]) / wavs.shape[1]
    tokens = torch.nn.utils.rnn.pad_sequence([t for _, _, t in items], batch_first=True)
    token_lens = torch.tensor([len(t) for _, _, t in items])
    return wavs, rel, torch.tensor([e for _, e, _ in items]), tokens, token_lens


class BareLoop:
    """The same model, data, batches, optimiser, loss and clipping as the recipe, in plain
    PyTorch (the recipe's CTC loss is ``alpha * 2 * mean NLL``: ctc_reduction sum over the
    released code's 2 utterances per device)."""

    def __init__(self, name, args, paths, hparams):
        self.name, self.args = name, args
        torch.manual_seed(args.seed)
        self.encoder = SSLEncoder(args.encoder, **ENCODER_SETTINGS).to(args.device)
        width, layers = self.encoder.output_size, self.encoder.num_layers
        self.emotion = EmotionHead(width, n_classes=len(IEMOCAP_CLASSES), num_layers=layers)
        self.ctc = CTCHead(width, len(CharVocabulary()), num_layers=layers)
        self.modules = torch.nn.ModuleList([self.encoder, self.emotion, self.ctc]).to(args.device)
        self.params = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=hparams["lr_encoder"])
        self.alpha, self.dropout = hparams["alpha"], hparams["head_dropout"]
        self.train = BareData(paths["train"], args.corpus)
        self.valid = BareData(paths["valid"], args.corpus)
        self.times = {"train": [], "eval": []}
        self.peaks = []

    collate = staticmethod(bare_collate)

    def loader(self, data: BareData, batches: list[list[str]]) -> DataLoader:
        return DataLoader(
            data,
            batch_sampler=[[data.index[u] for u in batch] for batch in batches],
            collate_fn=self.collate,
            num_workers=self.args.workers,
            pin_memory=torch.device(self.args.device).type == "cuda",
            persistent_workers=False,
        )

    def autocast(self):
        device_type = torch.device(self.args.device).type
        return torch.autocast(device_type, torch.bfloat16, enabled=self.args.precision == "bf16")

    def forward(self, wavs, rel, training: bool):
        enc = self.encoder(wavs, rel)
        hidden = F.dropout(enc.hidden, self.dropout, training=training)
        return self.emotion(hidden, enc.lengths, enc.layers), self.ctc(hidden, enc.layers), enc

    def epoch(self, batches, eval_batches, memory: PeakMemory) -> None:
        device = self.args.device
        memory.reset()
        self.modules.train()
        synchronize(device)
        start = time.perf_counter()
        for wavs, rel, emo, tokens, token_lens in self.loader(self.train, batches):
            wavs, rel, emo = wavs.to(device, non_blocking=True), rel.to(device), emo.to(device)
            tokens, token_lens = tokens.to(device), token_lens.to(device)
            with self.autocast():
                logits, log_probs, enc = self.forward(wavs, rel, training=True)
            nll = F.ctc_loss(
                log_probs.transpose(0, 1),
                tokens,
                enc.lengths,
                token_lens,
                reduction="none",
                zero_infinity=True,
            )
            loss = F.cross_entropy(logits.float(), emo) + self.alpha * 2 * nll.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
        synchronize(device)
        self.times["train"].append(time.perf_counter() - start)

        self.modules.eval()
        start = time.perf_counter()
        with torch.no_grad():
            for wavs, rel, _, _, _ in self.loader(self.valid, eval_batches):
                with self.autocast():
                    logits, log_probs, _ = self.forward(wavs.to(device), rel.to(device), False)
                torch.softmax(logits.float(), dim=-1).cpu()
                log_probs.argmax(dim=-1).cpu()  # greedy CTC
        synchronize(device)
        self.times["eval"].append(time.perf_counter() - start)
        self.peaks.append(memory.peak_gb())

    def forget_last(self) -> None:
        """Drops the last epoch's figures (a warm-up epoch)."""
        for values in self.times.values():
            values.pop()
        self.peaks.pop()


class PlainLoop(BareLoop):
    """The reference: plain ``transformers`` calls as a user would write them. The base
    model of the same architecture (``feature_extractor._freeze_parameters()``, no time
    masking, layerdrop 0), waveforms padded and normalised by ``Wav2Vec2FeatureExtractor``
    in the loader, ``model(x, attention_mask=...)`` (``masks``; without: the padded batch
    as it is), mean pooling over the valid frames (without masks: over all frames), two
    linear heads, CE + alpha * CTC (the recipe's formula), one AdamW with the recipe's two
    learning rates, global clipping at 1. Batches and data as the other loops."""

    def __init__(self, name, args, paths, hparams, masks: bool):
        super().__init__(name, args, paths, hparams)  # data, timers (its modules are replaced)
        normalize = self.encoder.normalize_waveform
        del self.encoder
        torch.manual_seed(args.seed)
        self.masks = masks
        model, _ = build_ssl_model(args.encoder, mask_time_prob=0.0, layerdrop=0.0)
        model.feature_extractor._freeze_parameters()  # what model.freeze_feature_encoder() does
        width = model.config.hidden_size
        self.model = model
        self.emotion = torch.nn.Linear(width, len(IEMOCAP_CLASSES))
        self.ctc = torch.nn.Linear(width, len(CharVocabulary()))
        heads = torch.nn.ModuleList([self.emotion, self.ctc])
        self.modules = torch.nn.ModuleList([model, heads]).to(args.device)
        encoder_params = [p for p in model.parameters() if p.requires_grad]
        self.params = encoder_params + list(heads.parameters())
        self.optimizer = torch.optim.AdamW(
            [
                {"params": encoder_params, "lr": hparams["lr_encoder"]},
                {"params": list(heads.parameters()), "lr": hparams["lr_heads"]},
            ]
        )
        self.extractor = Wav2Vec2FeatureExtractor(
            do_normalize=normalize, return_attention_mask=True
        )

    def collate(self, items):
        """Items as `BareData`'s -> (input_values ``[B, S]``, relative lengths ``[B]``,
        emotions, tokens, token lengths), padded and normalised by the feature extractor."""
        inputs = self.extractor(
            [w.numpy() for w, _, _ in items],
            sampling_rate=SAMPLE_RATE,
            padding=True,
            return_tensors="pt",
        )
        wavs = inputs["input_values"].float()
        rel = inputs["attention_mask"].sum(-1) / wavs.shape[1]
        _, _, emo, tokens, token_lens = bare_collate(items)
        return wavs, rel, emo, tokens, token_lens

    def forward(self, wavs, rel, training: bool):
        samples = wavs.shape[1]
        if self.masks:
            lengths = torch.round(rel * samples).long()
            attention_mask = torch.arange(samples, device=wavs.device)[None] < lengths[:, None]
            hidden = self.model(wavs, attention_mask=attention_mask.long()).last_hidden_state
            frames = self.model._get_feat_extract_output_lengths(lengths).long()
        else:
            hidden = self.model(wavs).last_hidden_state
            frames = torch.full_like(rel, hidden.shape[1], dtype=torch.long)
        hidden = F.dropout(hidden, self.dropout, training=training)
        valid = torch.arange(hidden.shape[1], device=hidden.device)[None] < frames[:, None]
        pooled = (hidden * valid[..., None]).sum(1) / frames[:, None]
        log_probs = F.log_softmax(self.ctc(hidden), dim=-1)
        return self.emotion(pooled), log_probs, EncoderOutput(hidden, frames)


# ---------------------------------------------------------------------------------- run
def durations_of(paths: dict, split: str) -> dict[str, float]:
    return {u: r["duration"] for u, r in json.loads(paths[split].read_text()).items()}


def share(batches: list[list[str]], durations: dict) -> float:
    """The padding share of batches of utterance ids."""
    return padding_share(batches, durations)


def row(name, train, evaluation, padding, peak) -> str:
    rounds = " ".join(f"{t:.1f}" for t in train)
    return (
        f"  {name:<34} {min(train):8.2f} s {min(evaluation):8.2f} s {padding:8.1%}"
        f" {max(peak):8.2f} GB   (train rounds: {rounds})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="folder of the corpus")
    parser.add_argument("--utterances", type=int, default=80, help="training utterances")
    parser.add_argument("--valid", type=int, default=None, help="default: a tenth (>= 16)")
    parser.add_argument("--encoder", default="random:small", help="encoder_source")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved measurements")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first (cold start)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--seed", type=int, default=1986)
    parser.add_argument("--no-probing", action="store_true", help="skip the probing runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_valid = args.valid or max(16, args.utterances // 10)
    paths = synthesize_corpus(args.corpus, args.utterances, n_valid)
    train_durations = durations_of(paths, "train")
    values = np.array(list(train_durations.values()))
    memory = PeakMemory(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        r = Recipe("(r) recipe, padding-aware (default)", args, paths, work, **RECIPE_SETTINGS)
        p = PlainLoop("(p) transformers, attention masks", args, paths, r.hparams, masks=True)
        o = BareLoop("(o) own modules, plain loop", args, paths, r.hparams)
        r0 = Recipe(
            "(r0) recipe, padding_aware False", args, paths, work, padding_aware=False,
            **RECIPE_SETTINGS,
        )  # fmt: skip
        p0 = PlainLoop("(p0) transformers, no masks", args, paths, r0.hparams, masks=False)
        params = sum(q.numel() for q in p.modules.parameters())
        threads = f" ({torch.get_num_threads()} threads)" if args.device == "cpu" else ""
        print(
            f"corpus {args.corpus}: {len(values)} training utterances ({values.sum() / 3600:.2f} h;"
            f" mean {values.mean():.2f} s, sd {values.std():.2f} s, longest {values.max():.1f} s),"
            f" {n_valid} validation\nencoder {args.encoder} ({params / 1e6:.1f} M parameters with"
            f" both heads; feature encoder frozen, no time masking, no encoder cache), random"
            f" batches of 8, device {args.device}{threads}, {args.precision}, {args.workers}"
            f" loader workers, {args.rounds} interleaved rounds",
            flush=True,
        )
        for epoch in range(1, args.warmup + args.rounds + 1):
            # The recipe's epoch chooses the batches the loops then replay; the loops'
            # order alternates between rounds (p, o, then o, p).
            r.epoch(epoch, memory)
            replay = [(p, r), (o, r)] if epoch % 2 else [(o, r), (p, r)]
            for loop, recipe in replay:
                loop.epoch(recipe.batches[-1], recipe.eval_batches[-1], memory)
            r0.epoch(epoch, memory)
            p0.epoch(r0.batches[-1], r0.eval_batches[-1], memory)
            if epoch <= args.warmup:  # warm-up: allocator, thread pools, lazy initialisation
                for config in (r, p, o, r0, p0):
                    config.forget_last()
                print("warm-up round done (not counted)", flush=True)
            else:
                print(f"round {epoch - args.warmup}/{args.rounds} done", flush=True)

        print(f"\n  {'':<38} {'train/epoch':>10} {'eval/pass':>10} {'padding':>8} {'peak mem':>11}")
        for config, batches in ((r, r), (p, r), (o, r), (r0, r0), (p0, r0)):
            padding = share(batches.batches[0], train_durations)
            print(
                row(config.name, config.times["train"], config.times["eval"], padding, config.peaks)
            )

        def ratio(x, y, key="train"):
            return min(x.times[key]) / min(y.times[key])

        def rounds(x, y):  # the same round's epochs: interleaving cancels slow phases
            return [a / b for a, b in zip(x.times["train"], y.times["train"], strict=True)]

        def line(label, x, y):
            each = rounds(x, y)
            return (
                f"  {label:<40} {statistics.median(each):.3f}   {ratio(x, y):.3f}"
                f"   ({' '.join(f'{v:.2f}' for v in each)})\n"
            )

        print(
            "\nratios (training epoch): median of the rounds' ratios, fastest / fastest,"
            " (each round)\n"
            + line("recipe / transformers with masks   r/p", r, p)
            + line("released mode / transformers, no masks r0/p0", r0, p0)
            + line("recipe / own-modules loop          r/o", r, o)
            + line("own-modules loop / transformers    o/p", o, p)
            + f"  evaluation pass (fastest) r/p {ratio(r, p, 'eval'):.3f},"
            f" r0/p0 {ratio(r0, p0, 'eval'):.3f}",
            flush=True,
        )
        if not args.no_probing:
            probe(args, paths, work, memory)
    print(
        "\nOn a GPU (CUDA "
        + ("available here" if torch.cuda.is_available() else "not available here")
        + f"): python benchmarks/train_epoch.py --corpus {args.corpus} --device cuda"
        " --encoder random:base --utterances 400 --rounds 3 --workers 4 --no-probing"
    )


def probe(args, paths: dict, work: Path, memory: PeakMemory) -> None:
    """A frozen encoder with a weighted layer sum and the cache (SUPERB-style probing):
    epoch 1 fills the cache, later epochs train the heads on it."""
    p = Recipe(
        "probing",
        args,
        paths,
        work,
        sorting="grouped",
        freeze_encoder=True,
        emotion_layers="weighted",
        alpha=0.0,
        encoder_cache_folder=str(work / "encoder_cache"),
    )
    for epoch in range(1, args.rounds + 2):
        p.epoch(epoch, memory)
    epochs = [
        f + t + e
        for f, t, e in zip(p.times["fit_start"], p.times["train"], p.times["eval"], strict=True)
    ]
    later = statistics.median(epochs[1:])
    # Later "fit starts" only re-check the cache (a resumed run does that once).
    later_train = statistics.median(
        [t + e for t, e in zip(p.times["train"][1:], p.times["eval"][1:], strict=True)]
    )
    print(
        f"\nprobing (frozen {args.encoder}, weighted sum of all layers, encoder cache):\n"
        f"  epoch 1 (fills the cache, then trains and validates) {epochs[0]:.2f} s "
        f"(of which filling {p.times['fit_start'][0]:.2f} s); later epochs "
        f"{later_train:.2f} s (+ {later - later_train:.2f} s checking the cache when a run "
        f"starts); ratio later / first {later_train / epochs[0]:.3f}; peak memory "
        f"{max(p.peaks):.2f} GB"
    )


if __name__ == "__main__":
    main()

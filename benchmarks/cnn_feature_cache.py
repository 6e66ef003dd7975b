#!/usr/bin/env python3
"""Epoch time of the CNN recipe with and without the log-mel feature cache, on this CPU.

On the training set of LOSO fold 1 of the demo corpus (synthesised into a temporary folder
unless given), with hparams/cnn.yaml + hparams/overrides/cnn_small.yaml, it measures per
epoch:

- data: iterating the training loader (read audio or cache entry, features, crop, batch);
- train: the same plus the small CNN's forward, backward and Adam step (with time and
  frequency masking, as in training);

for features computed every time (no cache) and through the cache (epoch 1 fills it, later
epochs reuse it), each without waveform augmentation and at the recipe's default
wav_augment_prob (those samples bypass the cache by design). Machines are shared and noisy:
configurations are measured in interleaved rounds and the fastest epoch is reported next to
the median.

    python benchmarks/cnn_feature_cache.py [--corpus data/demo_corpus] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.dataloader import make_dataloader

from mtl_ser.data.demo import synthesize_demo_corpus
from mtl_ser.data.feature_cache import FeatureSource
from mtl_ser.data.pipelines import dataio_prep
from mtl_ser.data.text import CharVocabulary
from mtl_ser.experiment import label_set_of, parse_arguments, prepare_data

ROOT = Path(__file__).resolve().parents[1]


def load_hparams(corpus: Path, work: Path) -> dict:
    argv = [
        str(ROOT / "hparams/cnn.yaml"),
        str(ROOT / "hparams/overrides/cnn_small.yaml"),
        f"--data_folder={corpus}",
        f"--output_folder={work / 'run'}",
    ]
    base, _, overrides = parse_arguments(argv)
    with open(base) as f:
        return load_hyperpyyaml(f, overrides)


class Config:
    """One way of getting features: a FeatureSource and the training set reading it."""

    def __init__(self, name, hparams, label_set, cache_folder, wav_augment_prob):
        self.name = name
        self.source = FeatureSource(
            hparams["front_end"], cache_folder, hparams["wav_augment"], wav_augment_prob
        )
        datasets = dataio_prep({**hparams, "features": self.source}, label_set, CharVocabulary())
        self.train = datasets["train"]
        self.batch_size = hparams["batch_size"]
        self.data_times, self.train_times = [], []

    def loader(self):
        return make_dataloader(self.train, batch_size=self.batch_size, shuffle=True)


def data_epoch(config: Config) -> float:
    """One pass over the training loader, as the recipe makes it with ``num_workers: 0``."""
    start = time.perf_counter()
    for _ in config.loader():
        pass
    return time.perf_counter() - start


def train_epoch(config: Config, hparams: dict, n_classes: int) -> float:
    """One epoch of the recipe's model, loss and optimiser on this configuration's data (a
    fresh model each time: only the time matters here)."""
    torch.manual_seed(0)
    encoder = type(hparams["encoder"])(**hparams["encoder"].export_kwargs())
    head = type(hparams["emotion_head"])(encoder.output_size, dropout=0.5, n_classes=n_classes)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=hparams["lr_encoder"])
    augment = hparams["batch_augment"]
    start = time.perf_counter()
    for batch in config.loader():
        feats, lens = augment(*batch.feats)
        out, frames, _ = encoder(feats, lens)
        logits = head(out, frames)
        loss = torch.nn.functional.cross_entropy(logits, batch.emo_encoded.data.squeeze(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def describe(times: list[float], first_separately: bool) -> str:
    if first_separately:
        rest = times[1:]
        return (
            f"epoch 1 {times[0]:6.2f} s (fills the cache), later epochs "
            f"min {min(rest):6.2f} s / median {statistics.median(rest):6.2f} s"
        )
    return f"min {min(times):6.2f} s / median {statistics.median(times):6.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=None, help="existing demo corpus folder")
    parser.add_argument("--rounds", type=int, default=3, help="epochs per configuration")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (epoch 1 fills the cache)")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = Path(args.corpus) if args.corpus else work / "demo_corpus"
        if args.corpus is None:
            synthesize_demo_corpus(corpus, progress=False)
        hparams = load_hparams(corpus, work)
        prepare_data(hparams)
        label_set = label_set_of(hparams)
        prob = hparams["wav_augment_prob"]

        def configs(folder: Path) -> list[Config]:
            """The four configurations, caches (empty) under ``folder``."""
            return [
                Config("no cache", hparams, label_set, None, 0.0),
                Config("cache", hparams, label_set, folder / "cache", 0.0),
                Config(f"no cache, augment {prob}", hparams, label_set, None, prob),
                Config(f"cache, augment {prob}", hparams, label_set, folder / "cache_aug", prob),
            ]

        data_configs, train_configs = configs(work / "data"), configs(work / "train")
        train_set = data_configs[0].train
        print(
            f"training set: {len(train_set)} utterances, "
            f"{sum(r['duration'] for r in train_set.data.values()) / 60:.1f} min of audio; "
            f"torch threads: {torch.get_num_threads()}; {args.rounds} epochs per configuration"
        )
        for _ in range(args.rounds):  # interleaved rounds
            for config in data_configs:
                config.data_times.append(data_epoch(config))
        for _ in range(args.rounds):
            for config in train_configs:
                config.train_times.append(train_epoch(config, hparams, len(label_set.classes)))

        for kind in ("data", "train"):
            print(f"\n{kind} epoch ({'loader only' if kind == 'data' else 'loader + small CNN'}):")
            for config in data_configs if kind == "data" else train_configs:
                times = config.data_times if kind == "data" else config.train_times
                cached = config.source.cache is not None
                print(f"  {config.name:<22} {describe(times, cached)}")
        for config in data_configs:
            cache = config.source.cache
            if cache is not None:
                entries = list(cache.folder.rglob("*.feat"))
                size = sum(p.stat().st_size for p in entries) / 2**20
                print(
                    f"\ndata epochs, {config.name}: {cache.computed} computed, "
                    f"{cache.reused} reused, {cache.rebuilt} rebuilt, "
                    f"{config.source.augmented} from augmented waveforms; "
                    f"{len(entries)} entries, {size:.1f} MiB"
                )


if __name__ == "__main__":
    main()

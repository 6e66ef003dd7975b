#!/usr/bin/env python3
"""Real-time factor of `predict` on the demo corpus, on this machine's CPU.

RTF = processing seconds / audio seconds (lower is faster; 0.1 = ten times faster than real
time). Measured for the tiny encoder and for a wav2vec2-base-sized encoder (random weights:
the cost does not depend on the weights), one file at a time and batched. Machines are
shared and noisy: the configurations are measured in interleaved rounds and the fastest
round of each is reported.

    python benchmarks/predict_rtf.py [--demo-corpus data/demo_corpus] [--files 40] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mtl_ser.data.demo import synthesize_demo_corpus
from mtl_ser.data.text import CharVocabulary
from mtl_ser.export import LoadedModel
from mtl_ser.inference import EmotionRecognizer
from mtl_ser.models.heads import CTCHead, EmotionHead
from mtl_ser.models.ssl import SSLEncoder

LABELS = ("neu", "hap", "ang", "sad")


def recognizer(preset: str) -> EmotionRecognizer:
    """A random-weight multi-task model with the given encoder preset."""
    torch.manual_seed(0)
    encoder = SSLEncoder(f"random:{preset}")
    vocab = CharVocabulary()
    modules = {
        "encoder": encoder,
        "emotion_head": EmotionHead(encoder.output_size, n_classes=len(LABELS)),
        "ctc_head": CTCHead(encoder.output_size, len(vocab)),
    }
    return EmotionRecognizer(LoadedModel(modules, LABELS, vocab, 16000, {}))


def measure(model, files: list[Path], batch_size: int) -> tuple[float, float]:
    """Returns (audio seconds, processing seconds) for scoring ``files`` with ``model``
    (an `EmotionRecognizer` or an `mtl_ser.onnx_predictor.OnnxRecognizer`; batch size 1:
    one file per call)."""
    model.predict_batch(files[:2], batch_size=batch_size)  # warm-up (allocator, kernels)
    start = time.perf_counter()
    if batch_size == 1:
        predictions = [model.predict_batch([f], batch_size=1)[0] for f in files]
    else:
        predictions = model.predict_batch(files, batch_size=batch_size)
    elapsed = time.perf_counter() - start
    return sum(p.duration for p in predictions), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-corpus", default=None, help="existing demo corpus folder")
    parser.add_argument("--files", type=int, default=40, help="files per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = Path(args.demo_corpus or tempfile.mkdtemp(prefix="demo_corpus_"))
    synthesize_demo_corpus(corpus, progress=False)  # skips when already there
    files = sorted(corpus.glob("Session*/sentences/wav/*/*.wav"))[: args.files]
    print(f"{len(files)} demo files, torch {torch.__version__}, {torch.get_num_threads()} threads")
    models = {preset: recognizer(preset) for preset in ("tiny", "base")}
    configs = [(preset, b) for preset in models for b in (1, args.batch_size)]
    best = {}
    for _ in range(args.rounds):
        for preset, batch_size in configs:
            audio, wall = measure(models[preset], files, batch_size)
            best[preset, batch_size] = (
                audio,
                min(wall, best.get((preset, batch_size), (0, 1e9))[1]),
            )
    print(
        f"{'encoder':<8} {'batch':>5} {'audio s':>8} {'wall s':>8} {'RTF':>7} {'x real time':>12}"
    )
    for (preset, batch_size), (audio, wall) in best.items():
        print(
            f"{preset:<8} {batch_size:>5} {audio:>8.1f} {wall:>8.2f} {wall / audio:>7.4f} "
            f"{audio / wall:>12.1f}"
        )


if __name__ == "__main__":
    main()

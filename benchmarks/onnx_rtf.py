#!/usr/bin/env python3
"""Real-time factor of `predict` with PyTorch vs ONNX Runtime, on this machine's CPU.

RTF = processing seconds / audio seconds (lower is faster). Both runtimes get the same
number of threads (default 2) and score the same demo files, batched, with a tiny and a
wav2vec2-base-sized encoder (random weights: the cost does not depend on the weights) plus
both heads. Each ONNX model is exported with `mtl_ser.export_onnx.write_onnx_folder`, which
checks its probabilities against PyTorch's. Machines are shared and noisy: configurations are
measured in interleaved rounds and the fastest round of each is reported.

    python benchmarks/onnx_rtf.py [--demo-corpus data/demo_corpus] [--files 24] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from predict_rtf import measure, recognizer

from mtl_ser.data.demo import synthesize_demo_corpus
from mtl_ser.export_onnx import write_onnx_folder
from mtl_ser.onnx_predictor import OnnxRecognizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-corpus", default=None, help="existing demo corpus folder")
    parser.add_argument("--files", type=int, default=24, help="files per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of both runtimes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--presets", default="tiny,base", help="random encoder presets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = Path(args.demo_corpus or tempfile.mkdtemp(prefix="demo_corpus_"))
    synthesize_demo_corpus(corpus, progress=False)  # skips when already there
    files = sorted(corpus.glob("Session*/sentences/wav/*/*.wav"))[: args.files]
    print(f"{len(files)} demo files, torch {torch.__version__}, {args.threads} threads each")
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            torch_model = recognizer(preset)
            folder = write_onnx_folder(torch_model.model, Path(tmp) / preset)
            models[preset, "pytorch"] = torch_model
            models[preset, "onnxruntime"] = OnnxRecognizer(folder, threads=args.threads)
        best = {}
        for _ in range(args.rounds):
            for key, model in models.items():
                audio, wall = measure(model, files, args.batch_size)
                best[key] = (audio, min(wall, best.get(key, (0, 1e9))[1]))
    print(f"{'encoder':8} {'runtime':12} {'RTF':>8} {'x real time':>12}")
    for (preset, runtime), (audio, wall) in best.items():
        print(f"{preset:8} {runtime:12} {wall / audio:8.4f} {audio / wall:12.1f}")
    for preset in args.presets.split(","):
        ratio = best[preset, "pytorch"][1] / best[preset, "onnxruntime"][1]
        print(f"{preset}: ONNX Runtime is {ratio:.2f}x PyTorch's speed")


if __name__ == "__main__":
    main()

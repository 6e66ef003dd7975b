#!/usr/bin/env python3
"""Training step time and peak memory for ``finetuning: full`` vs ``lora`` vs ``frozen``.

Each mode runs in its own process (so peak memories do not mix): the encoder built by the
recipes' factory (`mtl_ser.models.encoders.build_encoder`) with an emotion head (mean
pooling, linear) and AdamW over the trained parameters, on batches of ``--batch-size``
utterances of ``--seconds`` seconds (IEMOCAP's mean is 4.56 s). It prints per mode the
trained parameters, the median step time (forward, backward, optimiser step) over
``--steps`` steps after one warm-up step, and the peak memory (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the process's peak resident memory above what it
held before the first step).

    # CPU, about a minute on 2 cores (random:small: a wav2vec2-shaped 3.7 M-parameter model)
    python benchmarks/finetuning.py
    # GPU (prints this line too)
    python benchmarks/finetuning.py --encoder facebook/wav2vec2-base --device cuda --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_epoch import PeakMemory, timed  # noqa: E402

MODES = ("full", "lora", "frozen")
GPU_COMMAND = (
    "python benchmarks/finetuning.py --encoder facebook/wav2vec2-base --device cuda --batch-size 8"
)


def measure(args) -> dict:
    """One mode's figures (this process)."""
    from mtl_ser.models.encoders import build_encoder
    from mtl_ser.models.heads import EmotionHead
    from mtl_ser.models.peft_tuning import parameter_counts

    torch.manual_seed(0)
    encoder = build_encoder(args.encoder, finetuning=args.mode).to(args.device)
    head = EmotionHead(encoder.output_size, n_classes=4).to(args.device)
    counts = parameter_counts({"encoder": encoder, "emotion_head": head})
    params = [p for m in (encoder, head) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    wavs = 0.1 * torch.randn(args.batch_size, int(args.seconds * 16000), device=args.device)
    lens = torch.ones(args.batch_size, device=args.device)
    labels = torch.randint(0, 4, (args.batch_size,), device=args.device)
    memory = PeakMemory(args.device)
    memory.reset()
    before = memory.peak_gb()
    encoder.train()

    def step():
        out = encoder(wavs, lens)
        loss = torch.nn.functional.cross_entropy(head(out.hidden, out.lengths), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = [timed(step, args.device) for _ in range(args.steps + 1)]
    peak = memory.peak_gb() - (0 if args.device.startswith("cuda") else before)
    return {**counts, "step_s": statistics.median(times[1:]), "peak_gb": peak}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="random:small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args(argv)
    if args.mode is not None:
        print(json.dumps(measure(args)))
        return
    print(
        f"{args.encoder} on {args.device}: batches of {args.batch_size} x {args.seconds} s, "
        f"median of {args.steps} steps"
    )
    figures = {}
    for mode in MODES:
        child = [sys.executable, __file__, *(argv or sys.argv[1:]), "--mode", mode]
        done = subprocess.run(child, capture_output=True, text=True, check=True)
        figures[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        f = figures[mode]
        share = f["trained_encoder_parameters"] / f["encoder_parameters"]
        print(
            f"  {mode:6s}: {f['trained_parameters']:>10,} trained parameters (encoder "
            f"{100 * share:5.2f}%), step {f['step_s']:.3f} s, peak memory {f['peak_gb']:.3f} GB"
        )
    full = figures["full"]
    for mode in ("lora", "frozen"):
        print(
            f"  {mode} / full: step time {figures[mode]['step_s'] / full['step_s']:.2f}, "
            f"peak memory {figures[mode]['peak_gb'] / max(full['peak_gb'], 1e-9):.2f}"
        )
    if args.device == "cpu":
        print(f"GPU: {GPU_COMMAND}")


if __name__ == "__main__":
    main()

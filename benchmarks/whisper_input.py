#!/usr/bin/env python3
"""Whisper encoder time per second of audio: ``whisper_input: padded_30s`` vs ``true_length``.

Utterances with IEMOCAP's duration distribution (log-normal, mean 4.56 s, sd 3.2 s, clipped
to [0.6, 30] s: `benchmarks/train_epoch.iemocap_like_durations`, cut at Whisper's 30 s
window) are encoded in batches of ``--batch-size`` utterances of similar duration (as the
recipes' grouped batches), in eval mode without gradients, and in training mode (forward and
backward). It prints, per mode, seconds of encoder time per second of audio (the fastest of
``--rounds`` rounds) and the ratio true_length / padded_30s (target: <= 0.2).

    # CPU, several minutes on 2 cores: the base architecture, random weights
    python benchmarks/whisper_input.py
    # GPU (prints this line too): a real checkpoint
    python benchmarks/whisper_input.py --encoder openai/whisper-large-v3 --device cuda \\
        --utterances 256 --batch-size 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_epoch import iemocap_like_durations, timed  # noqa: E402

from mtl_ser.models.encoders import build_encoder  # noqa: E402

GPU_COMMAND = (
    "python benchmarks/whisper_input.py --encoder openai/whisper-large-v3 --device cuda "
    "--utterances 256 --batch-size 16"
)


def batches(durations: np.ndarray, batch_size: int, seed: int):
    """Waveform batches (``[B, S]``, relative lengths ``[B]``) of similar durations."""
    gen = torch.Generator().manual_seed(seed)
    order = np.argsort(durations)
    for start in range(0, len(order), batch_size):
        chosen = durations[order[start : start + batch_size]]
        samples = [int(d * 16000) for d in chosen]
        wavs = torch.zeros(len(samples), max(samples))
        for i, n in enumerate(samples):
            wavs[i, :n] = 0.1 * torch.randn(n, generator=gen)
        yield wavs, torch.tensor(samples) / max(samples)


def time_mode(encoder, data, device, train: bool) -> float:
    """Seconds to encode every batch of ``data`` (with backward when ``train``)."""
    encoder.train(train)

    def encode_all():
        for wavs, lens in data:
            wavs, lens = wavs.to(device), lens.to(device)
            if train:
                out = encoder(wavs, lens)
                out.hidden.float().pow(2).mean().backward()
            else:
                with torch.no_grad():
                    encoder(wavs, lens)

    return timed(encode_all, device)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="random:whisper-base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--utterances", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-train", action="store_true", help="time inference only")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    durations = np.minimum(iemocap_like_durations(args.utterances, np.random.default_rng(0)), 30.0)
    data = list(batches(durations, args.batch_size, seed=0))
    audio = float(durations.sum())
    print(
        f"{args.encoder} on {args.device}: {args.utterances} utterances, {audio:.0f} s of audio "
        f"(mean {durations.mean():.2f} s, max {durations.max():.1f} s), batches of "
        f"{args.batch_size}, fastest of {args.rounds} rounds"
    )
    encoders = {
        mode: build_encoder(args.encoder, encoder_type="whisper", whisper_input=mode).to(
            args.device
        )
        for mode in ("padded_30s", "true_length")
    }
    # One set of weights for both modes.
    encoders["true_length"].load_state_dict(encoders["padded_30s"].state_dict())
    stages = [("inference", False)] + [("training", True)] * (not args.no_train)
    for stage, train in stages:
        per_second = {}
        for mode, encoder in encoders.items():
            times = [time_mode(encoder, data, args.device, train) for _ in range(args.rounds)]
            per_second[mode] = min(times) / audio
            print(f"  {stage:9s} {mode:11s}: {1000 * per_second[mode]:8.2f} ms per audio second")
        ratio = per_second["true_length"] / per_second["padded_30s"]
        print(f"  {stage:9s} true_length / padded_30s = {ratio:.3f} (target <= 0.2)")
    if args.device == "cpu":
        print(f"GPU: {GPU_COMMAND}")


if __name__ == "__main__":
    main()

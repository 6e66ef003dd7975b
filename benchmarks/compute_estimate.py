#!/usr/bin/env python3
"""Compute needed to reproduce Cai et al. (2021) Table 4: measured FLOPs, scaled up.

    .venv/bin/python benchmarks/compute_estimate.py [--hours 7.0] [--epochs 100] [--alphas 4]

1. Counts the FLOPs of one training step (forward + backward of wav2vec2-base, emotion head,
   CTC head and L_emo + 0.1 L_ctc) and of one evaluation forward pass, with
   torch.utils.flop_counter.FlopCounterMode, for single utterances of several durations
   (a randomly initialised base model, ``random:base``: same architecture and FLOPs as
   facebook/wav2vec2-base, no download). FLOPs = 2 x multiply-accumulates of matmuls and
   convolutions (elementwise operations are not counted; they are a few % here).
2. Fits FLOPs(d) = a d + b d^2 (attention is quadratic in length) and averages it over an
   assumed IEMOCAP duration distribution (log-normal, mean 4.56 s = 7 h / 5531 utterances,
   sd 3.2 s), alone and padded in batches of 8: length-grouped (``sorting: grouped``, the
   recipes' default, mtl_ser/data/sampler.py) or random (``--sorting random``, the default
   before); evaluation batches in duration order, as the recipes run them.
3. Multiplies by the audio each fold trains and evaluates on, epochs, folds and alphas, and
   converts to GPU hours for a stated fraction of a stated peak.

Prints every figure; the numbers are estimates for planning, not measurements of a run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from mtl_ser.data.sampler import LengthGroupedBatchSampler
from mtl_ser.models.heads import CTCHead, EmotionHead
from mtl_ser.models.objective import MultiTaskObjective
from mtl_ser.models.ssl import SSLEncoder

SAMPLE_RATE = 16000
DURATIONS = (2.0, 4.5, 8.0, 16.0)
# Dense peak throughput (NVIDIA data sheets, SXM parts). SpeechBrain turns TF32 on for fp32
# matmuls and convolutions (its `allow_tf32` quirk), so fp32 runs reach the TF32 peak.
GPUS = {
    "H100 SXM, TF32 (fp32 recipe)": 495e12,
    "H100 SXM, BF16 (--precision=bf16)": 989e12,
    "A100 SXM, TF32 (fp32 recipe)": 156e12,
}
# Fraction of peak a fine-tuning run sustains: small batches (8 utterances, ~1,800 frames),
# variable shapes, a waveform CNN front end, data loading and per-epoch validation keep it
# well below the peak. A range rather than a number.
UTILISATION = (0.10, 0.35)
# Per fold: (train, valid, test) fractions of the corpus. loso: one of 5 sessions tests, 10%
# of the rest validates; 10-fold protocols: a tenth tests, 10% of the rest validates.
PROTOCOLS = {"loso": (5, (0.72, 0.08, 0.20)), "cai2021": (10, (0.81, 0.09, 0.10))}


def build(n_classes: int = 4, n_tokens: int = 29):
    encoder = SSLEncoder("random:base")
    # The fused SDPA kernel of the CPU inference path is invisible to FlopCounterMode; eager
    # attention does the same arithmetic in countable matmuls.
    encoder.model.config._attn_implementation = "eager"
    emotion = EmotionHead(encoder.output_size)
    emotion.set_num_classes(n_classes)
    ctc = CTCHead(encoder.output_size, n_tokens)
    return encoder, emotion, ctc


def step_flops(modules, seconds: float, train: bool) -> tuple[int, float]:
    """FLOPs of one training step (train=True) or evaluation forward pass on one utterance
    of ``seconds``, and the CPU seconds of a second, uncounted pass (the counter slows
    execution down)."""
    encoder, emotion, ctc = modules
    objective = MultiTaskObjective(0.1)
    wav = torch.randn(1, int(seconds * SAMPLE_RATE))
    rel = torch.ones(1)
    n_chars = max(1, int(seconds * 12))  # ~12 characters per second of speech
    tokens = torch.randint(1, 29, (1, n_chars))

    def step():
        for m in modules:
            m.train(train)
            m.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(train):
            hidden, frames, _ = encoder(wav, rel)
            logits = emotion(hidden, frames)
            log_probs = ctc(hidden)
            if train:
                losses = objective(
                    logits,
                    torch.zeros(1, dtype=torch.long),
                    log_probs,
                    frames,
                    tokens,
                    torch.tensor([n_chars]),
                    torch.ones(1, dtype=torch.bool),
                )
                losses.total.backward()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    start = time.perf_counter()
    step()
    return counter.get_total_flops(), time.perf_counter() - start


def duration_sample(n: int, mean: float, sd: float, rng) -> np.ndarray:
    """Log-normal durations (s) with the given mean and sd, clipped to IEMOCAP's 0.6-35 s."""
    sigma2 = np.log(1 + (sd / mean) ** 2)
    return np.clip(rng.lognormal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2), n), 0.6, 35.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=7.0, help="IEMOCAP 4-class audio")
    parser.add_argument("--utterances", type=int, default=5531)
    parser.add_argument("--sd", type=float, default=3.2, help="sd of utterance durations (s)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--alphas", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sorting", choices=["grouped", "random"], default="grouped")
    parser.add_argument("--group-pool", type=int, default=100, help="batches per pool")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    modules = build()
    params = sum(p.numel() for m in modules for p in m.parameters())
    print(f"model: wav2vec2-base architecture + heads, {params / 1e6:.1f} M parameters")

    print("\nper utterance     train step (fwd+bwd)        eval (fwd)       CPU s (train step)")
    train, evals, cpu_seconds = [], [], []
    step_flops(modules, 1.0, train=True)  # warm-up: first calls allocate and initialise
    for seconds in DURATIONS:
        f_train, t_train = step_flops(modules, seconds, train=True)
        cpu_seconds.append(t_train)
        f_eval, _ = step_flops(modules, seconds, train=False)
        train.append(f_train)
        evals.append(f_eval)
        print(
            f"  {seconds:5.1f} s   {f_train / 1e9:8.1f} GFLOP ({f_train / seconds / 1e9:5.1f}/s)"
            f"   {f_eval / 1e9:7.1f} GFLOP ({f_eval / seconds / 1e9:5.1f}/s)   {t_train:6.2f}"
        )
    d = np.array(DURATIONS)
    design = np.stack([d, d**2], axis=1)
    fit_train = np.linalg.lstsq(design, np.array(train, float), rcond=None)[0]
    fit_eval = np.linalg.lstsq(design, np.array(evals, float), rcond=None)[0]
    print(
        f"fit (GFLOP, d in s): train {fit_train[0] / 1e9:.2f} d + {fit_train[1] / 1e9:.3f} d^2;"
        f"  eval {fit_eval[0] / 1e9:.2f} d + {fit_eval[1] / 1e9:.3f} d^2"
    )

    cpu_rate = sum(train) / sum(cpu_seconds)
    print(
        f"this CPU ({torch.get_num_threads()} threads, fp32): "
        f"{cpu_rate / 1e9:.0f} GFLOP/s in training steps"
    )

    total_s = args.hours * 3600
    mean = total_s / args.utterances
    rng = np.random.default_rng(0)
    durations = duration_sample(200_000, mean, args.sd, rng)
    durations *= mean / durations.mean()  # keep the stated total exactly

    def cost(fit, ds):
        return fit[0] * ds + fit[1] * ds**2

    per_audio_s = cost(fit_train, durations).sum() / durations.sum()
    per_audio_s_eval = cost(fit_eval, durations).sum() / durations.sum()

    def padding_of(batches) -> float:
        """Padded / true FLOPs of training steps over these batches of durations."""
        padded = sum(len(b) * cost(fit_train, b.max()) for b in batches)
        return padded / cost(fit_train, durations).sum()

    size = args.batch_size
    random_batches = np.array_split(durations, np.arange(size, len(durations), size))
    sampler = LengthGroupedBatchSampler(durations, size, pool=args.group_pool, seed=0)
    grouped_batches = [durations[b] for b in sampler.batches()]
    by_length = np.sort(durations)[::-1]
    eval_batches = np.array_split(by_length, np.arange(size, len(by_length), size))
    factors = {"random": padding_of(random_batches), "grouped": padding_of(grouped_batches)}
    padding = factors[args.sorting]
    eval_padding = (
        sum(len(b) * cost(fit_eval, b.max()) for b in eval_batches)
        / cost(fit_eval, durations).sum()
    )
    print(
        f"\ncorpus: {args.hours} h in {args.utterances} utterances (mean {mean:.2f} s, assumed "
        f"log-normal sd {args.sd} s)\nper second of audio: train {per_audio_s / 1e9:.1f} GFLOP, "
        f"eval {per_audio_s_eval / 1e9:.1f} GFLOP\npadding in batches of {size}: training "
        f"x{factors['random']:.2f} random, x{factors['grouped']:.3f} grouped (pools of "
        f"{args.group_pool} batches); evaluation in duration order x{eval_padding:.3f}; "
        f"below: {args.sorting}"
    )

    print(
        f"\nTable 4 sweep: {args.alphas} alphas x folds x {args.epochs} epochs "
        "(each epoch: train + validation pass; then one test pass)"
    )
    for protocol, (folds, (f_train, f_valid, f_test)) in PROTOCOLS.items():
        train_part = args.epochs * f_train * per_audio_s * total_s
        eval_part = (args.epochs * f_valid + f_test) * per_audio_s_eval * total_s
        per_fold = train_part + eval_part
        padded_fold = train_part * padding + eval_part * eval_padding
        flops = padded_fold * folds * args.alphas
        for label, run in (("unpadded", per_fold), ("padded", padded_fold)):
            print(
                f"  {protocol:8s} {folds:2d} folds, {label:8s}: {run:.2e} FLOP/run, "
                f"{run * folds * args.alphas:.2e} FLOP in all"
            )
        for gpu, peak in GPUS.items():
            low, high = (flops / (peak * u) / 3600 for u in reversed(UTILISATION))
            print(
                f"      {gpu:34s} at {UTILISATION[0]:.0%}-{UTILISATION[1]:.0%} of peak: "
                f"{low:6.1f} - {high:6.1f} GPU h ({low / folds / args.alphas:.2f} - "
                f"{high / folds / args.alphas:.2f} h per run)"
            )
        days = flops / cpu_rate / 86400
        print(f"      this CPU at its measured rate: {days:,.0f} days")


if __name__ == "__main__":
    main()

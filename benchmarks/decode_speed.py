#!/usr/bin/env python3
"""Decoding speed of the CTC decoders (mtl_ser/decoding.py), on this machine's CPU.

On the test utterances of LOSO fold 1 of the demo corpus (synthesised into a temporary
folder unless given), the CTC log-probabilities of a model are computed once; then greedy
decoding, beam search, and beam search with a character 6-gram LM and with a word 3-gram
LM (built with `mtl-ser lm build` from the fold's training transcripts) decode them, and the
utterances per second of the decoding alone are printed. The model is a random-weight tiny
one unless ``--model`` names a run or export folder: a random head's posteriors are flat,
the hardest case for beam search (a trained head's are peaked, and beam search prunes
more). Machines are shared and noisy: each decoder runs ``--rounds`` times and the fastest
round is reported.

    python benchmarks/decode_speed.py [--corpus data/demo_corpus] [--model RUN] [--beam 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from predict_rtf import recognizer

from mtl_ser.data.demo import synthesize_demo_corpus
from mtl_ser.data.manifest import load_manifest
from mtl_ser.data.prepare import prepare_iemocap
from mtl_ser.decoding import CTCDecoder, DecoderConfig
from mtl_ser.inference import EmotionRecognizer, load_model
from mtl_ser.ngram import build_lm


@torch.no_grad()
def ctc_outputs(model: EmotionRecognizer, wavs: list[str], batch_size: int) -> list[tuple]:
    """(log-probabilities ``[B, T, V]``, frame counts ``[B]``) per batch of utterances."""
    segments = [model._load(w, None, w)[1] for w in wavs]
    out = []
    for _, enc in model._encoded_batches(segments, batch_size, False, "encoding"):
        out.append((model.modules["ctc_head"](enc.hidden, enc.layers), enc.lengths))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=None, help="demo corpus folder (default: synthesise)")
    parser.add_argument("--model", default=None, help="run or export folder (default: random)")
    parser.add_argument("--beam", type=int, default=50, help="beam width")
    parser.add_argument("--lm-weight", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = Path(args.corpus) if args.corpus else work / "corpus"
        if args.corpus is None:
            synthesize_demo_corpus(corpus, progress=False)
        paths = prepare_iemocap(corpus, work / "manifests", verbose=False)
        build_lm(paths["train"], work / "lm.arpa", order=6, unit="char", progress=False)
        build_lm(paths["train"], work / "word.arpa", order=3, unit="word", progress=False)
        model = load_model(args.model) if args.model else recognizer("tiny")
        records = load_manifest(paths["test"], corpus)
        batches = ctc_outputs(model, [r["wav"] for r in records.values()], args.batch_size)
        n = sum(len(lengths) for _, lengths in batches)
        frames = sum(int(lengths.sum()) for _, lengths in batches)
        vocab = model.model.vocab
        decoders = {
            "greedy": DecoderConfig(),
            f"beam {args.beam}": DecoderConfig("beam", args.beam),
            f"beam {args.beam} + char 6-gram LM": DecoderConfig(
                "beam", args.beam, str(work / "lm.arpa"), args.lm_weight
            ),
            f"beam {args.beam} + word 3-gram LM": DecoderConfig(
                "beam", args.beam, str(work / "word.arpa"), args.lm_weight
            ),
        }
        print(
            f"{n} test utterances ({frames / n:.0f} frames on average), "
            f"{'random tiny model' if args.model is None else args.model}, "
            f"{torch.get_num_threads()} threads"
        )
        print(f"{'decoder':<34} {'utt/s':>10} {'ms/utt':>8}")
        for name, config in decoders.items():
            decoder = CTCDecoder(config, vocab)
            best = float("inf")
            for _ in range(args.rounds):
                start = time.perf_counter()
                for log_probs, lengths in batches:
                    decoder(log_probs, lengths)
                best = min(best, time.perf_counter() - start)
            print(f"{name:<34} {n / best:>10.1f} {1000 * best / n:>8.2f}")


if __name__ == "__main__":
    main()

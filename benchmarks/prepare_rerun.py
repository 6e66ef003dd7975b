#!/usr/bin/env python3
"""What keying a prepared folder on its inputs costs: first preparation, an unchanged re-run
(digests answered from the cache: one stat per file), and a re-run without the cache (every
file read and digested again), on a synthetic CSV corpus of 16 kHz mono wavs.

IEMOCAP has 10,039 wavs (5,531 in the four classes, about 7 h, 0.8 GB); pass ``--files`` and
``--seconds`` near that to measure at its size, or read the MB/s figures and scale.

    python benchmarks/prepare_rerun.py [--files 1000] [--seconds 4.5] [--folder /tmp/x]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

from mtl_ser.data.csv_corpus import prepare_csv
from mtl_ser.data.fingerprint import DIGEST_CACHE_FILE

LABELS = ("neu", "hap", "ang", "sad")


def build(root: Path, files: int, seconds: float) -> Path:
    """Writes ``files`` wavs of ``seconds`` s noise (20 speakers) and their CSV."""
    rng = np.random.default_rng(0)
    lines = ["path,emotion,transcript,speaker"]
    for i in range(files):
        path = root / f"spk{i % 20}/utt{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (0.01 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        soundfile.write(str(path), data, 16000, subtype="PCM_16")
        lines.append(f"spk{i % 20}/utt{i}.wav,{LABELS[i % 4]},hello there {i},spk{i % 20}")
    (root / "corpus.csv").write_text("\n".join(lines) + "\n")
    return root / "corpus.csv"


def timed(label: str, fn, megabytes: float) -> None:
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    print(f"{label:<44} {took:7.2f} s  ({megabytes / took:8.1f} MB/s of audio)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=4.5)
    parser.add_argument("--folder", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        root, out = Path(tmp) / "audio", Path(tmp) / "prep"
        csv_path = build(root, args.files, args.seconds)
        megabytes = sum(p.stat().st_size for p in root.rglob("*.wav")) / 1e6
        print(f"{args.files} wavs of {args.seconds} s, {megabytes:.0f} MB")

        def prepare():
            prepare_csv(csv_path, root, out, verbose=False)

        timed("first preparation (every file digested)", prepare, megabytes)
        timed("unchanged re-run (digest cache)", prepare, megabytes)
        (out / DIGEST_CACHE_FILE).unlink()
        timed("unchanged re-run without the cache", prepare, megabytes)


if __name__ == "__main__":
    main()

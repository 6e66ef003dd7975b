"""Progress of long loops: a bar on a terminal, one summary line in logs.

A tqdm bar written into a log file (a batch job, a sweep's run log, CI) becomes one line per
update: thousands of lines for a corpus. So a bar is drawn only when the stream is a terminal
(`is_terminal`; the training Brain asks it too, and writes one line per epoch into logs);
otherwise nothing is written while the loop runs and one line follows it::

    converting to 16 kHz mono: 1440 files in 12.3 s

Usage::

    for path in track(paths, "reading wav headers", unit="file"):
        ...
    with Progress("synthesizing", total=300, unit="utt") as bar:
        bar.update()
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Progress:
    """Counts work done; a tqdm bar on a terminal, else one summary line at the end.

    Args:
        desc: what is being done (the bar's label and the summary's start).
        total: expected count (None when unknown).
        unit: the thing counted, singular ("file"); the summary adds "s" when needed.
        enabled: False writes nothing at all (quiet library calls).
        stream: where to write (default: sys.stderr, looked up when the object is made).
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        unit: str = "item",
        enabled: bool = True,
        stream: TextIO | None = None,
    ):
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self._start = time.monotonic()
        self._bar = None
        if enabled and is_terminal(self.stream):
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        """Closes the bar, or writes the summary line (once)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled:
            elapsed = time.monotonic() - self._start
            plural = "" if self.count == 1 else "s"
            print(
                f"{self.desc}: {self.count} {self.unit}{plural} in {elapsed:.1f} s",
                file=self.stream,
                flush=True,
            )
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(
    iterable: Iterable[T],
    desc: str,
    unit: str = "item",
    enabled: bool = True,
    total: int | None = None,
    stream: TextIO | None = None,
) -> Iterator[T]:
    """Yields the items of ``iterable`` while showing progress (see `Progress`).

    ``total`` defaults to ``len(iterable)`` when it has one.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(desc, total=total, unit=unit, enabled=enabled, stream=stream) as progress:
        for item in iterable:
            yield item
            progress.update()


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an open terminal (where progress bars belong)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or fake streams
        return False

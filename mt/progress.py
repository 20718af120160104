"""Progress of a long stage of work (reading a corpus, training SentencePiece, encoding): a tqdm
bar with rate and time left on a terminal; plain log lines, every half minute and at the end,
when stderr is a file or a pipe (a log should not fill with carriage returns).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Optional

from tqdm import tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0


class Progress:
    """Counts `unit`s done out of `total` (which may be set or revised later, or never)."""

    def __init__(self, desc: str, total: Optional[float] = None, unit: str = "pairs"):
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0
        self._start = self._logged = time.monotonic()
        self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", unit_scale=True, file=sys.stderr,
                         dynamic_ncols=True, leave=False) if sys.stderr.isatty() else None

    def set_total(self, total: float) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif time.monotonic() - self._logged >= LOG_EVERY_S:
            self._logged = time.monotonic()
            log.info("%s", self._line())

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        line = f"{self.desc}: {self.done:,} {self.unit}"
        if self.total:
            line += f" of about {int(self.total):,} ({100 * self.done / self.total:.0f}%)"
        line += f", {rate:,.0f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            line += f", about {(self.total - self.done) / rate:,.0f} s left"
        return line

    def close(self) -> float:
        """End the stage; returns its wall time in seconds."""
        if self._bar is not None:
            self._bar.close()
        return time.monotonic() - self._start

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Ticking:
    """A stage whose progress cannot be counted (SentencePiece training): on a terminal, a line
    whose elapsed time ticks every second from a thread (SentencePiece releases the GIL)."""

    def __init__(self, desc: str):
        self._bar = tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}", file=sys.stderr,
                         leave=False) if sys.stderr.isatty() else None
        self._stop = threading.Event()
        self._start = time.monotonic()
        if self._bar is not None:
            threading.Thread(target=self._tick, daemon=True, name="mt-progress").start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._bar.refresh()

    def close(self) -> float:
        self._stop.set()
        if self._bar is not None:
            self._bar.close()
        return time.monotonic() - self._start

    def __enter__(self) -> Ticking:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BarSafeHandler(logging.StreamHandler):
    """Log lines on stderr, each on its own line: while a progress bar is drawn, tqdm.write
    clears it, prints the line and draws the bar again below it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001  (logging's own contract: never raise from emit)
            self.handleError(record)

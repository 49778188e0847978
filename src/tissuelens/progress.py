"""Progress lines for long jobs: done/total, rate and ETA, at most one line every `every` seconds.

Rules send stderr to their log file, so `tail -f logs/...` (and a SLURM job's output) shows these as
whole lines, unlike a tqdm bar redrawn with carriage returns. Imported by the Loki stack (Python 3.9):
standard library only.
"""

from __future__ import annotations

import logging
import time

EVERY_S = 30.0


def duration(seconds: float) -> str:
    """7s, 2m05s, 1h02m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Log `what: 1,200/5,000 cells (24%), 35.2 cells/s, ETA 1m48s` at a bounded cadence, and once at the end.

    `update(n, note)` counts n more units; `note` (e.g. the current loss) is appended to the line.
    `enabled=False` logs nothing (tests, or a caller that reports otherwise).
    """

    def __init__(self, total: int, what: str, *, unit: str = "it", logger: logging.Logger | None = None,
                 every: float = EVERY_S, enabled: bool = True, clock=time.monotonic):
        self.total, self.what, self.unit = int(total), what, unit
        self.log = logger or logging.getLogger("tissuelens.progress")
        self.every, self.enabled, self.clock = float(every), enabled, clock
        self.done = 0
        self.start = self.last = clock()
        self.lines: list[str] = []  # what was logged (read by tests)

    def line(self, now: float, note: str = "") -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        pct = f" ({100.0 * self.done / self.total:.0f}%)" if self.total > 0 else ""
        if self.done >= self.total:
            tail = f"done in {duration(elapsed)}"
        else:
            tail = f"ETA {duration((self.total - self.done) / rate)}" if rate > 0 else "ETA unknown"
        speed = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
        text = f"{self.what}: {self.done:,}/{self.total:,} {self.unit}{pct}, {speed} {self.unit}/s, {tail}"
        return f"{text}; {note}" if note else text

    def update(self, n: int = 1, note: str = "") -> None:
        before, self.done = self.done, self.done + int(n)
        now = self.clock()
        if now - self.last >= self.every or before < self.total <= self.done:
            self._emit(now, note)

    def finish(self, note: str = "") -> None:
        """The closing line of a loop that stopped before `total` (e.g. converged early)."""
        if self.done < self.total:
            self.total = self.done
            self._emit(self.clock(), note)

    def _emit(self, now: float, note: str) -> None:
        self.last = now
        if self.enabled:
            text = self.line(now, note)
            self.lines.append(text)
            self.log.info("%s", text)

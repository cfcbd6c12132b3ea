"""Progress: one line for long work: which run of how many, what it is, elapsed time and an ETA
for the sweep. On a terminal the line is redrawn every second; otherwise (CI, files, launchers
that capture output) it degrades to a log line at the start and one at the end."""

from __future__ import annotations

import logging
import sys
import threading
import time

log = logging.getLogger("runner.run.progress")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def position(index: int | None, total: int = 0, started: float = 0.0) -> tuple[str, str]:
    """('[i/N] ', 'sweep ETA h:mm:ss') for job `index` (0-based) of a sweep of `total` jobs
    that started at `started` (time.time(); the sweeper sets both in the jobs' configs), else
    ('', '')."""
    if index is None or not total:
        return "", ""
    done = index
    prefix = f"[{index + 1}/{total}] "
    if done == 0 or not started:
        return prefix, ""
    per_run = (time.time() - started) / done
    return prefix, f"sweep ETA {_clock(per_run * (total - done))}"


class Progress:
    def __init__(
        self,
        label: str,
        index: int | None = None,
        sweep: tuple[int, float] = (0, 0.0),
        stream=None,
        interval_s: float = 1,
    ):
        self.stream = stream or sys.stderr
        self.prefix, self.eta = position(index, *sweep)
        self.label = label
        self.interval_s = interval_s
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._stop = threading.Event()
        self._thread = None
        self._started = 0.0

    def line(self) -> str:
        parts = [f"{self.prefix}{self.label}", f"elapsed {_clock(time.time() - self._started)}"]
        return " | ".join(parts + ([self.eta] if self.eta else []))

    def _redraw(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()

    def __enter__(self) -> Progress:
        self._started = time.time()
        if self.live:
            self._thread = threading.Thread(target=self._redraw, daemon=True)
            self._thread.start()
        else:
            log.info("%s", self.line())
        return self

    def __exit__(self, kind, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r\033[K")
            self.stream.flush()
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            return  # Ctrl-C: the entry point says it, once
        log.info("%sdone in %s", self.prefix, _clock(time.time() - self._started))

"""Progress: one line for long work: which run of how many, what it is, elapsed time and an ETA
for the sweep. On a terminal the line is redrawn every second; otherwise (CI, files, launchers
that capture output) it degrades to a log line at the start and one at the end. Also the line a
sweep's launcher logs for each job it starts (`#3 : ...`), shown as what the job is
(`show_jobs_as`)."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
import sys
import threading
import time
from collections.abc import Mapping

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


class JobLines(logging.Filter):
    """Rewrites a launcher's job line (`\t#3 : <the job's overrides, joined>`) to `shown`'s
    text for those overrides; every other record passes as it is."""

    LINE = re.compile(r"(\s*#\d+ : )(.*)", re.S)

    def __init__(self, shown: Mapping[str, str]):
        super().__init__()
        self.shown = dict(shown)

    def filter(self, record: logging.LogRecord) -> bool:
        found = self.LINE.fullmatch(record.getMessage())
        if found and found.group(2) in self.shown:
            record.msg, record.args = found.group(1) + self.shown[found.group(2)], ()
        return True


def show_jobs_as(launcher: object, shown: Mapping[str, str]) -> None:
    """Have `launcher` log each job as `shown` says (overrides joined by spaces, without
    Hydra's own `hydra.` ones, as launchers write them -> the text to show). A launcher logs
    through the loggers of its package's modules (Hydra's basic launcher, joblib's `_core`,
    submitit's, d2bench_slurm's): each gets the filter, made now where the module is not
    imported yet."""
    module = type(launcher).__module__
    package = importlib.import_module(module).__package__ or module
    names = {module}
    path = getattr(sys.modules[package], "__path__", None)
    if path is not None:
        names |= {f"{package}.{info.name}" for info in pkgutil.iter_modules(path)}
    job_lines = JobLines(shown)
    for name in sorted(names):
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, JobLines)]:
            logger.removeFilter(old)  # an earlier sweep's, in the same process
        logger.addFilter(job_lines)

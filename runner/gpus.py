"""GPU pool: takes the GPUs this process may use and hands each run one of its own.

A run on `device=cuda` claims a free GPU with an exclusive lock file (one per physical GPU,
shared by every d2bench process on the host), so parallel jobs of a sweep, or two sweeps, never
time two runs on one GPU; a run waits while every GPU is busy. The child sees only its GPU
(CUDA_VISIBLE_DEVICES), and the row records the physical index. Locks die with their process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def lock_dir() -> Path:
    return Path(os.environ.get("D2BENCH_LOCK_DIR", Path(tempfile.gettempdir()) / "d2bench-gpus"))


def visible_gpus() -> list[str]:
    """Physical indices this process may use: CUDA_VISIBLE_DEVICES, else every GPU listed by
    nvidia-smi (the parent does not initialise CUDA to count them)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [v.strip() for v in listed.split(",") if v.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        count = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        count = 0
    return [str(i) for i in range(count)] or ["0"]


@contextlib.contextmanager
def claim(device: str, poll_s: float = 1.0) -> Iterator[str]:
    """Hold one GPU for the block; yields its physical index. `device` cuda takes any free one,
    cuda:N the N-th visible one."""
    gpus = visible_gpus()
    if ":" in device:
        index = int(device.split(":", 1)[1])
        if index >= len(gpus):
            raise ValueError(f"device={device} but only {len(gpus)} GPU(s) are visible")
        gpus = [gpus[index]]
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    waited, announced = 0.0, False
    while True:
        for gpu in gpus:
            handle = open(folder / f"gpu{gpu}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                if announced:
                    log.info("gpu %s free after %.0f s", gpu, waited)
                yield gpu
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if not announced:
            log.info("every GPU of %s is busy with another run; waiting", gpus)
            announced = True
        time.sleep(poll_s)
        waited += poll_s

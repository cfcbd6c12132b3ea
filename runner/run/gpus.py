"""GPU pool: takes the GPUs this process may use and hands each run one of its own.

A run on `device=cuda` claims a free GPU with an exclusive lock file (one per physical GPU,
shared by every d2bench process on the host), so parallel jobs of a sweep, or two sweeps, never
time two runs on one GPU; a run waits while every GPU is busy. The child sees only its GPU
(CUDA_VISIBLE_DEVICES), and the row records the physical index. Locks die with their process.

On a cluster SLURM owns GPU assignment: inside a SLURM job that was given GPUs (gres, e.g.
hydra/launcher=slurm's gpus_per_node), those GPUs are the job's alone, as CUDA_VISIBLE_DEVICES
names them. The pool then only keeps the runs of that one job apart: its locks live in a folder
of the job's own, so a job never waits on another job's lock for a GPU SLURM gave to it (with
device cgroups every job on a node numbers its first GPU 0), and the row's gpu_index is the
index as SLURM set it. Anywhere else (a workstation, a SLURM job given no GPUs) the lock files
are shared by every d2bench process of the host.
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


def slurm_job_with_gpus() -> str | None:
    """This process's SLURM job id where SLURM gave the job GPUs, else None."""
    job = os.environ.get("SLURM_JOB_ID")
    given = os.environ.get("SLURM_STEP_GPUS") or os.environ.get("SLURM_JOB_GPUS")
    return job if job and given and "CUDA_VISIBLE_DEVICES" in os.environ else None


def lock_dir() -> Path:
    """Where the GPU locks live: shared by the host's d2bench processes, or (in a SLURM job
    given GPUs) by the runs of that job only."""
    shared = Path(os.environ.get("D2BENCH_LOCK_DIR", Path(tempfile.gettempdir()) / "d2bench-gpus"))
    job = slurm_job_with_gpus()
    return shared / f"slurm-job-{job}" if job else shared


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
    from runner.config import parse_device

    gpus = visible_gpus()
    _, index = parse_device(device)
    if index is not None:
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

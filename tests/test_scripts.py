"""scripts/sweep_times.py: wall times of device_batch.sh logs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "sweep_times.py"

LOG = """\
# 2026-11-29T00:03:30Z host batch=scripts/batches/x.txt git=abc
# >>> python -m runner sweep=seed
[2026-11-29 00:03:42,799][HYDRA] sweep: 28 runs -> outputs/sweeps/x
[2026-11-29 00:13:51,183][hydra_plugins.d2bench_sweeper][INFO] - sweep done: 28 runs: 28 ok
# <<< rc=0 in 556 s
# >>> tar czf $OUT/x.tgz outputs
# <<< rc=0 in 1 s
# >>> nvidia-smi | head
# <<< rc=1 in 2 s
# >>> python -m runner sweep=seed backend=cudagraphs
"""


def run(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_each_finished_command_with_its_seconds_and_sweep_summary(tmp_path):
    log = tmp_path / "batch.log"
    log.write_text(LOG)
    done = run(str(log))
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()[2:]
    assert rows == [
        "| `batch.log` | `python -m runner sweep=seed` | 0 | 556 | 28 runs: 28 ok |",
        "| `batch.log` | `nvidia-smi \\| head` | 1 | 2 | — |",
    ]  # tar lines are left out; the unfinished last command has no time to show


def test_missing_log_and_no_arguments_exit_2(tmp_path):
    assert run(str(tmp_path / "nope.log")).returncode == 2
    assert run().returncode == 2

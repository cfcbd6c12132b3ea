"""scripts/sweep_times.py: wall times of device_batch.sh logs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

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


SPREAD = Path(__file__).parents[1] / "scripts" / "spread.py"


@pytest.mark.slow
def test_spread_measures_blocks_in_fresh_processes_and_writes_csv(tmp_path):
    """scripts/spread.py for real on the CPU (one process, one call per block): every block
    is a CSV row with its GC and context-switch counts, every call a row of the calls CSV."""
    import csv

    done = subprocess.run(
        [sys.executable, str(SPREAD), "--processes", "1", "--iters", "1", "--rewarm", "0"]
        + ["--idle-s", "0", "--out", str(tmp_path), "--"]
        + ["model=tv_fasterrcnn_mobilenet", "device=cpu", "bench.warmup=0"]
        + ["inputs.height=160", "inputs.width=224"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=SPREAD.parents[1],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with open(tmp_path / "spread_blocks.csv", newline="") as f:
        blocks = list(csv.DictReader(f))
    assert [b["gc_mode"] for b in blocks] == ["keep", "collect", "pause"] * 3
    assert [b["after_profiler"] for b in blocks] == ["False"] * 6 + ["True"] * 3
    assert all(float(b["median_ms"]) > 0 and int(b["gc_gen2"]) >= 0 for b in blocks)
    with open(tmp_path / "spread_calls.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 9
    summary = (tmp_path / "spread_summary.txt").read_text()
    assert "across processes" in summary and "gc=pause" in summary
    reading = (tmp_path / "spread_reading.txt").read_text()  # --read, run at the end
    assert "median of block medians (d2bench)" in reading and "ctx_involuntary" in reading


def test_spread_reading_compares_statistics_across_processes_and_correlates_blocks(tmp_path):
    """--read on a finished study: per statistic, each process's value and highest / lowest
    over blocks before the profiler pass; a slow block's Pearson r with the other columns."""
    import csv

    columns = [
        "process",
        "block",
        "after_profiler",
        "median_ms",
        "min_ms",
        "ctx_involuntary",
        "loadavg_1m",
        "sm_mhz_after",
        "power_w_after",
    ]
    blocks = [
        # process, block, after profiler, median, min, ctx, load, sm, power
        [0, 0, False, 10.0, 9.0, 1, 1.0, 1980, 150],  # power = 160 - median
        [0, 1, True, 40.0, 39.0, 3, 1.0, 1980, 120],  # after the profiler: left out of the first
        [1, 0, False, 12.0, 11.0, 2, 1.0, 1980, 148],
        [1, 1, False, 12.0, 11.0, 2, 1.0, 1980, 148],
    ]
    calls = {
        (0, 0): [9.0, 10.0, 11.0],
        (0, 1): [39.0, 40.0, 41.0],
        (1, 0): [11.0, 12.0, 13.0],
        (1, 1): [10.0, 12.0, 14.0],
    }
    with open(tmp_path / "spread_blocks.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(blocks)
    with open(tmp_path / "spread_calls.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["process", "block", "call", "latency_ms"])
        for (p, b), values in calls.items():
            writer.writerows([p, b, i, v] for i, v in enumerate(values))
    done = subprocess.run(
        [sys.executable, str(SPREAD), "--read", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SPREAD.parents[1],
    )
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "spread_reading.txt").read_text()
    assert text == done.stdout
    assert "median of block medians (d2bench): 10.00, 12.00 ms -> 1.200x" in text
    assert "fastest call: 9.00, 10.00 ms -> 1.111x" in text
    assert "mean of all calls: 10.00, 12.00 ms -> 1.200x" in text
    assert "sm_mhz_after: n/a (constant)" in text
    assert "min_ms: +1.00" in text and "power_w_after: -1.00" in text


# --- the GPU batches (scripts/batches/*.txt) -------------------------------------------------

BATCHES = sorted((Path(__file__).parents[1] / "scripts" / "batches").glob("*.txt"))
# the batches' shell variables, as their loops set them
SHELL_VALUES = {"$v": "RetinaNet", "$p": "fp32", "$OUT": "/tmp/out"}


def batch_runner_commands(text: str) -> list[list[str]]:
    """The arguments of every `python -m runner ...` in a batch's command lines, also inside
    loops, quotes and `&&` chains, up to the redirection or the end of the command."""
    found = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        for match in re.finditer(r"python3? -m runner (.*?)(?=\s*(?:>|;|&&|\|\||\"|$))", line):
            arguments = match.group(1)
            for name, value in SHELL_VALUES.items():
                arguments = arguments.replace(name, value)
            found.append(shlex.split(arguments))
    return found


def test_the_batches_hold_runner_commands():
    assert sum(len(batch_runner_commands(b.read_text())) for b in BATCHES) >= 40


@pytest.mark.parametrize("batch", BATCHES, ids=lambda path: path.name)
def test_every_runner_command_of_a_batch_passes_the_command_line_check(batch):
    """A GPU call is minutes of a 30-minute lease: a misspelt key or option must fail here, on
    the CPU, not there."""
    from runner.config import check_command_line

    for arguments in batch_runner_commands(batch.read_text()):
        check_command_line(arguments)

"""Where run-to-run spread comes from: one configuration measured in several
fresh processes, many short blocks in each, with what could explain a slow block recorded next
to it. Machine-readable: one CSV row per block, one per timed call.

    python scripts/spread.py [--processes 4] [--iters 60] [--idle-s 10] [--out DIR] \\
        [-- model=retinanet precision=fp16 backend=eager]

Each process (a fresh `python scripts/spread.py --child`) builds the run as runner.run.measurement
does (build, reference, optimize, warm-up, parity), then times 9 blocks of --iters calls
(10 untimed before each): GC keep / collect / pause, three times each, with the profiler pass
(what a run does at its end) after the sixth. Process 0 starts at once (after whatever the GPU
did before: run with RUN_TESTS=0 so that it starts cold); process 2 is pinned to a quarter of
the cores; process 3 starts after --idle-s seconds of an idle GPU. Per block the CSV holds the
latency figures, GC collections and context switches during the block, the load average, the
CPU it ran on, and `nvidia-smi` clocks, P-state, temperature and power before and after.

Reading it (the summary printed at the end does this):
- within- vs across-process spread: block medians of one process against process medians;
- clock ramp: sm clock and the first calls of process 0 / 3 against later blocks;
- GC: blocks by gc mode, and blocks where a gen-2 collection happened;
- profiler: blocks before against after the profiler pass;
- host load: load average and involuntary context switches against block medians.
Cost on an H200 with RetinaNet fp16 eager: 143 s for the 4 processes
(results/logs/h200_static_call1_batch.log).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKS = [("keep", False), ("collect", False), ("pause", False)] * 2 + [
    ("keep", True),
    ("collect", True),
    ("pause", True),
]
BLOCK_COLUMNS = [
    "process",
    "pinned_cpus",
    "idle_before_s",
    "block",
    "gc_mode",
    "after_profiler",
    "wall_start_s",
    "median_ms",
    "mean_ms",
    "p10_ms",
    "p90_ms",
    "min_ms",
    "max_ms",
    "first10_median_ms",
    "gc_gen0",
    "gc_gen1",
    "gc_gen2",
    "ctx_involuntary",
    "ctx_voluntary",
    "loadavg_1m",
    "cpu_start",
    "cpu_end",
    "sm_mhz_before",
    "sm_mhz_after",
    "mem_mhz_before",
    "pstate_before",
    "pstate_after",
    "temp_c_after",
    "power_w_after",
    "gpu_busy_ms",
]


def nvidia_smi() -> dict:
    query = "clocks.sm,clocks.mem,pstate,temperature.gpu,power.draw"
    try:
        text = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return {}
    sm, mem, pstate, temp, power = (v.strip() for v in text.split(","))
    return {"sm": sm, "mem": mem, "pstate": pstate, "temp": temp, "power": power}


def context_switches() -> tuple[int, int]:
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if "ctxt_switches" in line:
            name, value = line.split(":")
            found[name.strip()] = int(value)
    return found.get("nonvoluntary_ctxt_switches", 0), found.get("voluntary_ctxt_switches", 0)


def current_cpu() -> int:
    return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[36])


def compose(overrides: list[str], out: Path):
    import hydra

    from runner.config import register_schema, to_config

    register_schema()
    with hydra.initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra.compose("config", overrides=[*overrides, f"output_dir={out}", "command=spread"])
    return to_config(cfg)


def child(args: argparse.Namespace) -> None:
    import numpy as np

    from runner.run import timing
    from runner.run.measurement import Measurement

    out = Path(args.out) / f"process{args.process}"
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose(args.overrides, out)
    measurement = Measurement(cfg, out)
    prepared = measurement.prepare()
    if not prepared.measured:
        raise SystemExit(f"prepare: {prepared.status}: {prepared.error}")
    batch = measurement.images.images["opt"]
    rows, calls, busy = [], [], None
    started = time.monotonic()
    for block, (mode, after_profiler) in enumerate(BLOCKS):
        if after_profiler and busy is None:
            busy = measurement.finish().gpu_busy_ms
        before = nvidia_smi()
        gc_before = [s["collections"] for s in gc.get_stats()]
        ctx_before = context_switches()
        cpu_start, wall = current_cpu(), time.monotonic() - started
        samples = timing.timed_block(
            lambda: measurement._call(batch),
            args.iters,
            args.rewarm,
            measurement._synchronize,
            mode,
        )
        cpu_end = current_cpu()
        ctx_after = context_switches()
        gc_after = [s["collections"] for s in gc.get_stats()]
        after = nvidia_smi()
        ms = np.asarray(samples)
        rows.append(
            {
                "process": args.process,
                "pinned_cpus": args.pin or "",
                "idle_before_s": args.idle_before,
                "block": block,
                "gc_mode": mode,
                "after_profiler": after_profiler,
                "wall_start_s": round(wall, 3),
                "median_ms": float(np.median(ms)),
                "mean_ms": float(ms.mean()),
                "p10_ms": float(np.percentile(ms, 10)),
                "p90_ms": float(np.percentile(ms, 90)),
                "min_ms": float(ms.min()),
                "max_ms": float(ms.max()),
                "first10_median_ms": float(np.median(ms[:10])),
                "gc_gen0": gc_after[0] - gc_before[0],
                "gc_gen1": gc_after[1] - gc_before[1],
                # less the full collection that gc=collect / pause make before the block
                "gc_gen2": gc_after[2] - gc_before[2] - (mode != "keep"),
                "ctx_involuntary": ctx_after[0] - ctx_before[0],
                "ctx_voluntary": ctx_after[1] - ctx_before[1],
                "loadavg_1m": os.getloadavg()[0],
                "cpu_start": cpu_start,
                "cpu_end": cpu_end,
                "sm_mhz_before": before.get("sm", ""),
                "sm_mhz_after": after.get("sm", ""),
                "mem_mhz_before": before.get("mem", ""),
                "pstate_before": before.get("pstate", ""),
                "pstate_after": after.get("pstate", ""),
                "temp_c_after": after.get("temp", ""),
                "power_w_after": after.get("power", ""),
                "gpu_busy_ms": busy if after_profiler else "",
            }
        )
        calls += [(args.process, block, i, v) for i, v in enumerate(samples)]
    (out / "blocks.json").write_text(json.dumps(rows))
    (out / "calls.json").write_text(json.dumps(calls))
    sys.stdout.flush()
    os._exit(0)  # skip CUDA teardown, as runner.run.workers does


def summary(rows: list[dict]) -> str:
    """Plain-text reading of the blocks (see the module docstring)."""
    lines = []
    by_process: dict[int, list[dict]] = {}
    for row in rows:
        by_process.setdefault(int(row["process"]), []).append(row)
    medians = {p: statistics.median(r["median_ms"] for r in rs) for p, rs in by_process.items()}
    for process, blocks in sorted(by_process.items()):
        values = [r["median_ms"] for r in blocks]
        lines.append(
            f"process {process} (pinned {blocks[0]['pinned_cpus'] or 'no'}, idle before "
            f"{blocks[0]['idle_before_s']} s): block medians {min(values):.2f}-{max(values):.2f} "
            f"ms (within: {max(values) / min(values):.3f}x), median {medians[process]:.2f}; "
            f"first block {values[0]:.2f} ms, first 10 calls {blocks[0]['first10_median_ms']:.2f}"
            f" ms at sm {blocks[0]['sm_mhz_before']} -> {blocks[0]['sm_mhz_after']} MHz"
        )
    across = list(medians.values())
    lines.append(
        f"across processes: process medians {min(across):.2f}-{max(across):.2f} ms "
        f"({max(across) / min(across):.3f}x)"
    )
    for mode in ("keep", "collect", "pause"):
        values = [r["median_ms"] / medians[int(r["process"])] for r in rows if r["gc_mode"] == mode]
        gen2 = sum(int(r["gc_gen2"]) for r in rows if r["gc_mode"] == mode)
        lines.append(
            f"gc={mode}: block median / process median {statistics.median(values):.3f} "
            f"(gen-2 collections inside blocks: {gen2})"
        )
    for after in (False, True):
        values = [
            r["median_ms"] / medians[int(r["process"])]
            for r in rows
            if str(r["after_profiler"]) == str(after)
        ]
        lines.append(
            f"{'after' if after else 'before'} the profiler pass: block / process median "
            f"{statistics.median(values):.3f}"
        )
    return "\n".join(lines) + "\n"


STATISTICS = {  # what a row could report for one process's calls, blocks before the profiler
    "median of block medians (d2bench)": lambda blocks: statistics.median(
        statistics.median(b) for b in blocks
    ),
    "median of all calls": lambda blocks: statistics.median(c for b in blocks for c in b),
    "mean of all calls": lambda blocks: statistics.fmean(c for b in blocks for c in b),
    "5th percentile of all calls": lambda blocks: _quantile([c for b in blocks for c in b], 0.05),
    "fastest call": lambda blocks: min(c for b in blocks for c in b),
}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _correlation(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return statistics.correlation(xs, ys)


def reading(blocks: list[dict], calls: list[dict]) -> str:
    """What the CSVs say beyond the summary: how far apart fresh processes land with each
    statistic a row could report (so: can any of them make two sweeps agree?), and what a
    slow block goes with (Pearson correlation of block medians with the other columns)."""
    lines = [
        "statistic of each process's calls before the profiler pass: value per process, "
        "highest / lowest"
    ]
    before = {
        (int(b["process"]), int(b["block"])) for b in blocks if str(b["after_profiler"]) == "False"
    }
    per_process: dict[int, dict[int, list[float]]] = {}
    for c in calls:
        key = (int(c["process"]), int(c["block"]))
        if key in before:
            per_process.setdefault(key[0], {}).setdefault(key[1], []).append(float(c["latency_ms"]))
    for name, statistic in STATISTICS.items():
        values = [statistic(list(bs.values())) for _, bs in sorted(per_process.items())]
        if values:
            shown = ", ".join(f"{v:.2f}" for v in values)
            lines.append(f"  {name}: {shown} ms -> {max(values) / min(values):.3f}x")
    medians = [float(b["median_ms"]) for b in blocks]
    lines.append("block median against (Pearson r over every block):")
    for column in ("min_ms", "ctx_involuntary", "loadavg_1m", "sm_mhz_after", "power_w_after"):
        try:
            values = [float(b[column]) for b in blocks]
        except (KeyError, TypeError, ValueError):
            continue
        r = _correlation(medians, values)
        lines.append(f"  {column}: {'n/a (constant)' if r is None else f'{r:+.2f}'}")
    return "\n".join(lines) + "\n"


def read(folder: Path) -> int:
    """`--read DIR`: the reading of a finished study's CSVs, printed and written to
    DIR/spread_reading.txt."""
    with open(folder / "spread_blocks.csv", newline="") as f:
        blocks = list(csv.DictReader(f))
    with open(folder / "spread_calls.csv", newline="") as f:
        calls = list(csv.DictReader(f))
    text = reading(blocks, calls)
    (folder / "spread_reading.txt").write_text(text)
    print(text, end="")
    return 0


def parent(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))
    quarter = cores[: max(1, len(cores) // 4)]
    for process in range(args.processes):
        idle = args.idle_s if process == 3 else 0
        if idle:
            time.sleep(idle)
        pin = ",".join(map(str, quarter)) if process == 2 else ""
        command = [sys.executable, __file__, "--child", "--process", str(process)]
        command += ["--iters", str(args.iters), "--rewarm", str(args.rewarm), "--out", str(out)]
        command += ["--idle-before", str(idle)]
        command += ["--pin", pin] if pin else []
        started = time.monotonic()
        done = subprocess.run(
            (["taskset", "-c", pin] if pin else []) + [*command, "--", *args.overrides],
            cwd=REPO,
        )
        print(f"# process {process}: rc={done.returncode} in {time.monotonic() - started:.0f} s")
    rows, calls = [], []
    for process in range(args.processes):
        folder = out / f"process{process}"
        if (folder / "blocks.json").exists():
            rows += json.loads((folder / "blocks.json").read_text())
            calls += json.loads((folder / "calls.json").read_text())
    with open(out / "spread_blocks.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, BLOCK_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "spread_calls.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["process", "block", "call", "latency_ms"])
        writer.writerows(calls)
    if not rows:
        print("no blocks measured")
        return 1
    text = summary(rows)
    (out / "spread_summary.txt").write_text(text)
    print(text, end="")
    return read(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--rewarm", type=int, default=10)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--out", default=os.environ.get("OUT", "outputs") + "/spread")
    parser.add_argument("--read", metavar="DIR", help="read a finished study's CSVs in DIR")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--process", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--idle-before", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--pin", default="", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", default=[])
    args = parser.parse_args(argv)
    if args.read:
        return read(Path(args.read))
    if not args.overrides:
        args.overrides = ["model=retinanet", "precision=fp16", "backend=eager"]
    if args.child:
        child(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Timing: takes a callable and its arguments, returns latency samples in milliseconds and their
statistics. The device is synchronized before and after every timed call, so a sample is the
latency the caller sees (host launch overhead included), as in the seed benchmark."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Protocol:
    warmup: int
    iters: int

    def describe(self) -> str:
        return f"{self.warmup} warm-up + {self.iters} timed calls, synchronized, median"


def measure(
    call: Callable[[], object],
    protocol: Protocol,
    synchronize: Callable[[], None],
) -> list[float]:
    """Run `call` protocol.warmup times untimed, then protocol.iters times timed; return ms."""
    for _ in range(protocol.warmup):
        call()
    synchronize()
    samples = []
    for _ in range(protocol.iters):
        start = time.perf_counter()
        call()
        synchronize()
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def timed_block(
    call: Callable[[], object],
    iters: int,
    rewarm: int,
    synchronize: Callable[[], None],
    gc_mode: str = "collect",
) -> list[float]:
    """One repeat: `rewarm` untimed calls (the process idled while others were timed), then
    Python's GC as `gc_mode` says (keep: untouched; collect: a full collection now, so that
    garbage of earlier work is not collected inside a timed call; pause: that, and no automatic
    collection until the block ends), then `iters` timed calls. Returns ms."""
    for _ in range(rewarm):
        call()
    synchronize()
    paused = gc_mode == "pause" and gc.isenabled()
    if gc_mode in ("collect", "pause"):
        gc.collect()
    if paused:
        gc.disable()
    try:
        return measure(call, Protocol(0, iters), synchronize)
    finally:
        if paused:
            gc.enable()


# The host probe: a fixed piece of pure-Python work (function calls, attribute and dict access,
# the interpreter work eager PyTorch spends most of a host-bound call on), timed PROBE_RUNS
# times around each block. Its median tells a block measured while the host's CPU ran slow
# from one measured while it ran fast: on the H200 machine eager block medians move between
# two levels ~1.5x apart while the GPU's time stays put (docs/measurement.md).
PROBE_LOOPS = 4000
PROBE_RUNS = 5


class _Probe:
    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0


def _probe_step(probe: _Probe, table: dict, i: int) -> None:
    probe.total += table.get(i & 63, 0) + (i % 7)


def probe_once() -> float:
    """Milliseconds of one run of the probe's fixed work."""
    probe, table = _Probe(), {k: k * k for k in range(64)}
    start = time.perf_counter()
    for i in range(PROBE_LOOPS):
        _probe_step(probe, table, i)
    return (time.perf_counter() - start) * 1000.0


def host_probe(runs: int = PROBE_RUNS) -> list[float]:
    """`runs` timings (ms) of the probe's fixed work, one after another."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    return [probe_once() for _ in range(runs)]


def summarize(samples_ms: Sequence[float], batch: int) -> dict[str, float]:
    """Latency statistics in ms and throughput in images per second.

    fps_mean is the mean of per-call throughputs (batch / latency), the seed's definition, which
    is not batch / mean latency.
    """
    if len(samples_ms) == 0:
        raise ValueError("no samples to summarize")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    ms = np.asarray(samples_ms, dtype=np.float64)
    if np.any(ms <= 0) or not np.all(np.isfinite(ms)):
        raise ValueError("latency samples must be finite and positive")
    median = float(np.median(ms))
    return {
        "latency_ms_median": median,
        "latency_ms_mean": float(ms.mean()),
        "latency_ms_p99": float(np.percentile(ms, 99)),
        "latency_ms_std": float(ms.std(ddof=0)),
        "latency_ms_min": float(ms.min()),
        "fps_median": batch * 1000.0 / median,
        "fps_mean": float(np.mean(batch * 1000.0 / ms)),
    }


@dataclass(frozen=True)
class GpuProfile:
    """What the GPU did during one call: `busy_ms`, the sum of its kernel and copy durations;
    `ops`, how many kernels and copies the call launched; `table`, the ops that took the most
    device time (text). busy_ms is the floor latency is measured against: latency - busy_ms is
    time the GPU waited for the host."""

    busy_ms: float
    ops: int
    table: str


def device_summary(events: Sequence[tuple[str, int, float]], top: int = 15) -> GpuProfile:
    """GpuProfile of one call from its device activities: (name, launches, device time in us)
    per distinct kernel or copy."""
    active = [(name, count, us) for name, count, us in events if us > 0 and count > 0]
    total_us = sum(us for _, _, us in active)
    lines = [f"{'device us':>10} {'share':>6} {'calls':>6}  name"]
    for name, count, us in sorted(active, key=lambda e: -e[2])[:top]:
        share = us / total_us if total_us else 0.0
        lines.append(f"{us:10.1f} {share:6.1%} {count:6d}  {name[:110]}")
    lines.append(f"{total_us:10.1f} {1:6.0%} {sum(c for _, c, _ in active):6d}  (all)")
    return GpuProfile(total_us / 1000.0, sum(c for _, c, _ in active), "\n".join(lines) + "\n")


PROFILED_CALLS = 5  # calls gpu_profile profiles; it reports the median one


def gpu_profile(
    call: Callable[[], object], synchronize: Callable[[], None], calls: int = PROFILED_CALLS
) -> GpuProfile | None:
    """The GpuProfile of the median call (by busy time) of `calls` profiled calls, from the
    PyTorch profiler (CUPTI). None when the profiler cannot record CUDA activity here."""
    from torch.profiler import ProfilerActivity, profile

    profiles = []
    try:
        for _ in range(calls):
            synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                call()
                synchronize()
            profiles.append(
                device_summary(
                    [
                        (
                            event.key,
                            int(event.count),
                            getattr(
                                event,
                                "self_device_time_total",
                                getattr(event, "self_cuda_time_total", 0.0),
                            ),
                        )
                        for event in prof.key_averages()
                    ]
                )
            )
    except Exception:  # noqa: BLE001 - no CUPTI here: the row says so with empty cells
        return None
    profiles.sort(key=lambda p: p.busy_ms)
    median = profiles[len(profiles) // 2]
    return median if median.busy_ms > 0 else None


def stage_profile(
    call: Callable[[], object],
    synchronize: Callable[[], None],
    device: str,
    warm: bool = False,
) -> dict[str, float] | None:
    """ms per stage (runner.stages) of one call of `call`: on CUDA the device time of what each
    stage launched, on the CPU the host time inside each stage's range. After one untimed call
    on CUDA (an uncaptured forward may not have run since its graph was captured) and wherever
    `warm` asks for it (a call whose first run compiles). None where the call marked no stage,
    or the profiler could not record here."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from runner import stages

    activities = [ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(ProfilerActivity.CUDA)
    try:
        if device == "cuda" or warm:
            call()
            synchronize()
        with profile(activities=activities) as prof:
            with torch.profiler.record_function(stages.CALL):
                call()
            synchronize()
        return stages.attribute(stages.events_of(prof.events()), device)
    except Exception:  # noqa: BLE001 - no profiler here: the row says so with empty cells
        log.warning("stage profile failed", exc_info=True)
        return None


# ---- repeats and pairs ------------------------------------------------------------------

BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 0  # fixed: the same rows give the same interval


def ratio_of_medians(baseline_ms: Sequence[float], other_ms: Sequence[float]) -> float:
    """median(baseline) / median(other): the speed-up of `other` over the baseline."""
    return float(np.median(baseline_ms) / np.median(other_ms))


def paired_interval(
    baseline_ms: Sequence[float],
    other_ms: Sequence[float],
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ratio_of_medians over paired repeats: pair i is
    (baseline_ms[i], other_ms[i]), measured in one round of one session; pairs are resampled
    whole, so what drifted between rounds stays in each pair."""
    a = np.asarray(baseline_ms, dtype=np.float64)
    b = np.asarray(other_ms, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need equally many paired repeats, got {a.shape} and {b.shape}")
    if np.any(a <= 0) or np.any(b <= 0) or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("latencies must be finite and positive")
    index = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    ratios = np.median(a[index], axis=1) / np.median(b[index], axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return float(low), float(high)

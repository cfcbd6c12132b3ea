"""Timing: takes a callable and its arguments, returns latency samples in milliseconds and their
statistics. The device is synchronized before and after every timed call, so a sample is the
latency the caller sees (host launch overhead included), as in the seed benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


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


def gpu_busy_ms(
    call: Callable[[], object], synchronize: Callable[[], None], calls: int = 5
) -> float | None:
    """Median over `calls` calls of the GPU time one call keeps the device busy: the sum of its
    kernel and copy durations from the PyTorch profiler (CUPTI). This is the floor that latency
    is measured against: latency - gpu_busy is time the GPU waits for the host.
    None when the profiler cannot record CUDA activity here."""
    from torch.profiler import ProfilerActivity, profile

    per_call = []
    try:
        for _ in range(calls):
            synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                call()
                synchronize()
            total_us = 0.0
            for event in prof.key_averages():
                total_us += getattr(
                    event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)
                )
            per_call.append(total_us / 1000.0)
    except Exception:  # noqa: BLE001 - no CUPTI here: the row says so with an empty cell
        return None
    busy = float(np.median(per_call))
    return busy if busy > 0 else None

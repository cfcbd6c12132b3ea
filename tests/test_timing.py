"""Timing: statistics of latency samples, and the measuring loop (warm-up, synchronized calls)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from runner.run import timing
from runner.run.timing import Protocol, measure, summarize


def test_summarize_known_samples():
    samples = [10.0, 20.0, 30.0, 40.0]
    stats = summarize(samples, batch=1)
    assert stats["latency_ms_median"] == 25.0
    assert stats["latency_ms_mean"] == 25.0
    assert stats["latency_ms_min"] == 10.0
    # numpy's linear percentile: rank 0.99 * 3 = 2.97 -> 30 + 0.97 * (40 - 30)
    assert stats["latency_ms_p99"] == pytest.approx(39.7)
    assert stats["latency_ms_std"] == pytest.approx(math.sqrt(125.0))  # ddof=0
    assert stats["fps_median"] == pytest.approx(1000.0 / 25.0)
    assert stats["fps_mean"] == pytest.approx((100 + 50 + 1000 / 30 + 25) / 4)


def test_summarize_odd_count_and_batch():
    samples = [5.0, 1.0, 3.0]
    stats = summarize(samples, batch=4)
    assert stats["latency_ms_median"] == 3.0
    assert stats["fps_median"] == pytest.approx(4 * 1000.0 / 3.0)
    assert stats["fps_mean"] == pytest.approx(np.mean([4000 / 5, 4000 / 1, 4000 / 3]))
    # the mean of per-call throughputs is not batch / mean latency
    assert stats["fps_mean"] != pytest.approx(4 * 1000.0 / np.mean(samples))


def test_summarize_matches_numpy_on_random_samples():
    rng = np.random.default_rng(0)
    samples = list(rng.uniform(1.0, 50.0, size=201))
    stats = summarize(samples, batch=2)
    assert stats["latency_ms_median"] == pytest.approx(np.median(samples))
    assert stats["latency_ms_p99"] == pytest.approx(np.percentile(samples, 99, method="linear"))
    assert stats["latency_ms_std"] == pytest.approx(np.std(samples, ddof=0))
    assert all(isinstance(v, float) for v in stats.values())


def test_single_sample():
    stats = summarize([7.5], batch=1)
    assert stats["latency_ms_median"] == stats["latency_ms_p99"] == 7.5
    assert stats["latency_ms_std"] == 0.0


@pytest.mark.parametrize(
    "samples",
    [[], [1.0, -2.0], [0.0, 1.0], [1.0, float("nan")], [1.0, float("inf")]],
    ids=["empty", "negative", "zero", "nan", "inf"],
)
def test_summarize_rejects_bad_samples(samples):
    with pytest.raises(ValueError):
        summarize(samples, batch=1)


@pytest.mark.parametrize("batch", [0, -1])
def test_summarize_rejects_batch_below_one(batch):
    with pytest.raises(ValueError, match="batch"):
        summarize([1.0, 2.0], batch=batch)


def test_protocol_describes_itself():
    text = Protocol(warmup=100, iters=200).describe()
    assert "100" in text and "200" in text


def test_measure_calls_warmup_plus_iters_times_and_returns_ms():
    calls = []
    syncs = []

    def call():
        calls.append(time.perf_counter())
        time.sleep(0.002)

    samples = measure(call, Protocol(warmup=3, iters=5), lambda: syncs.append(1))
    assert len(calls) == 3 + 5
    assert len(samples) == 5
    assert syncs, "synchronize was never called"
    assert all(2.0 <= s < 50.0 for s in samples), samples


def test_measure_synchronizes_after_warmup_and_after_every_timed_call():
    events = []

    def call():
        events.append("call")

    def synchronize():
        events.append("sync")

    measure(call, Protocol(warmup=2, iters=4), synchronize)
    calls = [i for i, e in enumerate(events) if e == "call"]
    timed = calls[2:]
    assert events[timed[0] - 1] == "sync", f"no sync between warm-up and timing: {events}"
    for i in timed:
        assert events[i + 1] == "sync", f"timed call {i} not followed by a sync: {events}"


def test_measure_times_the_synchronize_too():
    """A sample is what the caller waits for: the call and the device finishing it."""

    def synchronize():
        time.sleep(0.005)

    samples = measure(lambda: None, Protocol(warmup=0, iters=3), synchronize)
    assert len(samples) == 3
    assert all(s >= 5.0 for s in samples), samples


def test_device_summary_adds_up_kernels_and_copies_of_one_call():
    events = [
        ("sm90_xmma_gemm", 10, 300.0),
        ("Memcpy HtoD (Pageable -> Device)", 2, 5.0),
        ("cudaLaunchKernel", 40, 0.0),  # host-side runtime call: no device time
        ("elementwise_kernel", 100, 195.0),
    ]
    profile = timing.device_summary(events, top=2)
    assert profile.busy_ms == pytest.approx(0.5)
    assert profile.ops == 112
    lines = profile.table.splitlines()
    assert "sm90_xmma_gemm" in lines[1] and "60.0%" in lines[1]
    assert "elementwise_kernel" in lines[2]
    assert len(lines) == 4 and "(all)" in lines[3] and "112" in lines[3]
    assert "cudaLaunchKernel" not in profile.table


def test_device_summary_of_no_activity_is_zero():
    profile = timing.device_summary([])
    assert profile.busy_ms == 0 and profile.ops == 0

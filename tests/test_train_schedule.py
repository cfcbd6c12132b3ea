"""scripts/train.py's LR schedule, without detectron2: a linear warm-up from WARMUP_FACTOR to
the base LR, then a cosine to zero at the last iteration; before --minutes has fixed the
iteration count, the warm-up alone."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train.py")
TRAIN = importlib.util.module_from_spec(spec)
spec.loader.exec_module(TRAIN)


def test_warm_up_then_cosine_to_zero():
    schedule = TRAIN.Schedule(2000)
    assert schedule.warmup == 200  # a tenth of the iterations
    factors = [schedule.factor(i) for i in range(2001)]
    assert factors[0] == pytest.approx(TRAIN.WARMUP_FACTOR)
    assert max(factors) == factors[200] > 0.97  # the end of the warm-up is the highest
    assert all(a <= b for a, b in zip(factors[:200], factors[1:201], strict=True))  # ramps up
    assert all(a >= b for a, b in zip(factors[200:], factors[201:], strict=False))  # decays
    assert factors[2000] == pytest.approx(0.0, abs=1e-12)


def test_short_runs_warm_up_for_at_least_the_least_and_never_past_the_end():
    assert TRAIN.Schedule(500).warmup == TRAIN.WARMUP_LEAST
    assert TRAIN.Schedule(3).warmup == 3


def test_before_the_count_is_known_the_factor_is_the_warm_up_alone():
    """The probe's iterations (before --minutes fixes the count) ramp up from WARMUP_FACTOR
    over WARMUP_LEAST iterations and stay inside the warm-up, below the base LR."""
    probing = TRAIN.Schedule(None)
    assert probing.warmup == TRAIN.WARMUP_LEAST >= TRAIN.PROBE_ITERS
    factors = [probing.factor(i) for i in range(TRAIN.PROBE_ITERS)]
    assert factors[0] == pytest.approx(TRAIN.WARMUP_FACTOR)
    assert all(a < b < 1.0 for a, b in zip(factors, factors[1:], strict=False))

"""Repeats and speed-ups: takes the rows of one or more sessions (one row per timed block),
returns one summary per identity (its repeats' medians, count and spread) and each row's paired
speed-up over eager with its 95% bootstrap interval (runner.run.timing holds the maths).

Both work on the rows as a pandas table (runner.report.rows.frame): repeats are a groupby
over the identity; pairs are a merge of each row with the eager row of the same session and
repeat.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Sequence

import pandas as pd

from runner.report.identity import is_baseline, machine_of, pair_fields
from runner.report.markdown import counted, ratio_digits, ratio_text
from runner.report.rows import frame, sort_rows
from runner.run import flops, record, timing
from runner.run.record import Row, is_measured

OLDEST = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
# figures that a summary takes as the median over the repeats
MEDIAN_FIGURES = (
    "latency_ms_mean",
    "latency_ms_p99",
    "latency_ms_std",
    "fps_mean",
    "latency_ms_median_min_shape",
    "latency_ms_median_max_shape",
    "gpu_busy_ms",
    "optimize_s",
    "host_probe_ms",
)
MIN_PAIRS = 3  # fewer paired repeats give a ratio without an interval


@dataclasses.dataclass(frozen=True)
class Repeats:
    """The rows of one identity on one machine: `row` stands for them (figures are medians
    over the measured repeats), `count` repeats in `sessions` sessions, `low`-`high` the
    lowest and highest repeat median."""

    row: Row
    count: int
    sessions: int
    low: float | None
    high: float | None


def moment(row: Row) -> datetime.datetime:
    """The row's timestamp as an aware time; rows without a readable one count as the oldest."""
    try:
        when = datetime.datetime.fromisoformat(row.timestamp.replace("Z", "+00:00"))
    except ValueError:
        return OLDEST
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


def _present(value) -> float | None:
    return None if pd.isna(value) else float(value)


def summarize_repeats(group: pd.DataFrame) -> Repeats:
    """One identity's rows (a frame) as one Repeats. A parity failure in any repeat makes it
    fail; the row it shows is the failing one, else the newest."""
    timed = group[group["row"].map(is_measured)]
    if timed.empty:
        return Repeats(max(group["row"], key=moment), 0, 0, None, None)
    failing = [r for r in timed["row"] if not record.passed(r)]
    base = failing[0] if failing else max(timed["row"], key=moment)
    medians = timed["latency_ms_median"].astype(float)
    median = float(medians.median())
    figures = timed[list(MEDIAN_FIGURES)].apply(pd.to_numeric).median()
    row = record.replace(
        base,
        latency_ms_median=median,
        latency_ms_min=_present(pd.to_numeric(timed["latency_ms_min"]).min()),
        fps_median=base.batch * 1000.0 / median,
        **flops.derived(base.gflop_per_call, median, base.peak_tflop_per_s),
        repeat=None,
        **{name: _present(figures[name]) for name in MEDIAN_FIGURES},
    )
    sessions = timed["session"].where(timed["session"] != "", timed["timestamp"]).nunique()
    return Repeats(row, len(timed), sessions, float(medians.min()), float(medians.max()))


def merge_repeats(rows: Iterable[Row]) -> dict[tuple, Repeats]:
    """identity_of -> Repeats, in first-seen order."""
    groups = frame(rows).groupby("identity", sort=False)
    return {key: summarize_repeats(group) for key, group in groups}


def merged_rows(rows: Iterable[Row]) -> list[Row]:
    """One row per identity (its repeats merged by summarize_repeats), sorted."""
    return sort_rows(entry.row for entry in merge_repeats(rows).values())


@dataclasses.dataclass(frozen=True)
class SpeedUp:
    """Eager's median over a row's, from `pairs` paired repeats; low-high the 95% bootstrap
    interval (None: fewer than MIN_PAIRS pairs, or rows from before sessions)."""

    ratio: float
    low: float | None = None
    high: float | None = None
    pairs: int = 0

    @property
    def within_noise(self) -> bool:
        return self.low is not None and self.low <= 1.0 <= self.high

    def text(self) -> str:
        if self.low is None:
            note = "1 run" if self.pairs == 0 else counted(self.pairs, "pair")
            return f"{ratio_text(self.ratio)} ({note})"
        interval = f"{ratio_text(self.ratio)} [{ratio_digits(self.low)}, {ratio_digits(self.high)}]"
        return interval + (" within noise" if self.within_noise else "")


def place_of(row: Row) -> tuple:
    """Where a row and its baseline must agree: the identity but the backend, machine, host."""
    return (*(getattr(row, name) for name in pair_fields()), machine_of(row), row.hostname)


def speed_ups(rows: Sequence[Row]) -> dict[tuple, SpeedUp]:
    """identity_of -> SpeedUp over the eager baseline, for rows that pass parity.

    Rows of a session pair with the baseline's row of the same session and repeat (same host,
    same identity but the backend). Rows without a session (written before repeats existed)
    pair only with baseline rows without one, on the same host: a ratio, no interval. A row
    whose identity failed parity in any repeat gets none.
    """
    table = frame(rows)
    table = table[table["row"].map(is_measured).astype(bool)]
    if table.empty:  # no row was timed (every run failed): nothing to pair, and pandas would
        return {}  # read an empty object-dtype mask below as a list of columns
    table = table.assign(place=table["row"].map(place_of))
    baseline = table["row"].map(is_baseline)
    others = table[~baseline]
    failed = set(others.loc[~others["row"].map(record.passed), "identity"])
    others = others[~others["identity"].isin(failed)]
    eager = table.loc[baseline, ["place", "session", "repeat", "latency_ms_median"]]
    eager = eager.rename(columns={"latency_ms_median": "eager_ms"})
    found: dict[tuple, SpeedUp] = {}
    in_session = others[others["session"] != ""].merge(
        eager[eager["session"] != ""].drop_duplicates(["place", "session", "repeat"], keep="last"),
        on=["place", "session", "repeat"],
    )
    for key, pairs in in_session.groupby("identity", sort=False):
        base, other = list(pairs["eager_ms"]), list(pairs["latency_ms_median"])
        ratio = timing.ratio_of_medians(base, other)
        if len(pairs) >= MIN_PAIRS:
            low, high = timing.paired_interval(base, other)
            found[key] = SpeedUp(ratio, low, high, len(pairs))
        else:
            found[key] = SpeedUp(ratio, pairs=len(pairs))
    legacy_eager = eager[eager["session"] == ""].groupby("place", sort=False)["eager_ms"]
    legacy_eager = {place: list(medians) for place, medians in legacy_eager}
    legacy = others[(others["session"] == "") & others["place"].map(legacy_eager.__contains__)]
    for key, group in legacy.groupby("identity", sort=False):
        if key not in found:
            base = legacy_eager[group["place"].iloc[0]]
            found[key] = SpeedUp(timing.ratio_of_medians(base, list(group["latency_ms_median"])))
    return found

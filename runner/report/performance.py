"""Performance summary of a set of rows: takes the merged rows of a sweep, returns Markdown.

For each table (variant, shapes, input size) and precision: the eager baseline, the fastest
other backend whose answers pass parity, the speed-up, and where one call's time goes: the
GPU's own time (`gpu_busy_ms`, kernels and copies from the profiler) against the latency the
caller sees; the difference is time the GPU waits for the host (Python, launches, syncs).
`eager median / best GPU busy` is the ceiling on the speed-up that removing host time alone can
give. Optional targets (a YAML file, see results/targets.yaml) are checked against the same
figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.report.identity import (
    REFERENCE_BACKEND,
    backend_label,
    identity_of,
    is_baseline,
    table_key,
)
from runner.report.markdown import DASH, markdown_header, markdown_row, number, ratio_text
from runner.report.repeats import SpeedUp
from runner.report.rows import table_headings
from runner.run.record import Row, is_measured, passed

# what the time table says where a table and precision has no best row, by what its rows were
NO_OTHER_BACKEND = "no other backend"  # eager alone (a single run, `make demo`)
NO_PAIR = "another backend passed parity, measured in another session: no paired speed-up"
NO_PASS = "no other backend passed parity"  # failed parity, or was never timed


@dataclass(frozen=True)
class Best:
    """The eager row and the fastest parity-passing other row of one table and precision.
    `paired`: the best row's paired speed-up where the caller pairs rows; without it the
    speed-up is the ratio of the two medians. `missing`: why there is no best row (NO_*)."""

    eager: Row
    best: Row | None
    paired: SpeedUp | None = None
    missing: str = NO_OTHER_BACKEND

    @property
    def speed_up(self) -> float | None:
        if self.best is None:
            return None
        if self.paired is not None:
            return self.paired.ratio
        return self.eager.latency_ms_median / self.best.latency_ms_median

    def speed_up_text(self) -> str:
        if self.paired is not None:
            return self.paired.text()
        return ratio_text(self.speed_up)

    @property
    def ceiling(self) -> float | None:
        """Eager latency over the best row's GPU time: the speed-up with no host time left."""
        if self.best is None or not self.best.gpu_busy_ms:
            return None
        return self.eager.latency_ms_median / self.best.gpu_busy_ms


def over_busy(row: Row) -> float | None:
    """The row's median latency over its own GPU busy time (1.0: the GPU never waits)."""
    return row.latency_ms_median / row.gpu_busy_ms if row.gpu_busy_ms else None


Paired = Mapping[tuple, SpeedUp]  # identity_of -> paired speed-up (repeats.speed_ups)


def best_by_table(
    rows: Sequence[Row], paired: Paired | None = None
) -> list[tuple[tuple, str, Best]]:
    """(table_key, precision, Best) for every table and precision that has an eager row, in
    the order of `rows` (one row per identity: repeats merged). With `paired`, the best row is
    the one with the highest paired speed-up, and rows without one are not candidates; without
    it, the fastest."""
    found: dict[tuple, Best] = {}
    for row in rows:
        if is_baseline(row) and is_measured(row):
            found.setdefault((table_key(row), row.precision), Best(row, None))
    for row in rows:
        place = (table_key(row), row.precision)
        if place not in found or row.backend == REFERENCE_BACKEND:
            continue
        current = found[place]
        if current.best is None and current.missing != NO_PAIR:  # what there is, so far
            missing = NO_PAIR if passed(row) else NO_PASS
            current = found[place] = dataclasses.replace(current, missing=missing)
        if not passed(row):
            continue
        if paired is not None:
            speed_up = paired.get(identity_of(row))
            if speed_up is not None and (current.best is None or speed_up.ratio > current.speed_up):
                found[place] = Best(current.eager, row, speed_up)
        elif current.best is None or row.latency_ms_median < current.best.latency_ms_median:
            found[place] = Best(current.eager, row)
    return [(place[0], place[1], best) for place, best in found.items()]


def titles(rows: Sequence[Row]):
    """row -> the heading of its table in the report (runner.report.rows.table_headings)."""
    headings = table_headings(rows)
    return lambda row: headings[table_key(row)]


def _waits_ms(row: Row) -> float | None:
    """Median latency minus GPU busy time: how long the GPU waits for the host per call."""
    if row.gpu_busy_ms is None:
        return None
    return max(row.latency_ms_median - row.gpu_busy_ms, 0.0)


TIME_COLUMNS = (
    "Variant",
    "Precision",
    "Backend",
    "Median (ms)",
    "GPU busy (ms)",
    "GPU waits (ms)",
    "GPU ops / call",
    "Speed-up",
    "Ceiling",
    "Optimize (s)",
)
TIME_LEGEND = """\
Per variant and precision: eager, then the backend whose answers pass parity with the highest
speed-up. **GPU busy**: kernels and copies of one call (profiler); **GPU waits**: median minus
GPU busy, time the GPU spends waiting for the host (Python, kernel launches, host syncs);
**GPU ops / call**: kernels and copies one call launches; **Speed-up**: eager median over this
median, paired by repeat, with its 95% interval (as in the tables above); **Ceiling**: eager
median over this row's GPU busy, the speed-up if no host time were left; **Optimize**:
backend.optimize() plus the first call at each size. The kernels behind each GPU busy figure
are in the run's `profile.txt`."""


def time_table(rows: Sequence[Row], paired: Paired | None = None) -> str:
    """Markdown: where one call's time goes, eager against the best backend."""
    title = titles(rows)
    lines = markdown_header(TIME_COLUMNS, TIME_COLUMNS[:3])
    for _, precision, best in best_by_table(rows, paired):
        for row, is_best in ((best.eager, False), (best.best, True)):
            if row is None:
                cells = [title(best.eager), precision, best.missing]
                lines.append(markdown_row(cells + [""] * (len(TIME_COLUMNS) - 3)))
                continue
            lines.append(
                markdown_row(
                    [
                        title(row),
                        precision,
                        backend_label(row),
                        number(row.latency_ms_median, 2),
                        number(row.gpu_busy_ms, 2),
                        number(_waits_ms(row), 2),
                        DASH if row.gpu_ops is None else str(row.gpu_ops),
                        best.speed_up_text() if is_best else ratio_text(1.0),
                        ratio_text(best.ceiling if is_best else over_busy(row)),
                        number(row.optimize_s, 1),
                    ]
                )
            )
    return "\n".join(lines) + "\n\n" + TIME_LEGEND


HEADLINE_COLUMNS = ("Variant", "Precision", "Eager (ms)", "Best backend", "Median (ms)", "Speed-up")


def headline_table(rows: Sequence[Row], paired: Paired | None = None) -> str:
    """Markdown for the README: per table and precision, eager's median and the best row's
    (best_by_table: parity passed, the highest speed-up), one line each."""
    title = titles(rows)
    lines = markdown_header(HEADLINE_COLUMNS, ("Variant", "Precision", "Best backend"))
    for _, precision, best in best_by_table(rows, paired):
        eager = [title(best.eager), precision, number(best.eager.latency_ms_median, 2)]
        if best.best is None:
            lines.append(markdown_row(eager + [best.missing, DASH, DASH]))
            continue
        found = [backend_label(best.best), number(best.best.latency_ms_median, 2)]
        lines.append(markdown_row(eager + found + [best.speed_up_text()]))
    return "\n".join(lines)


# ---- targets ------------------------------------------------------------------------------


class TargetsError(ValueError):
    """The targets file cannot be read or says something this module does not check."""


@dataclass(frozen=True)
class Targets:
    # precision -> least speed-up of the best backend: one number for every variant, or
    # {default: x, <variant>: y} where some variants have their own
    speed_up: dict[str, float | dict[str, float]]
    latency: list[dict]  # {variant, precision, max_ms, max_over_gpu_busy}; "*" matches any

    def needed(self, precision: str, variant: str) -> float | None:
        value = self.speed_up.get(precision)
        if not isinstance(value, dict):
            return value
        return value.get(variant, value.get("default"))

    optimize_s_max: float | None
    source: str


def load_targets(path: Path) -> Targets:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise TargetsError(f"{path}: {error}") from error
    unknown = sorted(set(data) - {"speed_up", "latency", "optimize_s_max", "source"})
    if unknown:
        raise TargetsError(
            f"{path}: unknown key(s) {unknown}; allowed: speed_up, latency, optimize_s_max, source"
        )
    latency = list(data.get("latency") or [])
    for item in latency:
        extra = sorted(set(item) - {"variant", "precision", "max_ms", "max_over_gpu_busy"})
        if extra or "variant" not in item or "precision" not in item:
            raise TargetsError(
                f"{path}: latency entries take variant, precision, max_ms, max_over_gpu_busy "
                f"(got {sorted(item)})"
            )
    speed_up = {}
    for precision, value in (data.get("speed_up") or {}).items():
        if isinstance(value, dict):
            speed_up[str(precision)] = {str(v): float(x) for v, x in value.items()}
        elif isinstance(value, (int, float)):
            speed_up[str(precision)] = {"default": float(value)}
        else:
            raise TargetsError(
                f"{path}: speed_up.{precision} is a number or {{default: x, <variant>: y}}"
            )
    return Targets(
        speed_up=speed_up,
        latency=latency,
        optimize_s_max=data.get("optimize_s_max"),
        source=str(data.get("source", "")),
    )


def _verdict(ok: bool | None) -> str:
    return DASH if ok is None else ("met" if ok else "**missed**")


def speed_up_verdict(best: Best, needed: float) -> str:
    """met / missed; with an interval: met only when its low end clears the target, missed
    when its high end falls short, else the interval spans the target."""
    if best.speed_up is None:
        return DASH
    paired = best.paired
    if paired is None or getattr(paired, "low", None) is None:
        return _verdict(best.speed_up >= needed)
    if paired.low >= needed:
        return "met"
    if paired.high < needed:
        return "**missed**"
    return "within noise of the target"


TARGET_COLUMNS = ("Target", "Variant", "Precision", "Needed", "Measured", "Verdict")


def targets_table(rows: Sequence[Row], targets: Targets, paired: Paired | None = None) -> str:
    """Markdown: each target, what was needed, what was measured, met or missed."""
    title = titles(rows)
    lines = markdown_header(TARGET_COLUMNS, ("Target", "Variant", "Precision", "Verdict"))
    bests = best_by_table(rows, paired)
    measured = {row_precision for _, row_precision, _ in bests}
    for precision in targets.speed_up:
        if precision not in measured:  # a target with no rows is never left out in silence
            needed = " / ".join(
                f"{ratio_text(x)}" + ("" if v == "default" else f" ({v})")
                for v, x in targets.speed_up[precision].items()
            )
            lines.append(
                markdown_row(
                    [
                        "speed-up over eager",
                        "every variant",
                        precision,
                        needed,
                        f"no {precision} rows in this file",
                        "not measured",
                    ]
                )
            )
        for _, row_precision, best in bests:
            needed = targets.needed(precision, best.eager.variant or title(best.eager))
            if row_precision != precision or needed is None:
                continue
            by = f" ({backend_label(best.best)})" if best.best is not None else ""
            lines.append(
                markdown_row(
                    [
                        "speed-up over eager",
                        title(best.eager),
                        precision,
                        ratio_text(needed),
                        (best.speed_up_text() if best.best is not None else DASH) + by,
                        speed_up_verdict(best, needed),
                    ]
                )
            )
    for item in targets.latency:
        for _, row_precision, best in bests:
            variant = best.eager.variant or title(best.eager)
            if item["variant"] not in ("*", variant) or item["precision"] not in (
                "*",
                row_precision,
            ):
                continue
            fastest = best.best or best.eager
            if "max_ms" in item:
                ok = fastest.latency_ms_median <= item["max_ms"]
                lines.append(
                    markdown_row(
                        [
                            "median latency",
                            variant,
                            row_precision,
                            f"≤ {item['max_ms']:.2f} ms",
                            f"{fastest.latency_ms_median:.2f} ms ({backend_label(fastest)})",
                            _verdict(ok),
                        ]
                    )
                )
            if "max_over_gpu_busy" in item:
                ratio = over_busy(fastest)
                ok = None if ratio is None else ratio <= item["max_over_gpu_busy"]
                lines.append(
                    markdown_row(
                        [
                            "median / GPU busy",
                            variant,
                            row_precision,
                            f"≤ {ratio_text(item['max_over_gpu_busy'])}",
                            f"{ratio_text(ratio)} ({backend_label(fastest)})",
                            _verdict(ok),
                        ]
                    )
                )
    if targets.optimize_s_max is not None:
        timed = [r for r in rows if r.optimize_s is not None and is_measured(r)]
        if timed:
            slowest = max(timed, key=lambda r: r.optimize_s)
            ok = slowest.optimize_s <= targets.optimize_s_max
            lines.append(
                markdown_row(
                    [
                        "optimize time, slowest run",
                        title(slowest),
                        slowest.precision,
                        f"≤ {targets.optimize_s_max:.0f} s",
                        f"{slowest.optimize_s:.1f} s ({backend_label(slowest)})",
                        _verdict(ok),
                    ]
                )
            )
    source = f" ({targets.source})" if targets.source else ""
    return f"Targets{source}, checked against the rows above:\n\n" + "\n".join(lines)


def section(
    rows: Sequence[Row],
    targets: Targets | None = None,
    level: int = 3,
    machine: str = "",
    paired: Paired | None = None,
    figure: str = "",
) -> str:
    """The performance section of one machine's rows (repeats merged): the time table (and
    `figure`, Markdown of its picture, where given), then the targets table where targets
    given; headings at `level`, naming `machine` where given (one section per machine).
    `paired`: see best_by_table."""
    hashes, on = "#" * level, f": {machine}" if machine else ""
    parts = [f"{hashes} Where the time goes{on}", time_table(rows, paired)]
    if figure:
        parts.append(figure)
    if targets is not None:
        parts += [f"{hashes} Targets{on}", targets_table(rows, targets, paired)]
    return "\n\n".join(parts)

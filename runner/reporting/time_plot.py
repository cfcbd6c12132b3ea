"""The "where the time goes" figure: takes the rows of one results file, returns a Drawing with
one point per variant, backend and precision at (GPU busy ms, median latency ms), repeats
merged, and the diagonal latency = GPU busy: the floor, where the GPU never waits for the host.
A point's height above the diagonal is host time. Rows that fail parity, were not measured, or
have no GPU busy figure get no point; the Drawing says why.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from runner.reporting.identity import REFERENCE_BACKEND, backend_label, table_key
from runner.reporting.repeats import merged_rows
from runner.reporting.rows import PRECISION_ORDER, panel_titles, rank
from runner.reporting.style import (
    FLOOR_COLOUR,
    PRECISION_MARKER,
    Drawing,
    Mark,
    backend_colours,
    font,
    left_out_text,
    legend_name,
    new_figure,
    short_labels,
)
from runner.run import record
from runner.run.record import Row

TITLE = "Where the time goes: median latency against the GPU's own time per call"


def why_no_point(row: Row) -> str:
    if not record.is_measured(row):
        return row.status
    if not record.passed(row):
        return "parity FAIL"
    return "no GPU busy figure" if not row.gpu_busy_ms else ""


def draw_time(rows: Sequence[Row]) -> Drawing | None:
    """The figure, or None where no row has both a median and a GPU busy time."""
    merged = merged_rows(rows)
    titles = panel_titles(rows)
    labels = list(dict.fromkeys(backend_label(row) for row in merged))
    colours = backend_colours(labels)
    shorts, notes = short_labels(labels)
    marks = []
    for row in merged:
        title, label = titles[table_key(row)], backend_label(row)
        reason = why_no_point(row)
        if reason:
            marks.append(Mark(title, label, row.precision, left_out=reason))
        else:
            marks.append(Mark(title, label, row.precision, row.gpu_busy_ms, row.latency_ms_median))
    points = [mark for mark in marks if not mark.left_out]
    if not points:
        return None
    precisions = sorted({m.precision for m in points}, key=lambda p: rank(p, PRECISION_ORDER))
    low = min(min(m.x, m.y) for m in points) / 1.3
    high = max(max(m.x, m.y) for m in points) * 1.3
    with font():
        figure = new_figure(height=4.9)
        panels = figure.subplots(1, len(precisions), sharex=True, sharey=True, squeeze=False)[0]
        drawing = Drawing("where_time_goes", figure, marks, notes=notes)
        for axes, precision in zip(panels, precisions, strict=True):
            draw_panel(axes, [m for m in points if m.precision == precision], colours, low, high)
            axes.set_title(precision)
            drawing.lines.append((precision, "latency = GPU busy", 1.0))
        panels[0].set_ylabel("median latency per call (ms)")
        footer = [text for text in (left_out_text(marks, shorts), *notes) if text]
        figure.supxlabel(
            "\n".join(
                ["GPU busy per call (ms): kernels and copies, from the profiler"]
                + [textwrap.fill(text, 140) for text in footer]
            ),
            fontsize=8,
        )
        figure.suptitle(TITLE, fontsize=10)
        legend(figure, labels, colours, shorts, points)
    return drawing


def draw_panel(axes, points: list[Mark], colours: dict[str, str], low: float, high: float) -> None:
    """One precision: the diagonal, each point, and a line from each variant's eager point to
    its other backends' points, labelled at eager (or at the point where eager has none)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.plot([low, high], [low, high], color=FLOOR_COLOUR, linewidth=1)
    axes.fill_between([low, high], [low, high], low, color="#eeeeee", zorder=0)
    axes.text(
        high / 1.1,
        low * 1.15,
        "diagonal: latency = GPU busy,\nthe floor (the GPU never waits)",
        ha="right",
        va="bottom",
        fontsize=7.5,
    )
    eager = {m.panel: m for m in points if m.backend == REFERENCE_BACKEND}
    for mark in points:
        start = eager.get(mark.panel)
        if start is not None and start is not mark:
            axes.plot(
                [start.x, mark.x], [start.y, mark.y], color=colours[mark.backend],
                linewidth=0.8, alpha=0.5, zorder=2,
            )  # fmt: skip
        axes.scatter(
            mark.x,
            mark.y,
            s=30,
            color=colours[mark.backend],
            marker=PRECISION_MARKER.get(mark.precision, "s"),
            edgecolors="white",
            linewidths=0.5,
            zorder=3,
        )
        if start is None or start is mark:
            axes.annotate(
                mark.panel,
                (mark.x, mark.y),
                xytext=(-4, 0),
                textcoords="offset points",
                ha="right",
                va="center",
                fontsize=6.5,
                color="#333333",
            )
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_aspect("equal")
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    axes.grid(linewidth=0.4, alpha=0.5)


def legend(figure, labels, colours, shorts, points) -> None:
    from matplotlib.lines import Line2D

    shown = [label for label in labels if any(m.backend == label for m in points)]
    precisions = sorted({m.precision for m in points}, key=lambda p: rank(p, PRECISION_ORDER))
    handles = [
        Line2D(
            [], [], linestyle="", marker="o", color=colours[label],
            label=legend_name(label, shorts[label]),
        )
        for label in shown
    ] + [
        Line2D([], [], linestyle="", marker=PRECISION_MARKER.get(p, "s"), color="grey", label=p)
        for p in precisions
    ]  # fmt: skip
    figure.legend(handles=handles, loc="outside right upper", frameon=False)

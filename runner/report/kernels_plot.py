"""The kernel figures: takes the rows of one results file, returns Drawings.

    stages      one stacked horizontal bar per variant, precision and backend: ms per stage of
                one uncaptured call (runner.stages), a colour per stage
    throughput  images per second against batch size, a line per model, precision and backend
                measured at several batches (sweep=throughput); log-2 batch axis

Rows come merged over repeats; a figure with nothing to draw is None.
"""

from __future__ import annotations

from collections.abc import Sequence

from runner import stages
from runner.report import style
from runner.report.identity import backend_label, title_of
from runner.report.kernels import (
    STAGE_TITLES,
    has_stages,
    stage_basis,
    stage_values,
    throughput_lines,
)
from runner.report.repeats import merged_rows
from runner.run.record import Row

# one colour per stage, in stage order (matplotlib's tab10, "other" grey)
STAGE_COLOURS = {
    "preprocess": "#17becf",
    "backbone": "#1f77b4",
    "head": "#ff7f0e",
    "proposals": "#2ca02c",
    "roi_pool": "#d62728",
    "boxes": "#9467bd",
    "mask_head": "#8c564b",
    "keypoint_head": "#bcbd22",
    "paste": "#e377c2",
    "other": "#7f7f7f",
}


def draw_stages(rows: Sequence[Row]) -> style.Drawing | None:
    """The stacked bars, or None where no row has stage figures."""
    shown = [row for row in merged_rows(rows) if has_stages(row)]
    if not shown:
        return None
    from matplotlib.patches import Patch

    labels = [f"{title_of(r)} {r.precision} {backend_label(r)}" for r in shown]
    names = [n for n in stages.STAGES if any(stage_values(r)[n] for r in shown)]
    marks = []
    with style.font():
        figure = style.new_figure(height=1.6 + 0.32 * len(shown))
        axes = figure.add_subplot()
        left = [0.0] * len(shown)
        for name in names:
            widths = [stage_values(r)[name] or 0.0 for r in shown]
            axes.barh(labels, widths, left=left, color=STAGE_COLOURS[name], label=name)
            for row, width, start in zip(shown, widths, left, strict=True):
                marks.append(
                    style.Mark(title_of(row), backend_label(row), row.precision, start, width)
                )
            left = [a + b for a, b in zip(left, widths, strict=True)]
        axes.invert_yaxis()
        note = stage_basis(shown)
        axes.set_xlabel(f"ms per call, by stage\n{note}")
        axes.set_title("Where the time goes, by stage")
        axes.grid(axis="x", alpha=0.3)
        handles = [Patch(color=STAGE_COLOURS[n], label=STAGE_TITLES[n]) for n in names]
        axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    return style.Drawing("stages", figure, marks, notes=[note])


def draw_throughput(rows: Sequence[Row]) -> style.Drawing | None:
    """Images per second against batch, or None where nothing was measured at two batches."""
    lines_of = throughput_lines(merged_rows(rows))
    if not lines_of:
        return None
    labels = style.in_order(key[4] for key in lines_of)
    colours = style.backend_colours(labels)
    marks = []
    with style.font():
        figure = style.new_figure(height=4.2)
        axes = figure.add_subplot()
        for key, found in lines_of.items():
            model, precision, label = key[0], key[3], key[4]
            batches = [r.batch for r in found]
            fps = [r.fps_median for r in found]
            axes.plot(
                batches,
                fps,
                color=colours[label],
                linestyle=style.PRECISION_LINE.get(precision, "-"),
                marker="o" if "mask" in model else "s",
                label=f"{model} {precision} {label}",
            )
            marks += [
                style.Mark(model, label, precision, float(r.batch), r.fps_median) for r in found
            ]
        axes.set_xscale("log", base=2)
        axes.set_ylim(bottom=0)
        batches = sorted({int(m.x) for m in marks})
        axes.set_xticks(batches, [str(b) for b in batches])
        axes.set_xlabel("batch (images per call)")
        axes.set_ylabel("images per second (batch / median latency)")
        axes.set_title("Throughput by batch size")
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    return style.Drawing("throughput", figure, marks)

"""Plots: takes the rows of one results file (and the targets), writes the report's PNG figures
into a folder and returns what it wrote, by name, for the README to embed each figure next to
the table it summarises:

    speedup          speed-up over eager per variant   (runner.report.speedup_plot)
    where_time_goes  median latency against GPU busy   (runner.report.time_plot)
    latency_vs_size  latency against input size        (runner.report.size_plot)
    stages           ms per stage of one call, stacked (runner.report.kernels_plot)
    throughput       images per second against batch   (runner.report.kernels_plot)

Where a variant has rows at static and at dynamic shapes, the first two figures show its static
ones (one panel or point per variant) and say so; its dynamic ones are latency_vs_size's. A
figure with nothing to draw (no other backend than eager, no GPU busy times, no dynamic
shapes) is not written, and an old file of that name is left as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from runner.report.kernels_plot import draw_stages, draw_throughput
from runner.report.performance import Targets
from runner.report.size_plot import draw_sizes
from runner.report.speedup_plot import draw_speedup
from runner.report.style import Drawing, save_figure
from runner.report.time_plot import draw_time
from runner.run.record import Row

log = logging.getLogger(__name__)

# name -> what the README's image says it shows (its alt text)
FIGURES = {
    "speedup": "Speed-up over eager per variant, fp32 and fp16, with 95% intervals",
    "where_time_goes": "Median latency against GPU busy time per variant and backend",
    "latency_vs_size": "Median latency against input size, shapes=dynamic",
    "stages": "Milliseconds per stage of one uncaptured call per variant and backend",
    "throughput": "Images per second against batch size per model and backend",
}


def drawings(rows: Sequence[Row], targets: Targets | None = None) -> dict[str, Drawing]:
    """Each figure that has something to draw, by name, in FIGURES order."""
    drawn = {
        "speedup": draw_speedup(rows, targets),
        "where_time_goes": draw_time(rows),
        "latency_vs_size": draw_sizes(rows),
        "stages": draw_stages(rows),
        "throughput": draw_throughput(rows),
    }
    for name, drawing in drawn.items():
        if drawing is None:
            log.info("nothing to draw for %s.png; not written", name)
    return {name: drawing for name, drawing in drawn.items() if drawing is not None}


def plot(
    rows: Sequence[Row], folder: str | Path, targets: Targets | None = None
) -> dict[str, Path]:
    """Write <name>.png in `folder` for each figure with something to draw. Returns name ->
    path written."""
    written = {}
    for name, drawing in drawings(rows, targets).items():
        path = Path(folder) / f"{name}.png"
        save_figure(drawing.figure, path)
        written[name] = path
    return written

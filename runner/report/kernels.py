"""Kernels: takes the merged rows of one machine, returns the report's Markdown on the GPU work
itself: where one call's time goes by stage (runner.stages), the FLOP/s each row achieves
against the GPU's peak (runner.run.flops), and images per second by batch (sweep=throughput).
Each table is there only where some row has its figures. docs/kernels.md says what each is.
"""

from __future__ import annotations

from collections.abc import Sequence

from runner import stages
from runner.report.identity import backend_label, title_of
from runner.report.markdown import DASH, markdown_header, markdown_row, number
from runner.run.record import Row, is_measured

STAGE_TITLES = {
    "preprocess": "Preprocess",
    "backbone": "Backbone+FPN",
    "head": "RPN/dense head",
    "proposals": "Proposals+NMS",
    "roi_pool": "ROI pool",
    "boxes": "Box head+NMS",
    "mask_head": "Mask head",
    "keypoint_head": "Keypoint head",
    "paste": "Paste",
    "other": "Other",
}
ROW_COLUMNS = ("Variant", "Precision", "Backend")


def stage_values(row: Row) -> dict[str, float | None]:
    """The row's ms per stage (None: a stage the call never entered)."""
    return {name: getattr(row, stages.column(name)) for name in stages.STAGES}


def has_stages(row: Row) -> bool:
    return is_measured(row) and row.stage_other_ms is not None


def stage_basis(rows: Sequence[Row]) -> str:
    """What the stage figures of `rows` are: GPU time where they ran on a GPU, else host time."""
    kinds = {"cuda" if row.gpu_name else "cpu" for row in rows}
    return "; ".join(stages.STAGE_BASIS[kind] for kind in sorted(kinds))


def stages_table(rows: Sequence[Row], level: int) -> str:
    """Per variant, precision and backend, ms per stage and their total; "" where no row has
    stage figures."""
    shown = [row for row in rows if has_stages(row)]
    if not shown:
        return ""
    names = [n for n in stages.STAGES if any(stage_values(r)[n] is not None for r in shown)]
    columns = (*ROW_COLUMNS, *(f"{STAGE_TITLES[n]} (ms)" for n in names), "Total (ms)")
    lines = [
        f"{'#' * level} Where the time goes, by stage",
        "",
        f"ms per stage: {stage_basis(shown)}. Stages that a call never entered are "
        f"{DASH}. Traced code keeps no stage ranges, nor does compiled code unless asked "
        "(static_graph compile_stages=true: a second compile that keeps them, whose stages "
        "these are), so rows without ranges are not here (docs/kernels.md).",
        "",
        *markdown_header(columns, ROW_COLUMNS),
    ]
    for row in shown:
        values = stage_values(row)
        total = sum(v for v in values.values() if v is not None)
        cells = [number(values[n], 3) for n in names]
        lines.append(
            markdown_row(
                [title_of(row), row.precision, backend_label(row), *cells, number(total, 3)]
            )
        )
    return "\n".join(lines)


def percent(share: float | None) -> str:
    return DASH if share is None else f"{100 * share:.1f}%"


def flops_table(rows: Sequence[Row], level: int) -> str:
    """Per variant, precision and backend: GFLOP per call, the median, the achieved TFLOP/s
    and its share of the peak; "" where no row has a FLOP count."""
    shown = [row for row in rows if is_measured(row) and row.gflop_per_call is not None]
    if not shown:
        return ""
    columns = (
        *ROW_COLUMNS,
        "Batch",
        "GFLOP per call",
        "Median (ms)",
        "TFLOP/s",
        "Peak (TFLOP/s)",
        "Share of peak",
    )
    lines = [
        f"{'#' * level} FLOP/s",
        "",
        "GFLOP per call: the matrix work of one call (convolutions, linear layers, matmuls; "
        "a multiply-add is 2), counted once per variant by PyTorch's FlopCounterMode on the "
        "eager model; TFLOP/s: that over the median latency; Share of peak: of the GPU's dense "
        "tensor-core peak for the precision (runner/run/flops.py gives the table and its "
        f"source; {DASH} for a GPU not in it).",
        "",
        *markdown_header(columns, ROW_COLUMNS),
    ]
    for row in shown:
        lines.append(
            markdown_row(
                [
                    title_of(row),
                    row.precision,
                    backend_label(row),
                    str(row.batch),
                    number(row.gflop_per_call, 1),
                    number(row.latency_ms_median, 2),
                    number(row.tflop_per_s, 2),
                    number(row.peak_tflop_per_s, 1),
                    percent(row.peak_share),
                ]
            )
        )
    return "\n".join(lines)


def throughput_key(row: Row) -> tuple:
    """Rows of one throughput line: all but the batch (and the variant's name, which names it)."""
    return (
        row.model,
        row.export,
        row.postprocess,
        row.precision,
        backend_label(row),
        row.shapes,
        row.image_hw,
    )


def throughput_lines(rows: Sequence[Row]) -> dict[tuple, list[Row]]:
    """throughput_key -> its measured rows by batch, for the keys measured at two batches or
    more (a line has at least two points)."""
    lines: dict[tuple, list[Row]] = {}
    for row in rows:
        if is_measured(row):
            lines.setdefault(throughput_key(row), []).append(row)
    return {
        key: sorted(found, key=lambda r: r.batch)
        for key, found in lines.items()
        if len({r.batch for r in found}) > 1
    }


def throughput_table(rows: Sequence[Row], level: int) -> str:
    """Images per second and latency per batch, for each model, precision and backend measured
    at several batch sizes; "" where none was."""
    lines_of = throughput_lines(rows)
    if not lines_of:
        return ""
    columns = (
        "Model",
        "Precision",
        "Backend",
        "Batch",
        "Images/s",
        "Latency per batch (ms)",
        "Per image (ms)",
    )
    lines = [
        f"{'#' * level} Throughput",
        "",
        "Images per second: batch over the median latency of one call; the latency is that "
        "of the whole batch (`python -m runner sweep=throughput`).",
        "",
        *markdown_header(columns, ("Model", "Precision", "Backend")),
    ]
    for key, found in lines_of.items():
        for row in found:
            lines.append(
                markdown_row(
                    [
                        f"{row.model} ({row.image_hw})",
                        row.precision,
                        key[4],
                        str(row.batch),
                        number(row.fps_median, 1),
                        number(row.latency_ms_median, 2),
                        number(row.latency_ms_median / row.batch, 3),
                    ]
                )
            )
    return "\n".join(lines)


def section(rows: Sequence[Row], level: int, figures: Sequence[str] = ()) -> str:
    """The three tables (those with figures), then the figures' links; "" where none."""
    parts = [
        stages_table(rows, level),
        flops_table(rows, level),
        throughput_table(rows, level),
    ]
    if not any(parts):
        return ""
    return "\n\n".join(part for part in [*parts, *figures] if part)

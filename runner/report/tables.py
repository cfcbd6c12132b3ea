"""Tables: takes the rows of one results file (one per repeat), returns the report's Markdown:
a provenance header and one table per variant (repeats merged, paired speed-ups), the plots'
links, a legend, then where the time goes and the targets (runner.report.performance).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from runner.report import host, kernels, performance
from runner.report.identity import backend_label, identity_of, is_baseline, machine_of, table_key
from runner.report.markdown import (
    DASH,
    as_code,
    bullet,
    counted,
    joined,
    markdown_header,
    markdown_row,
    number,
)
from runner.report.plots import FIGURES
from runner.report.repeats import Repeats, SpeedUp, merge_repeats, merged_rows, speed_ups
from runner.report.rows import sort_rows, table_headings
from runner.run.record import Row, is_measured

ERROR_CHARS = 100

TABLE_COLUMNS = (
    "Backend",
    "Precision",
    "Repeats",
    "Median (ms)",
    "Spread (ms)",
    "Median (FPS)",
    "p99 (ms)",
    "GPU busy (ms)",
    "Speed-up",
    "Parity",
    "Detections",
)


TEXT_COLUMNS = ("Backend", "Precision", "Parity")  # left-aligned; the rest are numbers
# accuracy columns, shown in a table where its rows have the figure (runs with dataset=...)
ACCURACY_KINDS = {"box": "Box AP", "mask": "Mask AP", "keypoint": "Keypoint AP"}


LEGEND = """\
Columns:

- **Repeats**: timed blocks behind the figures (each of `iters` calls; one row each in the
  results CSV), and in how many sessions they were measured where more than one.
- **Median (ms)**: latency per call of `batch` images at the table's input size: the median of
  the repeats' medians. **Spread (ms)**: the lowest and highest repeat median.
- **Median (FPS)**: images per second at that median. **p99 (ms)**: the median of the
  repeats' 99th percentiles.
- **GPU busy (ms)**: the profiler's kernel (and copy) time of one call; the rest of a call's
  latency is host work and waiting.
- **Speed-up**: eager's median latency at the same precision over this row's, from repeats
  paired in time: only rows of one session (the backends timed in turn by one parent on one
  host) and the same repeat pair up. [low, high] is the 95% bootstrap interval over the pairs;
  "within noise" where it includes 1.00x. "(1 run)": rows of one run each (no repeats), on
  the same host, no interval. — where there is no partner, and for rows that fail parity.
- **Parity**: outputs against eager fp32 on the same input: pass or FAIL against the tolerances,
  with the F1 of matched detections (1.00: the same detections).
- **Detections**: detections of the timed model at the table's input size, all images of the
  batch; "(ref N)" where eager fp32 found a different number.
- **unsupported / error**: the run could not apply or failed; the first line of its reason is
  shown instead of numbers, and the results CSV has the whole of it."""

ACCURACY_LEGEND = """\
- **Box AP**, **Mask AP**, **Keypoint AP** (runs with a dataset): COCO's AP over IoU
  0.50:0.95 (pycocotools' COCOeval), in points (x 100), of the timed callable on the dataset's
  images, each letterboxed to the table's input size (Dataset above); in brackets, this AP
  minus that of eager fp32 with TF32 off on the same images (+0.00: the same answers)."""


def distinct(rows: Iterable[Row], field: str) -> list[str]:
    return sorted(
        {str(getattr(row, field)) for row in rows if getattr(row, field) not in ("", None)}
    )


def protocol(warmup: int, iters: int, rewarm: int | None = None, repeats: str = "") -> str:
    if rewarm is None:  # rows without repeats (one run each)
        return f"{warmup} warm-up + {iters} timed calls, device synchronized around each; median"
    return (
        f"{warmup} warm-up calls, then {repeats or 'repeated'} blocks of {rewarm} untimed + "
        f"{iters} timed calls, device synchronized around each; backends of a session take "
        "turns block by block; median of the blocks' medians"
    )


def machine_text(rows: Sequence[Row]) -> str:
    """GPU, driver, CUDA and CPU of the rows (each value that occurs, comma-joined)."""
    return (
        f"GPU {joined(distinct(rows, 'gpu_name'))}, driver {joined(distinct(rows, 'gpu_driver'))},"
        f" CUDA {joined(distinct(rows, 'cuda_version'))}; CPU {joined(distinct(rows, 'cpu_model'))}"
    )


def software_text(rows: Sequence[Row]) -> str:
    """torch, detectron2, Python and backend versions of the rows."""
    backends = sorted({f"{r.backend} ({r.backend_version})" for r in rows if r.backend_version})
    return (
        f"torch {joined(distinct(rows, 'torch_version'))}, detectron2 "
        f"{joined(distinct(rows, 'detectron2_version'))}, Python "
        f"{joined(distinct(rows, 'python_version'))}; backends {joined(backends)}"
    )


def protocol_texts(rows: Sequence[Row]) -> list[str]:
    """One protocol() text per (warmup, iters, rewarm) that the rows used."""
    found: dict[tuple, set] = {}
    for r in rows:
        if None not in (r.warmup, r.iters):
            found.setdefault((r.warmup, r.iters, r.rewarm), set()).add(r.repeats)
    texts = []
    for (warmup, iters, rewarm), repeats in sorted(found.items(), key=lambda i: str(i[0])):
        counts = "/".join(str(n) for n in sorted(n for n in repeats if n is not None))
        texts.append(protocol(warmup, iters, rewarm, counts))
    return texts


def provenance(rows: Sequence[Row]) -> str:
    """What made these rows: machine, software, protocol, weights, commands, code version."""
    return "\n".join(
        [
            bullet("Machine", [machine_text(rows)]),
            bullet("Software", [software_text(rows)]),
            bullet("Protocol", protocol_texts(rows)),
            bullet("Weights", [f"`{w}`" for w in distinct(rows, "weights")]),
            *([bullet("Dataset", datasets)] if (datasets := dataset_texts(rows)) else []),
            bullet("Command", [f"`{c}`" for c in distinct(rows, "command")]),
            bullet("git", [as_code(distinct(rows, "git_sha"))]),
        ]
    )


def dataset_texts(rows: Sequence[Row]) -> list[str]:
    """Each dataset of the accuracy passes, with the images scored: "`name:file@sha256:...`
    (300 images)"."""
    found = {(r.accuracy_dataset, r.accuracy_images) for r in rows if r.accuracy_dataset}
    return [f"`{name}` ({counted(images or 0, 'image')})" for name, images in sorted(found)]


def accuracy_kinds(rows: Iterable[Row]) -> list[str]:
    """The ACCURACY_KINDS that any of the rows has a figure for, in ACCURACY_KINDS' order."""
    rows = list(rows)
    return [
        k for k in ACCURACY_KINDS if any(getattr(r, f"accuracy_{k}_ap") is not None for r in rows)
    ]


def ap_text(row: Row, kind: str) -> str:
    """AP in points, and the difference from the reference's in brackets: "41.2 (-0.03)"."""
    ap = getattr(row, f"accuracy_{kind}_ap")
    if ap is None:
        return DASH
    versus = getattr(row, f"accuracy_{kind}_ap_vs_ref")
    return f"{100 * ap:.1f}" + ("" if versus is None else f" ({100 * versus:+.2f})")


def parity_text(row: Row) -> str:
    if row.parity_pass is None:
        return DASH
    verdict = "pass" if row.parity_pass else "FAIL"
    return verdict if row.parity_match_f1 is None else f"{verdict} (F1 {row.parity_match_f1:.2f})"


def detections_text(row: Row) -> str:
    if row.num_detections is None:
        return DASH
    ref = row.num_detections_ref
    differs = ref is not None and ref != row.num_detections
    return f"{row.num_detections} (ref {ref})" if differs else str(row.num_detections)


def failure_text(row: Row) -> str:
    """'status: first line of the error', cut to ERROR_CHARS."""
    first = (row.error.strip().splitlines() or [""])[0]
    if len(first) > ERROR_CHARS:
        first = first[: ERROR_CHARS - 1].rstrip() + "…"
    return f"{row.status}: {first}" if first else row.status


def repeats_text(entry: Repeats) -> str:
    if entry.sessions > 1:
        return f"{entry.count} ({entry.sessions} sessions)"
    return str(entry.count)


def spread_text(entry: Repeats) -> str:
    if entry.count < 2 or entry.low is None:
        return DASH
    return f"{entry.low:.2f}–{entry.high:.2f}"


def speed_up_text(row: Row, found: SpeedUp | None) -> str:
    if is_baseline(row):
        return "1.00x"
    return DASH if found is None else found.text()


def table_row(entry: Repeats, found: SpeedUp | None, kinds: Sequence[str] = ()) -> str:
    row = entry.row
    accuracy = [ap_text(row, kind) for kind in kinds]
    if is_measured(row):
        figures = [
            repeats_text(entry),
            number(row.latency_ms_median, 2),
            spread_text(entry),
            number(row.fps_median, 1),
            number(row.latency_ms_p99, 2),
            number(row.gpu_busy_ms, 2),
            speed_up_text(row, found),
            parity_text(row),
            detections_text(row),
        ]
    else:
        figures = [failure_text(row)] + [""] * (len(TABLE_COLUMNS) - 3)
    return markdown_row([backend_label(row), row.precision, *figures, *accuracy])


def table_subtitle(row: Row) -> str:
    return (
        f"model `{row.model}`, export `{row.export or DASH}`, batch {row.batch}, postprocess "
        f"{'yes' if row.postprocess else 'no'}; input {row.image_hw or DASH} (H x W), "
        f"{row.shapes or DASH} shapes"
    )


def variant_table(
    entries: Sequence[Repeats], found: dict[tuple, SpeedUp], heading: str, level: int
) -> str:
    """One table: the entries of one table_key, already sorted."""
    kinds = accuracy_kinds(entry.row for entry in entries)
    columns = (*TABLE_COLUMNS, *(f"{ACCURACY_KINDS[kind]} (vs ref)" for kind in kinds))
    lines = [
        f"{'#' * level} {heading}",
        "",
        table_subtitle(entries[0].row),
        "",
        *markdown_header(columns, TEXT_COLUMNS),
    ]
    lines += [table_row(entry, found.get(identity_of(entry.row)), kinds) for entry in entries]
    return "\n".join(lines)


def variant_tables(rows: Sequence[Row], level: int) -> list[str]:
    """One table per table_key of the rows (every repeat; they are merged here)."""
    entries = {identity_of(e.row): e for e in merge_repeats(rows).values()}
    found = speed_ups(rows)
    groups: dict[tuple, list[Repeats]] = {}
    for row in sort_rows(e.row for e in entries.values()):
        groups.setdefault(table_key(row), []).append(entries[identity_of(row)])
    headings = table_headings(rows)
    return [variant_table(group, found, headings[key], level) for key, group in groups.items()]


def figure_link(plots: Mapping[str, str], name: str) -> str:
    """The Markdown image of figure `name` (runner.report.plots.FIGURES), "" where absent."""
    return f"![{FIGURES[name]}]({plots[name]})" if name in plots else ""


def tables(
    rows: Sequence[Row],
    results_csv: str = "",
    plots: Mapping[str, str] | None = None,
    targets: performance.Targets | None = None,
) -> str:
    """Markdown: provenance, one table per variant (a section per machine where several), the
    speed-up and input-size figures, a legend, then where the time goes with its figure (and the
    targets, where given). `plots`: figure name -> link, as runner.report.plots names them."""
    plots = plots or {}
    by_machine: dict[str, list[Row]] = {}
    for row in sort_rows(rows):
        by_machine.setdefault(machine_of(row), []).append(row)
    mixed = len(by_machine) > 1
    parts = [f"Results CSV: `{results_csv}` ({counted(len(rows), 'row')}, one per repeat)."]
    if not results_csv:
        parts = []
    for machine in sorted(by_machine):
        if mixed:
            parts.append(f"### {machine}")
        parts.append(provenance(by_machine[machine]))
        parts.extend(variant_tables(by_machine[machine], level=4 if mixed else 3))
    legend = LEGEND + ("\n" + ACCURACY_LEGEND if accuracy_kinds(rows) else "")
    parts += [figure_link(plots, "speedup"), figure_link(plots, "latency_vs_size"), legend]
    for index, machine in enumerate(sorted(by_machine)):
        section = performance.section(
            merged_rows(by_machine[machine]),
            targets,
            level=4 if mixed else 3,
            machine=machine if mixed else "",
            paired=speed_ups(by_machine[machine]),
            figure=figure_link(plots, "where_time_goes") if index == 0 else "",
        )
        parts.append(section)
        figures = [figure_link(plots, "stages"), figure_link(plots, "throughput")]
        parts.append(
            kernels.section(
                merged_rows(by_machine[machine]),
                level=4 if mixed else 3,
                figures=figures if index == 0 else (),
            )
        )
        parts.append(host.section(by_machine[machine], level=4 if mixed else 3))
    return "\n\n".join(part for part in parts if part) + "\n"


HEADLINE_LEGEND = """\
Median latency per call at the variant's input size; **Best backend**: the one whose answers
pass parity with the highest speed-up; **Speed-up**: eager's median over its median, paired by
repeat (the backends of a session timed in turns), with its 95% interval."""


def headline(
    rows: Sequence[Row], tables_link: str = "", plots: Mapping[str, str] | None = None
) -> str:
    """Markdown for the README's headline: per machine, the machine and the protocol, then per
    variant and precision eager against its best backend, a legend, a link to the full tables
    (`tables_link`, where given) and the speed-up figure. `plots` as for tables()."""
    plots = plots or {}
    by_machine: dict[str, list[Row]] = {}
    for row in sort_rows(rows):
        by_machine.setdefault(machine_of(row), []).append(row)
    parts = []
    for machine in sorted(by_machine):
        found = by_machine[machine]
        if len(by_machine) > 1:
            parts.append(f"### {machine}")
        parts.append(
            "\n".join(
                [
                    bullet("Machine", [machine_text(found)]),
                    bullet("Protocol", protocol_texts(found)),
                ]
            )
        )
        parts.append(performance.headline_table(merged_rows(found), speed_ups(found)))
    parts.append(HEADLINE_LEGEND)
    if tables_link:
        parts.append(
            f"Every backend's row, parity, GPU busy time, the targets and the commands that made "
            f"them: [{tables_link}]({tables_link})."
        )
    parts.append(figure_link(plots, "speedup"))
    return "\n\n".join(part for part in parts if part) + "\n"

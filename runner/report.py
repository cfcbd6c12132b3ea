"""Report: merges the rows of many runs into one results CSV, Markdown tables, a README block and
plots.

Takes result.csv files: folders are searched recursively for `result.csv`, and CSV files named on
the command line are read as they are (a results CSV written by this tool is one). Returns:

- the merged rows, one per identity (the newest `timestamp` wins; every dropped row is logged),
  refused when they come from more than one machine unless mixed machines are allowed;
- the results CSV (`--out`), sorted in the seed's variant order, then precision, then backend;
- Markdown: a provenance header and one table per variant, with a legend (`tables`);
- the README block between `<!-- d2bench:results:begin -->` and `<!-- d2bench:results:end -->`;
- PNG plots: speed-up over eager, and latency against image size for dynamic-shape rows.

    python -m runner.report outputs/ results/old.csv --out results/h200_seed.csv \\
        --readme README.md --plots results/plots

Compare mode sets two results files (or run folders) side by side, to compare machines:

    python -m runner.report --compare results/h200_seed.csv results/a100_seed.csv \\
        [--out-md results/h200_vs_a100.md]

Each side is read as above (skips and duplicates reported; one machine per file unless mixed
machines are allowed), and rows are paired by identity without the machine. Markdown (stdout, or
`--out-md`): each side's file, machine, software and protocol, then one table per variant with
both medians, B/A latency, GPU busy and parity of each side, and the rows only in A and only in B.
The two modes' arguments cannot be mixed.

Files that cannot be read are skipped with their reason and reported; the exit code is 0 then.
It is 2 for usage errors, refused mixed machines, a README without markers, and no rows at all
(in compare mode: no rows in either file).
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import datetime
import functools
import io
import logging
import os
import re
import shlex
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from runner import performance, record, timing
from runner.markdown import DASH, markdown_header, markdown_row, number, ratio_text
from runner.performance import REFERENCE_BACKEND, is_baseline
from runner.record import Row, is_measured

log = logging.getLogger("runner.report")

SEED_SWEEP = Path(__file__).resolve().parents[1] / "conf" / "sweep" / "seed.yaml"
SEED_VARIANTS = (  # used when conf/sweep/seed.yaml cannot be read
    "RetinaNet",
    "RetinaNet_scripted",
    "MaskRCNNC4",
    "MaskRCNNFPN",
    "MaskRCNNFPN_b2",
    "MaskRCNNFPN_pproc",
    "CascadeRCNN",
)
PRECISION_ORDER = ("fp32", "fp16", "bf16")
SHAPES_ORDER = ("static", "dynamic")
IDENTITY = (
    "model",
    "variant",
    "export",
    "batch",
    "postprocess",
    "precision",
    "backend",
    "backend_options",
    "shapes",
    "image_hw",
    # what else decides what is measured: rows that differ here are never merged
    "image",
    "arch_options",
    "thresholds",
    "seed",
    "weights",
    "warmup",
    "iters",
    "rewarm",
    "timing_options",
)
# what --compare pairs rows of two machines by: what the model computes, not the protocol
COMPARE_FIELDS = tuple(
    name
    for name in IDENTITY
    if name not in ("weights", "warmup", "iters", "rewarm", "timing_options")
)
# what pairs a row with its baseline: the identity without the backend
PAIR_FIELDS = tuple(name for name in IDENTITY if name not in ("backend", "backend_options"))
OLDEST = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
ERROR_CHARS = 100
BEGIN_MARKER = "<!-- d2bench:results:begin -->"
END_MARKER = "<!-- d2bench:results:end -->"
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
  "within noise" where it includes 1.00x. "(1 run)": rows from before repeats, one run each on
  the same host, no interval. — where there is no partner, and for rows that fail parity.
- **Parity**: outputs against eager fp32 on the same input: pass or FAIL against the tolerances,
  with the F1 of matched detections (1.00: the same detections).
- **Detections**: detections of the timed model at the table's input size, all images of the
  batch; "(ref N)" where eager fp32 found a different number.
- **unsupported / error**: the run could not apply or failed; the first line of its reason is
  shown instead of numbers, and the results CSV has the whole of it."""


COMPARE_COLUMNS = (
    "Backend",
    "Precision",
    "A median (ms)",
    "B median (ms)",
    "B/A latency",
    "A GPU busy (ms)",
    "B GPU busy (ms)",
    "A parity",
    "B parity",
)
ONLY_COLUMNS = (
    "Variant",
    "Shapes",
    "Input",
    "Backend",
    "Precision",
    "Median (ms)",
    "GPU busy (ms)",
    "Parity",
)
COMPARE_TEXT_COLUMNS = (
    "Machine",
    "Variant",
    "Shapes",
    "Input",
    "Backend",
    "Precision",
    "Parity",
    "A parity",
    "B parity",
)
COMPARE_LEGEND = """\
Columns:

- **A / B median (ms)**: median latency per call of `batch` images, in milliseconds, at the
  table's input size, each on its own file's machine.
- **B/A latency**: B's median latency divided by A's (below 1.00x: B is faster; — where either
  side has no measurement).
- **A / B GPU busy (ms)**: the profiler's kernel (and copy) time of one call.
- **A / B parity**: outputs against eager fp32 of the same file: pass or FAIL against the
  tolerances, with the F1 of matched detections.
- **unsupported / error**: the run could not apply or failed; its status is shown instead of
  numbers, and the first line of its reason is listed under the table."""


# ---- collect ------------------------------------------------------------------------------


def collect(paths: Iterable[str | Path]) -> tuple[list[Row], list[tuple[str, str]]]:
    """Rows of every result.csv under the folders (recursively) and of the CSV files given.

    Returns (rows, skipped): a file that cannot be read as rows of this version's columns is
    skipped, and (its path, a one-line reason) is logged and returned.
    """
    rows: list[Row] = []
    skipped: list[tuple[str, str]] = []
    for path in result_files(paths):
        try:
            found = record.read_rows(path)
        except (OSError, ValueError, csv.Error) as error:
            reason = one_line_reason(path, error)
            log.warning("skipped %s: %s", path, reason)
            skipped.append((str(path), reason))
            continue
        log.debug("read %d rows from %s", len(found), path)
        rows.extend(found)
    return rows, skipped


def result_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to read: result.csv under each folder, each other path as given, each once."""
    files: list[Path] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        found = sorted(path.rglob("result.csv")) if path.is_dir() else [path]
        if path.is_dir() and not found:
            log.warning("no result.csv under %s (name merged results CSVs as files)", path)
        for file in found:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                files.append(file)
    return files


def one_line_reason(path: Path, error: Exception) -> str:
    """The error's first line, without the path that the report already names."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    else:
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = text.removeprefix(f"{path}:").strip()
    return re.sub(r"^(\d+): ", r"line \1: ", text)


# ---- merge --------------------------------------------------------------------------------


def machine_of(row: Row) -> str:
    """The GPU's name, or the CPU's where the row ran without a GPU."""
    if row.gpu_name:
        return row.gpu_name
    return f"CPU {row.cpu_model}" if row.cpu_model else "unknown machine"


def pair_key(row: Row) -> tuple:
    """What --compare pairs rows of two files by: COMPARE_FIELDS (no machine, no protocol)."""
    return tuple(getattr(row, name) for name in COMPARE_FIELDS)


def identity_of(row: Row) -> tuple:
    """What a row measured: IDENTITY and the machine. Rows that differ here never merge."""
    return (*(getattr(row, name) for name in IDENTITY), machine_of(row))


def backend_label(row: Row) -> str:
    """The backend, with the options it ran with where they differ from its conf file's."""
    return f"{row.backend} [{row.backend_options}]" if row.backend_options else row.backend


def describe(row: Row) -> str:
    return (
        f"{title_of(row)} {row.precision} {backend_label(row)} {row.shapes} {row.image_hw} "
        f"on {machine_of(row)}"
    )


def moment(row: Row) -> datetime.datetime:
    """The row's timestamp as an aware time; rows without a readable one count as the oldest."""
    try:
        when = datetime.datetime.fromisoformat(row.timestamp.replace("Z", "+00:00"))
    except ValueError:
        return OLDEST
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


def drop_duplicates(rows: Iterable[Row]) -> tuple[list[Row], list[Row]]:
    """Drop copies: a row equal in every column to one already seen (the same file read twice,
    or a results CSV next to the run folders it came from). Rows that differ anywhere are kept:
    two measurements of one identity are repeats, shown as spread. Returns (kept, dropped)."""
    seen: set[tuple] = set()
    kept: list[Row] = []
    dropped: list[Row] = []
    for row in rows:
        key = tuple(getattr(row, name) for name in record.COLUMNS)
        if key in seen:
            dropped.append(row)
            log.info("copy of %s from %s dropped", describe(row), row.output_dir or "(no dir)")
            continue
        seen.add(key)
        kept.append(row)
    return kept, dropped


# ---- repeats and speed-ups ------------------------------------------------------------------


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


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize_repeats(rows: Sequence[Row]) -> Repeats:
    """One identity's rows as one Repeats. A parity failure in any repeat makes it fail."""
    timed = [r for r in rows if is_measured(r)]
    if not timed:
        newest = max(rows, key=moment)
        return Repeats(newest, 0, 0, None, None)
    medians = [r.latency_ms_median for r in timed]
    median = statistics.median(medians)
    failing = [r for r in timed if not record.passed(r)]
    base = failing[0] if failing else max(timed, key=moment)
    row = record.replace(
        base,
        latency_ms_median=median,
        latency_ms_mean=_median(r.latency_ms_mean for r in timed),
        latency_ms_p99=_median(r.latency_ms_p99 for r in timed),
        latency_ms_std=_median(r.latency_ms_std for r in timed),
        latency_ms_min=min(r.latency_ms_min for r in timed if r.latency_ms_min is not None)
        if any(r.latency_ms_min is not None for r in timed)
        else None,
        fps_median=base.batch * 1000.0 / median,
        fps_mean=_median(r.fps_mean for r in timed),
        latency_ms_median_min_shape=_median(r.latency_ms_median_min_shape for r in timed),
        latency_ms_median_max_shape=_median(r.latency_ms_median_max_shape for r in timed),
        gpu_busy_ms=_median(r.gpu_busy_ms for r in timed),
        optimize_s=_median(r.optimize_s for r in timed),
        repeat=None,
    )
    sessions = len({r.session or r.timestamp for r in timed})
    return Repeats(row, len(timed), sessions, min(medians), max(medians))


def merge_repeats(rows: Iterable[Row]) -> dict[tuple, Repeats]:
    """identity_of -> Repeats, in first-seen order."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(identity_of(row), []).append(row)
    return {key: summarize_repeats(group) for key, group in groups.items()}


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
            return f"{self.ratio:.2f}x ({note})"
        interval = f"{self.ratio:.2f}x [{self.low:.2f}, {self.high:.2f}]"
        return interval + (" within noise" if self.within_noise else "")


MIN_PAIRS = 3  # fewer paired repeats give a ratio without an interval


def _pair_place(row: Row) -> tuple:
    return (*(getattr(row, name) for name in PAIR_FIELDS), machine_of(row), row.hostname)


def speed_ups(rows: Iterable[Row]) -> dict[tuple, SpeedUp]:
    """identity_of -> SpeedUp over the eager baseline, for rows that pass parity.

    Rows of a session pair with the baseline's row of the same session and repeat (same host,
    same identity but the backend). Rows without a session (written before repeats existed)
    pair only with baseline rows without one, on the same host: a ratio, no interval.
    """
    rows = list(rows)
    baselines: dict[tuple, Row] = {}
    legacy_baselines: dict[tuple, list[float]] = {}
    for row in rows:
        if is_baseline(row) and is_measured(row):
            if row.session:
                baselines[(*_pair_place(row), row.session, row.repeat)] = row
            else:
                legacy_baselines.setdefault(_pair_place(row), []).append(row.latency_ms_median)
    pairs: dict[tuple, list[tuple[float, float]]] = {}
    legacy: dict[tuple, tuple[tuple, list[float]]] = {}  # identity -> (place, medians)
    failed: set[tuple] = set()
    for row in rows:
        if not is_measured(row) or is_baseline(row):
            continue
        key = identity_of(row)
        if not record.passed(row):
            failed.add(key)  # a fast wrong answer gets no speed-up, whatever its repeats did
            continue
        if row.session:
            partner = baselines.get((*_pair_place(row), row.session, row.repeat))
            if partner is not None:
                pairs.setdefault(key, []).append((partner.latency_ms_median, row.latency_ms_median))
        elif _pair_place(row) in legacy_baselines:
            legacy.setdefault(key, (_pair_place(row), []))[1].append(row.latency_ms_median)
    found: dict[tuple, SpeedUp] = {}
    for key, paired in pairs.items():
        base, other = zip(*paired, strict=True)
        ratio = timing.ratio_of_medians(base, other)
        if len(paired) >= MIN_PAIRS:
            low, high = timing.paired_interval(base, other)
            found[key] = SpeedUp(ratio, low, high, len(paired))
        else:
            found[key] = SpeedUp(ratio, pairs=len(paired))
    for key, (place, medians) in legacy.items():
        if key not in found:
            found[key] = SpeedUp(timing.ratio_of_medians(legacy_baselines[place], medians))
    return {key: value for key, value in found.items() if key not in failed}


class MixedMachines(ValueError):
    """Rows from more than one machine, where one was expected."""


def machines(rows: Iterable[Row]) -> list[str]:
    return sorted({machine_of(row) for row in rows})


def require_one_machine(rows: Sequence[Row], allow_mixed: bool = False) -> None:
    """Raise MixedMachines naming the machines, unless there is one or mixing is allowed."""
    names = machines(rows)
    if len(names) > 1 and not allow_mixed:
        raise MixedMachines(
            f"rows come from {len(names)} machines: {', '.join(map(repr, names))}; "
            "report each machine on its own, or pass --allow-mixed-gpus for one section each"
        )


# ---- order --------------------------------------------------------------------------------


@functools.lru_cache
def seed_variant_order(sweep: Path = SEED_SWEEP) -> tuple[str, ...]:
    """The variant names of the seed sweep, in its order (the constant where it is unreadable)."""
    try:
        from omegaconf import OmegaConf

        return tuple(OmegaConf.load(sweep).hydra.sweeper.variants.keys())
    except Exception as error:  # a missing or reshaped file: the constant, logged once per path
        log.info("variant order from SEED_VARIANTS: %s unreadable (%s)", sweep, error)
        return SEED_VARIANTS


def rank(value: str, order: Sequence[str]) -> tuple[int, str]:
    """Position in `order`; values outside it after, alphabetically."""
    return (order.index(value), "") if value in order else (len(order), value)


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    """Seed variant order (others after, by name), then precision, then backend (eager first)."""
    variants = seed_variant_order()

    def order(row: Row) -> tuple:
        return (
            rank(row.variant, variants),
            title_of(row),
            rank(row.shapes, SHAPES_ORDER),
            row.image_hw,
            rank(row.precision, PRECISION_ORDER),
            rank(backend_label(row), (REFERENCE_BACKEND,)),
            machine_of(row),
        )

    return sorted(rows, key=order)


def write(rows: Iterable[Row], out: str | Path) -> list[Row]:
    """Write the rows, sorted, to `out` atomically. Returns them in that order."""
    ordered = sort_rows(rows)
    record.write_rows(Path(out), ordered)
    return ordered


# ---- figures ------------------------------------------------------------------------------


def title_of(row: Row) -> str:
    """The variant's name, or one built from what defines it: "mask_rcnn_fpn (trace, batch 2)"."""
    if row.variant:
        return row.variant
    details = [row.export] if row.export else []
    details.append(f"batch {row.batch}")
    if row.postprocess:
        details.append("postprocess")
    return f"{row.model} ({', '.join(details)})"


SETUP_FIELDS = ("image", "arch_options", "thresholds", "seed", "warmup", "iters", "rewarm")


def setup_of(row: Row) -> tuple:
    """What else a table holds fixed: input photo, arch options, thresholds, seed, protocol."""
    return tuple(getattr(row, name) for name in SETUP_FIELDS)


def table_key(row: Row) -> tuple:
    """Rows that share one table: machine, variant, shapes, input size and setup_of."""
    return (machine_of(row), title_of(row), row.shapes, row.image_hw, setup_of(row))


def speed_up(row: Row, rows: Iterable[Row]) -> float | None:
    """The row's speed-up over eager (runner.report.speed_ups; 1.0 for an eager row itself),
    None where it has none: no partner, or its answers fail parity."""
    if is_baseline(row) and is_measured(row):
        return 1.0
    found = speed_ups(rows).get(identity_of(row))
    return None if found is None else found.ratio


def pixels(image_hw: str) -> int | None:
    """Pixels of an "HxW" size; None where it is not one."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", image_hw or "")
    return int(match[1]) * int(match[2]) if match else None


# ---- Markdown -----------------------------------------------------------------------------


def distinct(rows: Iterable[Row], field: str) -> list[str]:
    return sorted(
        {str(getattr(row, field)) for row in rows if getattr(row, field) not in ("", None)}
    )


def joined(values: Sequence[str]) -> str:
    return ", ".join(values) if values else DASH


def as_code(values: Sequence[str]) -> str:
    return joined([f"`{value}`" for value in values])


def bullet(label: str, values: Sequence[str]) -> str:
    """One bullet; several values (commands, protocols) become sub-bullets of it."""
    if len(values) <= 1:
        return f"- **{label}:** {values[0] if values else DASH}"
    return "\n".join([f"- **{label}:**", *(f"  - {value}" for value in values)])


def protocol(warmup: int, iters: int, rewarm: int | None = None, repeats: str = "") -> str:
    if rewarm is None:  # rows from before repeats
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
            bullet("Command", [f"`{c}`" for c in distinct(rows, "command")]),
            bullet("git", [as_code(distinct(rows, "git_sha"))]),
        ]
    )


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


def table_row(entry: Repeats, found: SpeedUp | None) -> str:
    row = entry.row
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
    return markdown_row([backend_label(row), row.precision, *figures])


def table_subtitle(row: Row) -> str:
    return (
        f"model `{row.model}`, export `{row.export or DASH}`, batch {row.batch}, postprocess "
        f"{'yes' if row.postprocess else 'no'}; input {row.image_hw or DASH} (H x W), "
        f"{row.shapes or DASH} shapes"
    )


def table_headings(rows: Iterable[Row]) -> dict[tuple, str]:
    """A heading per table_key: the variant's title, with its shapes and input size where one
    variant has several tables on one machine, and the setup fields that differ between them."""
    keys = list(dict.fromkeys(table_key(row) for row in sort_rows(rows)))
    tables_of = collections.Counter(key[:2] for key in keys)
    headings = {}
    for key in keys:
        heading = key[1]
        if tables_of[key[:2]] > 1:
            siblings = [other[4] for other in keys if other[:2] == key[:2]]
            differ = [
                f"{name} {_setup_value(key[4][i])}"
                for i, name in enumerate(SETUP_FIELDS)
                if len({setup[i] for setup in siblings}) > 1
            ]
            heading += f" ({', '.join([f'{key[2]} shapes', key[3], *differ])})"
        headings[key] = heading
    return headings


def _setup_value(value) -> str:
    return DASH if value in ("", None) else str(value)


def variant_table(
    entries: Sequence[Repeats], found: dict[tuple, SpeedUp], heading: str, level: int
) -> str:
    """One table: the entries of one table_key, already sorted."""
    lines = [
        f"{'#' * level} {heading}",
        "",
        table_subtitle(entries[0].row),
        "",
        *markdown_header(TABLE_COLUMNS, TEXT_COLUMNS),
    ]
    lines += [table_row(entry, found.get(identity_of(entry.row))) for entry in entries]
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


def plot_links(plots: Sequence[str]) -> str:
    return "\n\n".join(f"![{Path(p).stem.replace('_', ' ')}]({p})" for p in plots)


def tables(
    rows: Sequence[Row],
    results_csv: str = "",
    plots: Sequence[str] = (),
    targets: performance.Targets | None = None,
) -> str:
    """Markdown: provenance, one table per variant (a section per machine where several), the
    plots (links as given), a legend, then where the time goes (and the targets, where given)."""
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
    if plots:
        parts.append(plot_links(plots))
    parts.append(LEGEND)
    for machine in sorted(by_machine):
        headings = table_headings(by_machine[machine])
        found = speed_ups(by_machine[machine])
        merged = sort_rows(e.row for e in merge_repeats(by_machine[machine]).values())
        section = performance.section(
            merged,
            table_key,
            lambda row, headings=headings: headings[table_key(row)],
            backend_label,
            targets,
            level=4 if mixed else 3,
            machine=machine if mixed else "",
            speedup=lambda row, found=found: found.get(identity_of(row)),
        )
        parts.append(section)
    return "\n\n".join(parts) + "\n"


# ---- README -------------------------------------------------------------------------------


def results_block_span(lines: Sequence[str]) -> tuple[int, int]:
    """Indexes of the begin and end marker lines; ValueError where missing, doubled or reversed."""
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN_MARKER]
    ends = [i for i, line in enumerate(lines) if line.strip() == END_MARKER]
    if len(begins) != 1 or len(ends) != 1:
        raise ValueError(
            f"the README needs exactly one line {BEGIN_MARKER} and one line {END_MARKER} "
            f"(found {len(begins)} and {len(ends)})"
        )
    if begins[0] > ends[0]:
        raise ValueError(f"{END_MARKER} comes before {BEGIN_MARKER} in the README")
    return begins[0], ends[0]


def update_readme(text: str, block: str, command: str = "python -m runner.report ...") -> str:
    """The README text with the lines between the markers replaced by a generated-by note and
    the block; the markers and everything outside them are kept byte for byte."""
    lines = text.splitlines(keepends=True)
    begin, end = results_block_span(lines)
    generated = f"Generated by `{command}`; do not edit by hand.\n\n{block.rstrip()}\n"
    return "".join(lines[: begin + 1]) + "\n" + generated + "\n" + "".join(lines[end:])


# ---- plots --------------------------------------------------------------------------------


def save_figure(figure, path: Path) -> None:
    """Save as PNG so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    record.write_atomic(path, buffer.getvalue())


def new_figure(width: float, height: float):
    """A figure drawn by Agg, without pyplot's global state (matplotlib imported here only)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def plot_labels(rows: Sequence[Row]) -> dict[tuple, str]:
    """A label per table_key: its heading, and the machine where rows come from several."""
    mixed = len(machines(rows)) > 1
    return {
        key: f"{heading} ({key[0]})" if mixed else heading
        for key, heading in table_headings(rows).items()
    }


def merged_rows(rows: Iterable[Row]) -> list[Row]:
    """One row per identity (its repeats merged, runner.report.summarize_repeats), sorted."""
    return sort_rows(entry.row for entry in merge_repeats(rows).values())


def speedup_bars(rows: Sequence[Row]) -> dict[str, dict[str, SpeedUp]]:
    """{"variant / backend": {precision: speed-up}} for rows of non-eager backends that were
    measured and pass parity (a fast wrong answer gets no bar)."""
    labels = plot_labels(rows)
    found = speed_ups(rows)
    bars: dict[str, dict[str, float]] = {}
    for row in merged_rows(rows):
        paired = found.get(identity_of(row))
        if row.backend != REFERENCE_BACKEND and paired is not None and record.passed(row):
            bars.setdefault(f"{labels[table_key(row)]} / {backend_label(row)}", {})[
                row.precision
            ] = paired
    return bars


def plot_speedup(rows: Sequence[Row], path: Path) -> bool:
    """Grouped bars: per variant and backend, one bar per precision. False where none exist."""
    bars = speedup_bars(rows)
    if not bars:
        log.info("no speed-up over eager to plot; %s not written", path)
        return False
    precisions = sorted(
        {p for group in bars.values() for p in group}, key=lambda p: rank(p, PRECISION_ORDER)
    )
    width = 0.8 / len(precisions)
    figure = new_figure(max(6.0, 1.1 * len(bars)), 4.5)
    axes = figure.add_subplot()
    for i, precision in enumerate(precisions):
        offset = (i - (len(precisions) - 1) / 2) * width
        slots = [
            (n, group[precision]) for n, group in enumerate(bars.values()) if precision in group
        ]
        errors = [
            [v.ratio - v.low if v.low is not None else 0.0 for _, v in slots],
            [v.high - v.ratio if v.high is not None else 0.0 for _, v in slots],
        ]
        axes.bar(
            [n + offset for n, _ in slots],
            [value.ratio for _, value in slots],
            width,
            yerr=errors,
            capsize=2,
            label=precision,
            color=f"C{i}",
        )
    axes.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="eager")
    ticks = [label.replace(" / ", "\n") for label in bars]
    axes.set_xticks(range(len(bars)), ticks, fontsize=7, rotation=30, ha="right")
    axes.set_ylabel("speed-up over eager (median latency ratio)")
    axes.set_title(
        "Speed-up over eager at the same precision (runs that pass parity; 95% interval)"
    )
    axes.legend(title="precision")
    save_figure(figure, path)
    return True


def latency_lines(rows: Sequence[Row]) -> dict[str, list[tuple[int, float]]]:
    """{"variant backend precision": [(pixels, median ms), ...]} for dynamic rows that pass
    parity (a wrong answer gets no line)."""
    labels = plot_labels(rows)
    lines: dict[str, list[tuple[int, float]]] = {}
    for row in merged_rows(rows):
        if row.shapes != "dynamic" or not record.passed(row):
            continue
        sizes = [
            (row.image_hw_min, row.latency_ms_median_min_shape),
            (row.image_hw, row.latency_ms_median),
            (row.image_hw_max, row.latency_ms_median_max_shape),
        ]
        points = [(pixels(hw), ms) for hw, ms in sizes if pixels(hw) and ms is not None]
        if points:
            lines[f"{labels[table_key(row)]} {backend_label(row)} {row.precision}"] = sorted(points)
    return lines


def plot_latency_vs_size(rows: Sequence[Row], path: Path) -> bool:
    """Median latency against image pixels, one line per variant, backend and precision."""
    lines = latency_lines(rows)
    if not lines:
        log.info("no dynamic-shape rows; %s not written", path)
        return False
    figure = new_figure(7.0, 4.5)
    axes = figure.add_subplot()
    for label, points in lines.items():
        axes.plot([p / 1e6 for p, _ in points], [ms for _, ms in points], marker="o", label=label)
    axes.set_xlabel("image size (megapixels, h x w)")
    axes.set_ylabel("median latency per call (ms)")
    axes.set_title("Latency against input size (dynamic shapes)")
    axes.legend(fontsize=7)
    save_figure(figure, path)
    return True


def plot(rows: Sequence[Row], folder: str | Path) -> list[Path]:
    """Write speedup.png and latency_vs_size.png (where there is something to draw) in `folder`.
    Returns the paths written."""
    folder = Path(folder)
    written = []
    for name, draw in (
        ("speedup.png", plot_speedup),
        ("latency_vs_size.png", plot_latency_vs_size),
    ):
        if draw(rows, folder / name):
            written.append(folder / name)
    return written


# ---- compare ------------------------------------------------------------------------------


def pair_rows(
    a_rows: Iterable[Row], b_rows: Iterable[Row]
) -> tuple[list[tuple[Row, Row]], list[Row], list[Row]]:
    """Pair rows of A and B that share pair_key (the identity without the machine).

    Returns (pairs, only_a, only_b), each in sort_rows order (pairs by their A row). A key with
    several rows on a side (several machines, where mixing was allowed) pairs each A row with each
    B row; a row with no partner goes to only_a or only_b, so none is lost.
    """
    a_sorted, b_sorted = sort_rows(a_rows), sort_rows(b_rows)
    b_by_key: dict[tuple, list[Row]] = {}
    for row in b_sorted:
        b_by_key.setdefault(pair_key(row), []).append(row)
    pairs: list[tuple[Row, Row]] = []
    only_a: list[Row] = []
    for row in a_sorted:
        partners = b_by_key.get(pair_key(row), [])
        pairs.extend((row, partner) for partner in partners)
        if not partners:
            only_a.append(row)
    a_keys = {pair_key(row) for row in a_sorted}
    only_b = [row for row in b_sorted if pair_key(row) not in a_keys]
    return pairs, only_a, only_b


def latency_ratio(a: Row, b: Row) -> float | None:
    """B's median latency over A's; None where either was not measured (or A's is 0)."""
    if not (is_measured(a) and is_measured(b)) or not a.latency_ms_median:
        return None
    return b.latency_ms_median / a.latency_ms_median


def side_cells(row: Row) -> tuple[str, str, str]:
    """(median ms, GPU busy ms, parity) of one side; its status instead of numbers where it did
    not run to a measurement."""
    if not is_measured(row):
        return row.status, DASH, DASH
    return number(row.latency_ms_median, 2), number(row.gpu_busy_ms, 2), parity_text(row)


def pair_row(a: Row, b: Row) -> str:
    (a_median, a_busy, a_parity), (b_median, b_busy, b_parity) = side_cells(a), side_cells(b)
    ratio = ratio_text(latency_ratio(a, b))
    return markdown_row(
        [
            backend_label(a),
            a.precision,
            a_median,
            b_median,
            ratio,
            a_busy,
            b_busy,
            a_parity,
            b_parity,
        ]
    )


def failure_notes(labelled: Iterable[tuple[str, Row]]) -> list[str]:
    """'- label: status: first line of the error' for each row that was not measured."""
    return [f"- {label}: {failure_text(row)}" for label, row in labelled if not is_measured(row)]


def compare_table_key(row: Row) -> tuple[str, str, str]:
    """Pairs that share one comparison table: variant, shapes and input size (no machine)."""
    return (title_of(row), row.shapes, row.image_hw)


def compare_tables(pairs: Sequence[tuple[Row, Row]], level: int) -> list[str]:
    """One table per compare_table_key of the A rows (pairs already in order), each followed by
    the reasons of the rows that were not measured."""
    groups: dict[tuple, list[tuple[Row, Row]]] = {}
    for a, b in pairs:
        groups.setdefault(compare_table_key(a), []).append((a, b))
    tables_of = collections.Counter(key[0] for key in groups)
    parts = []
    for key, group in groups.items():
        heading = key[0] + (f" ({key[1]} shapes, {key[2]})" if tables_of[key[0]] > 1 else "")
        lines = [f"{'#' * level} {heading}", "", table_subtitle(group[0][0]), ""]
        lines += markdown_header(COMPARE_COLUMNS, COMPARE_TEXT_COLUMNS)
        lines += [pair_row(a, b) for a, b in group]
        labelled = [
            (f"{side} {backend_label(row)} {row.precision}", row)
            for a, b in group
            for side, row in (("A", a), ("B", b))
        ]
        notes = failure_notes(labelled)
        parts.append("\n".join(lines + ([""] + notes if notes else [])))
    return parts


def only_section(side: str, other: str, rows: Sequence[Row], names: dict[str, str]) -> str:
    """The rows of one side with no partner in the other: a table, or a line saying none."""
    lines = [f"### Only in {side}", ""]
    if not rows:
        lines.append(f"None: every row of {side} has a partner in {other}.")
        return "\n".join(lines)
    with_machine = len(machines(rows)) > 1
    columns = (("Machine",) if with_machine else ()) + ONLY_COLUMNS
    lines.append(f"Rows of {side} (`{names[side]}`) with no row of the same identity in {other}:")
    lines += ["", *markdown_header(columns, COMPARE_TEXT_COLUMNS)]
    for row in rows:
        machine = [machine_of(row)] if with_machine else []
        identity = [title_of(row), row.shapes, row.image_hw, backend_label(row), row.precision]
        lines.append(markdown_row([*machine, *identity, *side_cells(row)]))
    labelled = [
        (f"{title_of(row)} {row.shapes} {row.image_hw} {backend_label(row)} {row.precision}", row)
        for row in rows
    ]
    notes = failure_notes(labelled)
    return "\n".join(lines + ([""] + notes if notes else []))


def side_summary(side: str, name: str, rows: Sequence[Row]) -> str:
    """A bullet naming the file and its machine, with machine, software and protocol below."""
    return "\n".join(
        [
            f"- **{side}:** `{name}`: {joined(machines(rows))} ({counted(len(rows), 'row')})",
            f"  - **Machine:** {machine_text(rows)}",
            f"  - **Software:** {software_text(rows)}",
            f"  - **Protocol:** {'; '.join(protocol_texts(rows)) or DASH}",
        ]
    )


def comparison(a_rows: Sequence[Row], b_rows: Sequence[Row], a_name: str, b_name: str) -> str:
    """Markdown comparing two results files: a header per side, one table per variant of the
    paired rows (a section per pair of machines where a side has several), the rows only in A
    and only in B, and a legend."""
    pairs, only_a, only_b = pair_rows(a_rows, b_rows)
    names = {"A": a_name, "B": b_name}
    parts = [
        f"## Comparison: A `{a_name}`, B `{b_name}`",
        side_summary("A", a_name, a_rows) + "\n" + side_summary("B", b_name, b_rows),
        f"Rows paired by identity without the machine ({', '.join(COMPARE_FIELDS)}): "
        f"{counted(len(pairs), 'pair')}; {len(only_a)} only in A, {len(only_b)} only in B.",
    ]
    sections: dict[tuple[str, str], list[tuple[Row, Row]]] = {}
    for a, b in pairs:
        sections.setdefault((machine_of(a), machine_of(b)), []).append((a, b))
    mixed = len(sections) > 1
    for machine_a, machine_b in sorted(sections):
        if mixed:
            parts.append(f"### {machine_a} (A) against {machine_b} (B)")
        parts.extend(compare_tables(sections[machine_a, machine_b], level=4 if mixed else 3))
    if not pairs:
        parts.append("No row of A has a row of the same identity in B.")
    parts.append(only_section("A", "B", only_a, names))
    parts.append(only_section("B", "A", only_b, names))
    parts.append(COMPARE_LEGEND)
    return "\n\n".join(parts) + "\n"


# ---- command line -------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runner.report",
        description="Merge result.csv rows into a results CSV, README tables and plots "
        "(INPUTS... --out FILE), or compare two results files side by side "
        "(--compare A.csv B.csv [--out-md FILE]).",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        help="merge mode: folders (searched for result.csv) or results CSV files",
    )
    parser.add_argument(
        "--out", type=Path, help="merge mode: results CSV to write (without it: print the tables)"
    )
    parser.add_argument(
        "--readme", type=Path, help="merge mode: README whose results block to rewrite"
    )
    parser.add_argument(
        "--plots", type=Path, help="merge mode: folder for speedup.png, latency_vs_size.png"
    )
    parser.add_argument(
        "--targets",
        type=Path,
        help="merge mode: YAML of speed-up, latency and optimize-time targets to check "
        "(results/targets.yaml)",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("A", "B"),
        help="compare mode: two results files (or run folders), rows paired by identity "
        "without the machine; Markdown to stdout, or to --out-md",
    )
    parser.add_argument("--out-md", type=Path, help="compare mode: write the Markdown here")
    parser.add_argument(
        "--allow-mixed-gpus",
        action="store_true",
        help="accept rows from several machines (in compare mode: within one file): "
        "one section per machine",
    )
    args = parser.parse_args(argv)
    check_mode(parser, args)
    return args


def check_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (exit 2, with the usage) arguments of the two modes mixed, or a mode incomplete."""
    if args.compare:
        merge_only = [
            label
            for label, given in (
                (f"inputs ({' '.join(map(str, args.inputs))})", args.inputs),
                ("--out", args.out),
                ("--readme", args.readme),
                ("--plots", args.plots),
                ("--targets", args.targets),
            )
            if given
        ]
        if merge_only:
            parser.error(
                f"--compare cannot be mixed with merge mode's {', '.join(merge_only)}: compare "
                "with --compare A.csv B.csv [--out-md FILE], or merge with INPUTS... --out FILE"
            )
        return
    if args.out_md is not None:
        parser.error("--out-md belongs to compare mode: --compare A.csv B.csv --out-md FILE")
    if not args.inputs:
        parser.error(
            "the following arguments are required: inputs "
            "(or --compare A.csv B.csv to compare two results files)"
        )
    if args.readme is not None and args.out is None:
        parser.error("--readme needs --out: the README's tables name the results CSV they show")


def relative_link(path: Path, readme: Path | None) -> str:
    if readme is None:
        return path.as_posix()
    return Path(os.path.relpath(path.resolve(), readme.resolve().parent)).as_posix()


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def summary(
    rows: Sequence[Row], dropped: Sequence[Row], skipped: Sequence[tuple[str, str]], out: Path
) -> str:
    """One line: rows merged, duplicates dropped, files skipped by reason (paths logged above)."""
    text = (
        f"merged {counted(len(rows), 'row')} into {out}; "
        f"dropped {len(dropped)} identical cop{'y' if len(dropped) == 1 else 'ies'}; "
        f"skipped {counted(len(skipped), 'file')}"
    )
    reasons = collections.Counter(reason for _, reason in skipped)
    if not reasons:
        return text
    return (
        text + " — " + "; ".join(f"{counted(n, 'file')}: {reason}" for reason, n in reasons.items())
    )


def read_readme(path: Path) -> str:
    """The README's text, checked for its markers now, before anything is written."""
    try:
        with open(path, newline="") as handle:  # line endings kept as they are
            text = handle.read()
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror or error}") from error
    try:
        results_block_span(text.splitlines())
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    return text


def report(args: argparse.Namespace, command: str) -> int:
    """Collect, merge, check, then write the CSV, plots and README (or print the tables)."""
    missing = [str(path) for path in args.inputs if not path.exists()]
    if missing:
        log.error("no such input: %s", ", ".join(missing))
        return 2
    found, skipped = collect(args.inputs)
    rows, dropped = drop_duplicates(found)
    if not rows:
        log.error("no rows to report (%d files skipped)", len(skipped))
        return 2
    try:
        require_one_machine(rows, args.allow_mixed_gpus)
        readme_text = read_readme(args.readme) if args.readme else None
        targets = performance.load_targets(args.targets) if args.targets else None
    except ValueError as error:
        log.error("%s", error)
        return 2
    rows = write(rows, args.out) if args.out else sort_rows(rows)  # no --out: print only
    plots = plot(rows, args.plots) if args.plots else []
    links = [relative_link(p, args.readme) for p in plots] if args.readme else []
    csv_link = relative_link(args.out, args.readme) if args.out else ""
    block = tables(rows, csv_link, links, targets)
    if readme_text is None:
        sys.stdout.write(block)
    else:
        record.write_atomic(args.readme, update_readme(readme_text, block, command))
    log.info("%s", summary(rows, dropped, skipped, args.out or "the tables above"))
    return 0


def compare_side(path: Path, allow_mixed: bool) -> list[Row]:
    """One side of --compare: its rows collected, deduplicated and checked for one machine.
    Raises ValueError (MixedMachines among them) naming the file where that fails."""
    if not path.exists():
        raise ValueError(f"no such input: {path}")
    found, skipped = collect([path])
    rows, dropped = drop_duplicates(found)
    rows = merged_rows(rows)  # repeats: their medians' median
    if not rows:
        raise ValueError(f"{path}: no rows to compare ({counted(len(skipped), 'file')} skipped)")
    try:
        require_one_machine(rows, allow_mixed)
    except MixedMachines as error:
        raise MixedMachines(f"{path}: {error}") from error
    log.info(
        "read %s from %s; dropped %s; skipped %s",
        counted(len(rows), "row"),
        path,
        f"{len(dropped)} identical cop{'y' if len(dropped) == 1 else 'ies'}",
        counted(len(skipped), "file"),
    )
    return rows


def compare(args: argparse.Namespace) -> int:
    """Read both files, then print the comparison or write it to --out-md."""
    sides: list[list[Row]] = []
    failed = False
    for path in args.compare:
        try:
            sides.append(compare_side(path, args.allow_mixed_gpus))
        except ValueError as error:
            log.error("%s", error)
            failed = True
    if failed:
        return 2
    a_path, b_path = args.compare
    text = comparison(sides[0], sides[1], str(a_path), str(b_path))
    if args.out_md is None:
        sys.stdout.write(text)
    else:
        record.write_atomic(args.out_md, text)
    pairs, only_a, only_b = pair_rows(*sides)
    log.info(
        "compared %s with %s: %s, %d only in A, %d only in B%s",
        a_path,
        b_path,
        counted(len(pairs), "pair"),
        len(only_a),
        len(only_b),
        f"; wrote {args.out_md}" if args.out_md else "",
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] %(message)s")
    args = parse_arguments(argv)
    if args.compare:
        return compare(args)
    return report(args, shlex.join(["python", "-m", "runner.report", *argv]))


if __name__ == "__main__":
    sys.exit(main())

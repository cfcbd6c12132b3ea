"""The typed values that the steps of one run hand on, from the child's build to the parent's
row. Fields named like a Row column are that column (tests check every such name), so a
misspelt name fails where the value is made, not silently in the CSV; `row()` turns the values
into a Row and never raises: a value that does not fit ends as an error row saying why.

    child:   environment -> build -> reference -> optimize -> warm-up -> parity   = Prepared
             timed block (one per repeat)                                          = Block
             accuracy pass over a dataset (dataset=...; else nothing)              = Accuracy
             profile and the backend's notes                                       = Finished
    parent:  identity (runner.identity) + Prepared + Block + Finished + Accuracy     = Row
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from runner import identity
from runner.run import record
from runner.run.record import Row

log = logging.getLogger(__name__)


class Built(NamedTuple):
    """The build step: the exported model, its inputs, and where its weights came from."""

    exported: Any  # runner.exported.Exported
    images: Any  # runner.run.inputs.InputSet
    weights: str


class Reference(NamedTuple):
    """The reference step: eager fp32 detections per shape, and the floor's figures."""

    detections: dict
    floor: Any  # runner.run.parity.Figures | None


class Optimized(NamedTuple):
    """The optimize step: the callable that is timed and what making it cost (seconds)."""

    fn: Any
    optimize_s: float


def _columns(names) -> list[tuple]:
    """(name, type, field) of the Row columns `names`, with the Row's defaults."""
    return [
        (f.name, f.type, field(default=f.default))
        for f in dataclasses.fields(Row)
        if f.name in names
    ]


# Where the run ran: the Row's environment columns (runner.run.record.environment), the GPU's
# physical index and what does the backend's work.
COLUMNS = record.COLUMNS
ENVIRONMENT = (*COLUMNS[COLUMNS.index("gpu_name") : COLUMNS.index("timestamp") + 1], "gpu_index")
HERE = {"__module__": __name__}  # so that the values pickle (they travel through a pipe)
Environment = dataclasses.make_dataclass("Environment", _columns(ENVIRONMENT), namespace=HERE)

# The parity step: figures against the reference and the floor, the verdict (status ok |
# parity_fail, error), what was found, and the dynamic sizes the figures cover.
PARITY = (
    *(c for c in COLUMNS if c.startswith("parity_")),
    "num_detections",
    "num_detections_ref",
    "image_hw_min",
    "image_hw_max",
)
Parity = dataclasses.make_dataclass(
    "Parity",
    [("status", str), ("error", str, field(default="")), *_columns(PARITY)],
    namespace=HERE,
)


@dataclass
class Prepared:
    """What the child's prepare hands the parent: ok | parity_fail (measurable) or unsupported
    (with the reason), with everything known before the timed blocks."""

    status: str
    error: str = ""
    environment: Environment = field(default_factory=Environment)
    weights: str = ""
    optimize_s: float | None = None
    parity: Parity | None = None
    gflop_per_call: float | None = None  # runner.run.flops: FlopCounterMode on the eager model
    peak_tflop_per_s: float | None = None  # the GPU's dense peak for the precision, if known

    @property
    def measured(self) -> bool:
        return self.status in record.MEASURED

    def fields(self) -> dict:
        values = {**dataclasses.asdict(self.environment), "weights": self.weights}
        values["optimize_s"] = self.optimize_s
        values.update(gflop_per_call=self.gflop_per_call, peak_tflop_per_s=self.peak_tflop_per_s)
        if self.parity is not None:
            values.update(dataclasses.asdict(self.parity))
        values.update(status=self.status, error=self.error)
        return values


@dataclass
class Block:
    """One timed block: latency samples (ms) and image size per shape, the opt shape's peak."""

    samples: dict[str, list[float]]
    image_hw: dict[str, str]
    peak_mem_mb: float | None = None
    timestamp: str = ""  # set by the parent when the block came back
    host_probe_ms: float | None = None  # timing.host_probe's median around the block

    def fields(self, batch: int) -> dict:
        from runner.run import timing

        values = dict(timing.summarize(self.samples["opt"], batch))
        for shape in ("min", "max"):
            if shape in self.samples:
                values[f"latency_ms_median_{shape}_shape"] = timing.summarize(
                    self.samples[shape], batch
                )["latency_ms_median"]
        values.update(
            peak_mem_mb=self.peak_mem_mb,
            timestamp=self.timestamp,
            host_probe_ms=self.host_probe_ms,
        )
        return values


@dataclass
class Finished:
    """The profile step: GPU busy time and kernels of one call, the time of each of its stages
    (runner.stages; ms by stage name, empty where none was marked), the backend's notes, and
    the seconds each step took (logged, not in the row)."""

    gpu_busy_ms: float | None = None
    gpu_ops: int | None = None
    backend_notes: str = ""
    call_stages_ms: dict[str, float] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)

    def fields(self) -> dict:
        from runner import stages

        values = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("stages", "call_stages_ms")
        }
        values.update({stages.column(k): v for k, v in self.call_stages_ms.items()})
        return values


@dataclass
class Accuracy:
    """The accuracy step (runner.accuracy): the row's accuracy_* columns, or why the pass failed;
    the rows then say status error with that reason, their timed figures kept."""

    figures: dict[str, Any] = field(default_factory=dict)
    failure: str = ""

    def fields(self, row: Row) -> dict:
        values = dict(self.figures)
        if self.failure:
            previous = f"; {row.error}" if row.error else ""
            values.update(status="error", error=f"accuracy: {self.failure}{previous}")
        return values


def row(*parts: dict) -> Row:
    """A Row from field mappings (later ones win). Never raises: names that are no column, or
    values the Row refuses, give an error row that names them, with what could be kept."""
    from runner.run import flops

    values: dict = {}
    for part in parts:
        values.update(part)
    if "gflop_per_call" in values:  # derived from the row's own median and the peak
        values.update(
            flops.derived(
                values.get("gflop_per_call"),
                values.get("latency_ms_median"),
                values.get("peak_tflop_per_s"),
            )
        )
    unknown = sorted(set(values) - set(COLUMNS))
    known = {k: v for k, v in values.items() if k in COLUMNS}
    try:
        if unknown:
            raise TypeError(f"fields that are no Row column: {unknown}")
        return Row(**known)
    except Exception as error:  # noqa: BLE001 - the row is the report of any failure
        reason = f"row: {type(error).__name__}: {error}"
        log.error("%s", reason)
        previous = values.get("error") or ""
        kept = {k: known[k] for k in identity.kept_columns() if k in known}  # what ran, where
        error = f"{reason}; {previous}" if previous else reason
        return Row(**{"model": "", **kept}, status="error", error=error)

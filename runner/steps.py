"""The typed values that the steps of one run hand on, from the child's build to the parent's
row. Fields named like a Row column are that column (tests check every such name), so a
misspelt name fails where the value is made, not silently in the CSV; `row()` turns the values
into a Row and never raises: a value that does not fit ends as an error row saying why.

    child:   environment -> build -> reference -> optimize -> warm-up -> parity   = Prepared
             timed block (one per repeat)                                          = Block
             profile and the backend's notes                                       = Finished
    parent:  identity (runner.bench) + Prepared + Block + Finished                 = Row
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from runner import record
from runner.record import Row

log = logging.getLogger(__name__)


class Built(NamedTuple):
    """The build step: the exported model, its inputs, and where its weights came from."""

    exported: Any  # runner.export.Exported
    images: Any  # runner.inputs.InputSet
    weights: str


class Reference(NamedTuple):
    """The reference step: eager fp32 detections per shape, and the floor's figures."""

    detections: dict
    floor: Any  # runner.parity.Figures | None


class Optimized(NamedTuple):
    """The optimize step: the callable that is timed and what making it cost (seconds)."""

    fn: Any
    optimize_s: float


@dataclass
class Environment:
    """Where the run ran: the Row's environment columns (runner.record.environment)."""

    torch_version: str = ""
    torchvision_version: str = ""
    detectron2_version: str = ""
    python_version: str = ""
    cpu_model: str = ""
    hostname: str = ""
    git_sha: str = ""
    timestamp: str = ""
    cuda_version: str = ""
    gpu_name: str = ""
    gpu_driver: str = ""
    cudnn_version: str = ""
    gpu_index: str = ""
    backend_version: str = ""


@dataclass
class Parity:
    """The parity step: figures against the reference and the floor, and the verdict."""

    status: str  # ok | parity_fail
    error: str = ""
    parity_pass: bool | None = None
    parity_match_f1: float | None = None
    parity_box_iou: float | None = None
    parity_score_max_diff: float | None = None
    parity_mask_iou: float | None = None
    parity_keypoint_max_dist: float | None = None
    parity_unchecked: str = ""
    parity_reference: str = ""
    parity_floor_match_f1: float | None = None
    parity_floor_box_iou: float | None = None
    parity_floor_score_max_diff: float | None = None
    parity_floor_mask_iou: float | None = None
    parity_floor_keypoint_max_dist: float | None = None
    num_detections: int | None = None
    num_detections_ref: int | None = None
    image_hw_min: str = ""
    image_hw_max: str = ""


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

    @property
    def measured(self) -> bool:
        return self.status in record.MEASURED

    def fields(self) -> dict:
        values = {**dataclasses.asdict(self.environment), "weights": self.weights}
        values["optimize_s"] = self.optimize_s
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

    def fields(self, batch: int) -> dict:
        from runner import timing

        values = dict(timing.summarize(self.samples["opt"], batch))
        for shape in ("min", "max"):
            if shape in self.samples:
                values[f"latency_ms_median_{shape}_shape"] = timing.summarize(
                    self.samples[shape], batch
                )["latency_ms_median"]
        values.update(peak_mem_mb=self.peak_mem_mb, timestamp=self.timestamp)
        return values


@dataclass
class Finished:
    """The profile step: GPU busy time and kernels of one call, the backend's notes, and the
    seconds each step took (logged, not in the row)."""

    gpu_busy_ms: float | None = None
    gpu_ops: int | None = None
    backend_notes: str = ""
    stages: dict[str, float] = field(default_factory=dict)

    def fields(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "stages"}


COLUMNS = set(record.COLUMNS)
# what an error row keeps of the fields that did not make a Row: what was run, and where
KEPT = (
    *record.COLUMNS[: record.COLUMNS.index("gpu_index")],
    "warmup",
    "iters",
    "rewarm",
    "timing_options",
    "repeats",
    "repeat",
    "session",
    "command",
    "output_dir",
    "fingerprint",
)


def row(*parts: dict) -> Row:
    """A Row from field mappings (later ones win). Never raises: names that are no column, or
    values the Row refuses, give an error row that names them, with what could be kept."""
    values: dict = {}
    for part in parts:
        values.update(part)
    unknown = sorted(set(values) - COLUMNS)
    known = {k: v for k, v in values.items() if k in COLUMNS}
    try:
        if unknown:
            raise TypeError(f"fields that are no Row column: {unknown}")
        return Row(**known)
    except Exception as error:  # noqa: BLE001 - the row is the report of any failure
        reason = f"row: {type(error).__name__}: {error}"
        log.error("%s", reason)
        previous = values.get("error") or ""
        kept = {k: known[k] for k in KEPT if k in known}
        error = f"{reason}; {previous}" if previous else reason
        return Row(**{"model": "", **kept}, status="error", error=error)

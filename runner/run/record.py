"""Record: the Row that one run produces, its CSV form, and the environment it states.

Takes measured figures and identity; writes result.csv (one header, one row) atomically in the
run's output folder, and reads such files back with their types. Units are in the column names:
`_ms` milliseconds, `_s` seconds, `_mb` megabytes (10^6 bytes), fps images per second.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import io
import os
import platform
import socket
import subprocess
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

STATUSES = ("ok", "parity_fail", "unsupported", "error")


@dataclass
class Row:
    # identity: what was run
    model: str
    variant: str = ""
    export: str = ""
    batch: int = 1
    postprocess: bool = False
    precision: str = ""
    backend: str = ""
    # options that differ from conf/backend/<backend>.yaml, "key=value ..." ("": that file's)
    backend_options: str = ""
    shapes: str = ""
    image_hw: str = ""
    # what else decides what is measured (the report never merges rows that differ here)
    image: str = ""  # the input photo's path; "": the default sample photo
    arch_options: str = ""  # model.arch_options, "KEY=value ..." sorted by key
    thresholds: str = ""  # "score=0.05 nms=0.5 detections=100" (model.*)
    seed: int | None = None
    device: str = ""
    gpu_index: str = ""  # physical GPU (CUDA_VISIBLE_DEVICES applied)
    # outcome: ok | parity_fail (measured, but answers differ) | unsupported | error
    status: str = "error"
    error: str = ""
    # latency at the opt size, in milliseconds; throughput in images per second
    latency_ms_median: float | None = None
    latency_ms_mean: float | None = None
    latency_ms_p99: float | None = None
    latency_ms_std: float | None = None
    latency_ms_min: float | None = None
    fps_median: float | None = None
    fps_mean: float | None = None
    # dynamic shapes: the median latency at the min and max sizes
    image_hw_min: str = ""
    latency_ms_median_min_shape: float | None = None
    image_hw_max: str = ""
    latency_ms_median_max_shape: float | None = None
    # the GPU's own time for one call at the opt size (profiler: kernels and copies), in ms
    gpu_busy_ms: float | None = None
    gpu_ops: int | None = None  # kernels and copies one call launches (profile.txt: the top ones)
    # FLOPs (runner.run.flops): the matrix work of one call, counted once by FlopCounterMode on
    # the eager model at fp32 with the row's batch and opt size, in GFLOP; the achieved TFLOP/s
    # (gflop_per_call / latency_ms_median), the GPU's dense peak for the precision (a table of
    # NVIDIA's figures; empty for a GPU not in it, and on the CPU) and the share of it (fraction)
    gflop_per_call: float | None = None
    tflop_per_s: float | None = None
    peak_tflop_per_s: float | None = None
    peak_share: float | None = None
    # where one call's time goes (runner.stages), in ms: one uncaptured call at the opt size, on
    # CUDA the GPU time of the kernels and copies each stage launched, on the CPU the host time
    # inside each stage; empty where the timed code marks no stages (compiled or traced code)
    stage_preprocess_ms: float | None = None
    stage_backbone_ms: float | None = None
    stage_head_ms: float | None = None
    stage_proposals_ms: float | None = None
    stage_roi_pool_ms: float | None = None
    stage_boxes_ms: float | None = None
    stage_mask_head_ms: float | None = None
    stage_keypoint_head_ms: float | None = None
    stage_paste_ms: float | None = None
    stage_other_ms: float | None = None
    # cost of optimizing: backend.optimize() plus the first call at each size, in seconds
    optimize_s: float | None = None
    peak_mem_mb: float | None = None  # CUDA allocator peak during the timed calls
    # what the backend reports about its own work ("key=value; ..."): for static_graph the graphs
    # kept and their memory, and calls that fell back to eager to stay exact
    backend_notes: str = ""
    # parity against the reference on the same input (worst over the sizes); runner.run.parity
    # says what each figure is
    parity_pass: bool | None = None
    parity_match_f1: float | None = None
    parity_box_iou: float | None = None
    parity_score_max_diff: float | None = None
    parity_mask_iou: float | None = None
    parity_keypoint_max_dist: float | None = None  # over sqrt(reference box area)
    parity_sem_seg_agreement: float | None = None  # fraction of pixels labelled alike
    parity_sem_seg_prob_max_diff: float | None = None  # largest class-probability difference
    parity_panoptic_match_f1: float | None = None  # segments matched at IoU > 0.5
    parity_panoptic_class_agreement: float | None = None  # matched segments of the same class
    parity_unchecked: str = ""  # output fields no figure compares, "a, b" ("": none)
    parity_reference: str = ""  # what answers were compared with ("": before TF32-off references)
    # the floor: eager PyTorch at this precision (autocast; fp32 with PyTorch's default TF32
    # flags on CUDA) against the same reference; empty where it would be the reference itself
    parity_floor_match_f1: float | None = None
    parity_floor_box_iou: float | None = None
    parity_floor_score_max_diff: float | None = None
    parity_floor_mask_iou: float | None = None
    parity_floor_keypoint_max_dist: float | None = None
    parity_floor_sem_seg_agreement: float | None = None
    parity_floor_sem_seg_prob_max_diff: float | None = None
    parity_floor_panoptic_match_f1: float | None = None
    parity_floor_panoptic_class_agreement: float | None = None
    parity_floor_draws: int | None = None  # inputs the floor was measured on (runner.run.fidelity)
    num_detections: int | None = None  # produced by the timed model at the opt size, all images
    num_detections_ref: int | None = None
    # accuracy on a COCO-format dataset (dataset=...; runner.accuracy), a pass after the timed
    # blocks: the timed callable on every image of the pass, scored by pycocotools' COCOeval.
    # AP over IoU 0.50:0.95 and AP at IoU 0.50 are fractions (0..1); _vs_ref is this AP minus
    # the reference's (eager fp32, TF32 off) on the same images. Empty without a dataset, and
    # for outputs the model lacks or the dataset cannot score
    accuracy_dataset: str = ""  # "name:annotation file@sha256:<first 12 hex digits>"
    accuracy_images: int | None = None
    accuracy_box_ap: float | None = None
    accuracy_box_ap50: float | None = None
    accuracy_box_ap_vs_ref: float | None = None
    accuracy_mask_ap: float | None = None
    accuracy_mask_ap50: float | None = None
    accuracy_mask_ap_vs_ref: float | None = None
    accuracy_keypoint_ap: float | None = None
    accuracy_keypoint_ap_vs_ref: float | None = None
    accuracy_s: float | None = None  # seconds of the timed callable's pass and its scoring
    weights: str = ""
    # protocol: `warmup` calls once, then `repeats` blocks of `rewarm` untimed and `iters` timed
    # calls; this row is block `repeat` (0-based) of `session`, one parent's backends timed in
    # turn on one host (speed-ups pair rows of one session by repeat)
    warmup: int | None = None
    iters: int | None = None
    rewarm: int | None = None
    timing_options: str = ""  # "gc=collect pin_cpus=false"
    # the host's speed while this block ran: ms of timing.host_probe's fixed pure-Python work
    # (median of its runs before and after the block); higher = a slower host CPU then
    host_probe_ms: float | None = None
    repeats: int | None = None
    repeat: int | None = None
    session: str = ""
    # environment
    gpu_name: str = ""
    gpu_driver: str = ""
    cuda_version: str = ""
    cudnn_version: str = ""
    torch_version: str = ""
    torchvision_version: str = ""
    detectron2_version: str = ""
    backend_version: str = ""
    python_version: str = ""
    cpu_model: str = ""
    hostname: str = ""
    git_sha: str = ""
    timestamp: str = ""
    command: str = ""
    output_dir: str = ""
    fingerprint: str = ""  # config + code; a finished run with the same one is not redone


MEASURED = ("ok", "parity_fail")  # statuses of runs that reached their timed calls


def is_measured(row: Row) -> bool:
    """The run was timed (whether or not its answers passed parity)."""
    return row.status in MEASURED and row.latency_ms_median is not None


def passed(row: Row) -> bool:
    """The run was timed and its answers are within the parity bounds."""
    return row.status == "ok" and bool(row.parity_pass) and row.latency_ms_median is not None


COLUMNS = [f.name for f in fields(Row)]
# columns files of earlier versions lack; read from such a file they take their defaults
ADDED_COLUMNS = (
    "backend_options",
    "gpu_ops",
    "backend_notes",
    "image",
    "arch_options",
    "thresholds",
    "seed",
    "rewarm",
    "timing_options",
    "repeats",
    "repeat",
    "session",
    "parity_keypoint_max_dist",
    "parity_unchecked",
    "parity_reference",
    "parity_floor_keypoint_max_dist",
    "host_probe_ms",
    "parity_floor_draws",
    "accuracy_dataset",
    "accuracy_images",
    "accuracy_box_ap",
    "accuracy_box_ap50",
    "accuracy_box_ap_vs_ref",
    "accuracy_mask_ap",
    "accuracy_mask_ap50",
    "accuracy_mask_ap_vs_ref",
    "accuracy_keypoint_ap",
    "accuracy_keypoint_ap_vs_ref",
    "accuracy_s",
    "gflop_per_call",
    "tflop_per_s",
    "peak_tflop_per_s",
    "peak_share",
    "stage_preprocess_ms",
    "stage_backbone_ms",
    "stage_head_ms",
    "stage_proposals_ms",
    "stage_roi_pool_ms",
    "stage_boxes_ms",
    "stage_mask_head_ms",
    "stage_keypoint_head_ms",
    "stage_paste_ms",
    "stage_other_ms",
    "parity_sem_seg_agreement",
    "parity_sem_seg_prob_max_diff",
    "parity_panoptic_match_f1",
    "parity_panoptic_class_agreement",
    "parity_floor_sem_seg_agreement",
    "parity_floor_sem_seg_prob_max_diff",
    "parity_floor_panoptic_match_f1",
    "parity_floor_panoptic_class_agreement",
)
_TYPES = {f.name: f.type for f in fields(Row)}


def _to_text(value) -> str:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars as Python numbers
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _from_text(name: str, text: str):
    kind = _TYPES[name]
    if "bool" in kind:
        if text == "":
            return None
        if text not in ("true", "false"):
            raise ValueError(f"column {name}: {text!r} is not true/false")
        return text == "true"
    if "float" in kind:
        return None if text == "" else float(text)
    if "int" in kind:
        return None if text == "" else int(text)
    return text


def to_csv_text(rows: list[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_to_text(getattr(row, c)) for c in COLUMNS])
    return buffer.getvalue()


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text or bytes to path so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_rows(path: Path, rows: list[Row]) -> None:
    write_atomic(path, to_csv_text(rows))


def read_rows(path: Path) -> list[Row]:
    """Rows of a CSV written by write_rows. Raises ValueError for any file that is not one."""
    with open(path, newline="") as f:
        text = f.read()
    if not text:
        raise ValueError(f"{path}: empty file")
    if not text.endswith("\n"):
        raise ValueError(f"{path}: truncated (no final newline)")
    records = list(csv.reader(io.StringIO(text)))
    header, body = records[0], records[1:]
    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if unknown or set(missing) - set(ADDED_COLUMNS) or len(set(header)) != len(header):
        raise ValueError(
            f"{path}: columns differ from this version's (missing {missing}, unknown {unknown})"
        )
    rows = []
    for number, record in enumerate(body, start=2):
        if len(record) != len(header):
            raise ValueError(f"{path}:{number}: {len(record)} fields, expected {len(header)}")
        texts = dict(zip(header, record, strict=True))
        row = Row(**{c: _from_text(c, t) for c, t in texts.items()})
        if row.status not in STATUSES:
            raise ValueError(f"{path}:{number}: status {row.status!r} not in {STATUSES}")
        rows.append(row)
    return rows


def replace(row: Row, **changes) -> Row:
    return dataclasses.replace(row, **changes)


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on `path` (created if absent) for the duration of the block; a
    second process asking for it waits. The lock dies with its process, so a crash frees it."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- environment --------------------------------------------------------------------------


def _run(command: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def git_sha() -> str:
    """The commit the code is, with what differs from it: runner.provenance.git_sha."""
    from runner import provenance

    return provenance.git_sha()


def physical_gpu(index: int | None) -> str:
    """The physical GPU index behind torch's `index`, through CUDA_VISIBLE_DEVICES."""
    index = index or 0
    visible = [
        v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()
    ]
    return visible[index] if index < len(visible) else str(index)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return ""


def environment(device: str, cuda_ready: bool = False) -> dict[str, str]:
    """Versions and hardware for the row. Touches CUDA only when cuda_ready (in the child)."""
    import torch

    from runner.config import parse_device

    kind, index = parse_device(device)
    env = {
        "torch_version": torch.__version__,
        "torchvision_version": _version("torchvision"),
        "detectron2_version": _version("detectron2"),
        "python_version": platform.python_version(),
        "cpu_model": cpu_model(),
        "hostname": socket.gethostname(),
        "git_sha": git_sha(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cuda_version": (torch.version.cuda or "") if kind == "cuda" else "",
        "gpu_name": "",
        "gpu_driver": "",
        "cudnn_version": "",
    }
    if kind == "cuda":
        query = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
        if query:
            index = index or 0
            lines = query.splitlines()
            name, _, driver = lines[min(index, len(lines) - 1)].partition(",")
            env["gpu_name"], env["gpu_driver"] = name.strip(), driver.strip()
        if cuda_ready:
            env["gpu_name"] = torch.cuda.get_device_name(torch.device(device))
            env["cudnn_version"] = str(torch.backends.cudnn.version() or "")
    return env

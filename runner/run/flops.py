"""FLOPs and FLOP/s: takes the eager model and the run's opt input; returns the FLOPs of one call
(counted once, by PyTorch's `FlopCounterMode`, not by hand), the GPU's dense peak for the run's
precision, and from the timed median the achieved TFLOP/s and its share of that peak.

What is counted is what FlopCounterMode counts: the matrix work (convolutions, linear layers,
matmuls; a multiply-add is 2 FLOPs) of the eager model at fp32, batch and input size as the run
has them. Elementwise ops, ROIAlign, NMS and mask pasting are not counted: they are memory and
latency work, not FLOPs a tensor core can do. Every backend of a variant does the same counted
work, so `tflop_per_s` compares backends as latency does, on a scale whose top is the peak.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# Dense peak TFLOP/s by GPU (torch.cuda.get_device_name) and the tensor format a precision runs
# its matrix work in. Source: NVIDIA's datasheets, H100 (nvidia.com/en-us/data-center/h100,
# "H100 Tensor Core GPU" datasheet: H100 SXM, H100 PCIe, H100 NVL) and H200
# (nvidia.com/en-us/data-center/h200: H200 SXM, H200 NVL). Their tensor-core figures are "with
# sparsity": the dense peak is half of each (e.g. H100 SXM BF16 1979 -> 989.4). FP32 is the
# non-tensor-core peak. A GPU not listed gets no peak: an empty cell, never a guess.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "NVIDIA H100 80GB HBM3": {"fp16": 989.4, "tf32": 494.7, "fp32": 66.9},  # H100 SXM5
    "NVIDIA H100 PCIe": {"fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "NVIDIA H100 NVL": {"fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "NVIDIA H200": {"fp16": 989.4, "tf32": 494.7, "fp32": 66.9},  # H200 SXM
    "NVIDIA H200 NVL": {"fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
}


def tensor_format(precision) -> str:
    """The format a precision's convolutions and matmuls run in on an NVIDIA GPU: fp16 (fp16 or
    bf16 autocast: the same peak on Hopper), tf32 (fp32 under PyTorch's default flags, where
    cuDNN convolutions may use TF32) or fp32 (fp32_strict: TF32 off)."""
    if precision.autocast and precision.dtype in ("float16", "bfloat16"):
        return "fp16"
    if precision.dtype == "float32":
        return "fp32" if precision.strict else "tf32"
    return ""


def peak_tflops(gpu_name: str, precision) -> float | None:
    """The dense peak (TFLOP/s) of `gpu_name` for `precision`; None for a GPU not in the table
    (a CPU run has no GPU name)."""
    return PEAK_TFLOPS.get(gpu_name.strip(), {}).get(tensor_format(precision))


def count(call: Callable[[], object]) -> int:
    """FLOPs of one `call`, by FlopCounterMode (no gradients)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call()
    return int(counter.get_total_flops())


def derived(gflop_per_call: float | None, latency_ms: float | None, peak: float | None) -> dict:
    """The achieved TFLOP/s of a row (its FLOPs over its median latency) and its share of the
    peak (a fraction); None where a figure is missing."""
    if gflop_per_call is None or not latency_ms or latency_ms <= 0:
        return {"tflop_per_s": None, "peak_share": None}
    achieved = gflop_per_call / latency_ms  # GFLOP per ms = TFLOP per s
    return {"tflop_per_s": achieved, "peak_share": achieved / peak if peak else None}

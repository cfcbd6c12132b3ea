"""What a precision means at call time: takes a PrecisionConfig and a device, returns the context
(torch.autocast or nothing) that every backend's call and export run inside."""

from __future__ import annotations

import contextlib

import torch

from runner.config import PrecisionConfig, torch_dtype


def autocast(precision: PrecisionConfig, device: torch.device | str, cache_enabled: bool = True):
    """torch.autocast for reduced precisions, a null context for fp32.

    Export under autocast passes cache_enabled=False so that traced graphs record the casts of the
    weights as ops instead of baking fp16 copies of them in as constants.
    """
    if not precision.autocast:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(
        device_type, dtype=torch_dtype(precision.dtype), cache_enabled=cache_enabled
    )

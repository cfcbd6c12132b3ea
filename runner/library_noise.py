"""Library noise: warnings that torch, torchvision and detectron2 print on every run and that a
user of d2bench cannot act on. `quiet_library_warnings()` takes nothing and returns nothing: it
filters them out of this process (the measuring child, or a preflight that imports detectron2).
Shared by the run (runner.run.models) and the model families (runner.families.detectron2)."""

from __future__ import annotations

import logging

import torch

# Warnings that libraries print on every run and that a user of d2bench cannot act on: tracing
# and scripting are what the torchscript backend and the exports measure (their deprecation is
# torch's news, not the run's); torch, torchvision and detectron2 code converts tensors to Python
# values and copy-constructs tensors while being traced (parity checks the traced answers);
# detectron2 imports pkg_resources, calls meshgrid without `indexing` and loads its own zoo
# configs with yaml.unsafe_load; torch.fx logs (once per process) that is_fx_tracing() now also
# answers for torch.export whenever detectron2's poolers ask it (FX_TRACING_NOTICE). Any other
# warning, from user code (a backend module) or about the run's own values, is still shown.
LIBRARY_NOISE = (
    ("ignore", r"`torch\.jit\.[a-z_]+` is deprecated", FutureWarning, ""),
    ("ignore", r"pkg_resources is deprecated", UserWarning, ""),
    ("ignore", r"torch\.meshgrid: in an upcoming release", UserWarning, ""),
    ("ignore", r"", "TracerWarning", r"(torch|detectron2|torchvision)(\.|$)"),
    ("ignore", r"To copy construct from a tensor", UserWarning, r"(torch|torchvision)(\.|$)"),
)


FX_TRACING_NOTICE = ("torch.fx._symbolic_trace", "is_fx_tracing will return true for both")


def _not_fx_tracing_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(FX_TRACING_NOTICE[1])


def quiet_library_warnings() -> None:
    """Hide LIBRARY_NOISE and FX_TRACING_NOTICE in this process (the measuring child, or a
    preflight that imports detectron2); idempotent."""
    import warnings

    for action, message, category, module in LIBRARY_NOISE:
        if category == "TracerWarning":
            category = torch.jit.TracerWarning
        warnings.filterwarnings(action, message=message, category=category, module=module)
    # fvcore logs this for detectron2's own zoo files, which are not the user's to vet
    logging.getLogger("fvcore.common.config").setLevel(logging.ERROR)
    logging.getLogger(FX_TRACING_NOTICE[0]).addFilter(_not_fx_tracing_notice)  # only that one

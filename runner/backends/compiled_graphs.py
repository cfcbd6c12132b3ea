"""compiled_graphs: the two combined. The static-shape parts are compiled by Inductor (fused
Triton kernels, no CUDA graphs of its own) and the compiled code is replayed as one CUDA graph
per input size; the data-dependent tail runs eagerly."""

import torch

from runner.backends import _parts, register

OPTIONS = {
    "scope": _parts.SCOPES,
    "mode": ("default", "max-autotune-no-cudagraphs"),
    **_parts.TUNING,
}


@register("compiled_graphs", options=OPTIONS)
def optimize(exported, inputs, precision, options):
    _parts.require_cuda(exported, "compiled_graphs")
    _parts.tune(exported.model, options)
    mode = options.get("mode", "default")
    _parts.replace_parts(
        exported,
        options.get("scope", "backbone+heads"),
        lambda part: _parts.GraphedByShape(
            torch.compile(part, mode=mode, dynamic=False), precision
        ),
    )
    return exported.module

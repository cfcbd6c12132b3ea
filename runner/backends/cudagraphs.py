"""cudagraphs: the static-shape parts of the detector (backbone + FPN, and the RPN or dense
head with scope=backbone+heads) replayed as CUDA graphs, one per input size, captured at the
first call; the data-dependent tail runs eagerly as before. Removes the CPU launch cost of the
hundreds of small kernels in those parts."""

from runner.backends import _parts, register

OPTIONS = {"scope": _parts.SCOPES, **_parts.TUNING}


@register("cudagraphs", options=OPTIONS)
def optimize(exported, inputs, precision, options):
    _parts.require_cuda(exported, "cudagraphs")
    _parts.tune(exported.model, options)
    _parts.replace_parts(
        exported,
        options.get("scope", "backbone+heads"),
        lambda part: _parts.GraphedByShape(part, precision),
    )
    return exported.module

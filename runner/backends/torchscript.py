"""torchscript: torch.jit.trace or torch.jit.script (the run's `export`), executed by the JIT's
profiling executor. It owns the precision: reduced precisions are traced under autocast (so the
casts are in the graph) and called under it (a scripted module casts at call time)."""

import torch

from runner.backends import register
from runner.precision import autocast


@register("torchscript", options={"freeze": (bool,)}, owns_precision=True)
def optimize(exported, inputs, precision, options):
    device = exported.example[0].device
    with torch.no_grad(), autocast(precision, device, cache_enabled=False):
        module = exported.to_torchscript()
    if options.get("freeze") and isinstance(module, torch.jit.ScriptModule):
        module = torch.jit.freeze(module.eval())
    if not precision.autocast:
        return module

    def at_precision(*images):
        with autocast(precision, device):
            return module(*images)

    return at_precision

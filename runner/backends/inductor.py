"""inductor: torch.compile with the Inductor compiler.

scope=model compiles the whole exported module (dynamo breaks the graph around NMS, padding
and data-dependent shapes); scope=backbone or backbone+heads compiles only the parts whose
shapes depend on the input size alone, which compiles once per size and never breaks.
"""

import torch

from runner.backends import _parts, register

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OPTIONS = {
    "mode": MODES,
    "scope": ("model",) + _parts.SCOPES,
    "dynamic": (bool, None),  # None: torch.compile's default (static, then dynamic)
    **_parts.TUNING,
}


@register("inductor", options=OPTIONS)
def optimize(exported, inputs, precision, options):
    mode = options.get("mode", "default")
    dynamic = options.get("dynamic")
    scope = options.get("scope", "backbone+heads")
    _parts.tune(exported.model, options)
    if scope == "model":
        return torch.compile(exported.module, mode=mode, dynamic=dynamic)
    _parts.replace_parts(
        exported, scope, lambda part: torch.compile(part, mode=mode, dynamic=dynamic)
    )
    return exported.module

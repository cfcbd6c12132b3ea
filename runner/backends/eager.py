"""eager: the baseline. Returns the exported module itself, run op by op by PyTorch."""

from runner.backends import register


@register("eager")
def optimize(exported, inputs, precision, options):
    return exported.module

"""eager: the baseline. Returns the exported module itself, run op by op by PyTorch."""

from runner.backends import check_options, register


@register("eager")
def optimize(exported, inputs, precision, options):
    check_options("eager", options, {})
    return exported.module

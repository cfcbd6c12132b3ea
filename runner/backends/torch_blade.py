"""torch_blade: BladeDISC's TorchBlade with its TensorRT pipeline, the seed's settings: the
traced module, min / opt / max tuning inputs, fp16 through TensorRT's flag (not autocast): it
owns the precision, so the harness does not autocast its calls.

TorchBlade is on no package registry and its releases support no current torch, so on most
machines this backend reports `unsupported` with the reason; where it imports it runs."""

import torch

from runner.backends import Unsupported, register

HOW_TO_GET = (
    "torch_blade is not installed: it is on no package registry and its builds support only "
    "old torch releases (BladeDISC pins torch 1.x / 2.0). To run it, use BladeDISC's image "
    "bladedisc/bladedisc:disc-runtime-pt-ngc or build pytorch_blade from "
    "https://github.com/alibaba/BladeDISC against that image's torch"
)


def _version() -> str:
    import torch_blade

    return f"torch_blade {torch_blade.__version__}"


@register(
    "torch_blade",
    version=_version,
    requires=("torch_blade",),
    how_to_get=HOW_TO_GET,
    owns_precision=True,
)
def optimize(exported, inputs, precision, options):
    try:
        import torch_blade
        import torch_blade.tensorrt as blade_trt
    except ImportError as error:
        raise Unsupported(f"{HOW_TO_GET} (import failed: {error})") from error
    if precision.dtype == "bfloat16":
        raise Unsupported("torch_blade's TensorRT pipeline has no bf16 mode")
    if precision.strict:
        raise Unsupported(
            f"precision={precision.name}: torch_blade's TensorRT pipeline has no switch that "
            "turns TF32 off; use precision=fp32"
        )
    opt = inputs.images["opt"]
    with torch.no_grad():
        traced = torch.jit.trace(exported.module, opt, check_trace=False)
        config = torch_blade.config.Config()
        config.dynamic_tuning_inputs = {
            "min": inputs.images.get("min", opt),
            "max": inputs.images.get("max", opt),
            "opts": [opt],
        }
        config.optimization_pipeline = blade_trt.backend_name()
        config.enable_fp16 = precision.dtype == "float16"
        config.enable_onnx_shape_white_list = False
        with config:
            return torch_blade.optimize(traced, False, opt)

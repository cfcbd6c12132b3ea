"""tensorrt: Torch-TensorRT (torch_tensorrt.compile, dynamo IR) with min / opt / max input
shapes; what TensorRT cannot take (NMS, data-dependent shapes) falls back to PyTorch.

Reports `unsupported` with the reason where torch_tensorrt is not installed."""

import torch

from runner.backends import Unsupported, register
from runner.precision import torch_dtype


def _version() -> str:
    import torch_tensorrt

    return f"torch_tensorrt {torch_tensorrt.__version__}"


HOW_TO_GET = (
    "torch_tensorrt is not installed: `pip install torch-tensorrt` (the release that "
    f"matches torch {torch.__version__}) on a machine with TensorRT"
)


@register(
    "tensorrt",
    options={"min_block_size": (int,)},
    version=_version,
    requires=("torch_tensorrt",),
    how_to_get=HOW_TO_GET,
)
def optimize(exported, inputs, precision, options):
    try:
        import torch_tensorrt
    except ImportError as error:
        raise Unsupported(f"{HOW_TO_GET} (import failed: {error})") from error
    opt = inputs.images["opt"]
    shapes = [
        torch_tensorrt.Input(
            min_shape=inputs.images.get("min", opt)[i].shape,
            opt_shape=opt[i].shape,
            max_shape=inputs.images.get("max", opt)[i].shape,
            dtype=torch.float32,
        )
        for i in range(len(opt))
    ]
    precisions = {torch.float32, torch_dtype(precision.dtype)}
    return torch_tensorrt.compile(
        exported.module,
        ir="dynamo",
        inputs=shapes,
        enabled_precisions=precisions,
        min_block_size=options.get("min_block_size", 5),
        disable_tf32=precision.strict,  # TensorRT builds TF32 kernels unless told not to
    )

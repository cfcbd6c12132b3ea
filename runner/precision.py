"""What a precision means at call time: takes a PrecisionConfig and a device, returns the context
every backend's call and export run inside: torch.autocast for reduced precisions, strict fp32
(TF32 off) where the precision asks for it, or nothing.

One owner: the harness (runner.run.measurement) calls a backend's callable inside `at_precision`,
unless the backend registered `owns_precision=True` (runner.backends): then the backend applies
the dtype itself (at export, in its compiler, or around its own calls) and the harness sets only
the TF32 flags (`strict_if_asked`). Either way the dtype comes from here (`torch_dtype`).

`strict_fp32()` is also what the parity reference always runs under: eager fp32 with TF32 off
for matmuls and convolutions, so every precision is compared with the same, exact answer."""

from __future__ import annotations

import contextlib

import torch

from runner.config import PrecisionConfig

# torch.backends nodes of the fp32_precision API (PyTorch >= 2.9) that the legacy TF32 setters
# and set_float32_matmul_precision write through; saved and restored as they were.
_PRECISION_NODES = ("", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a PrecisionConfig.dtype name (float32 | float16 | bfloat16)."""
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _node(path: str):
    node = torch.backends
    for part in filter(None, path.split(".")):
        node = getattr(node, part)
    return node


def _saved_precision_nodes() -> dict[str, str]:
    saved = {}
    for path in _PRECISION_NODES:
        try:
            saved[path] = _node(path).fp32_precision
        except (AttributeError, RuntimeError):
            continue  # an older torch: only the legacy flags exist
    return saved


def tf32_state() -> dict[str, object]:
    """The flags that decide whether fp32 matmuls and convolutions may use TF32 on CUDA:
    {"matmul": allow_tf32, "cudnn": allow_tf32, "float32_matmul_precision": ...}. A cuDNN state
    the legacy flag cannot express (conv and RNN set apart) reads as the conv setting."""
    try:
        cudnn = torch.backends.cudnn.allow_tf32
    except RuntimeError:
        cudnn = torch.backends.cudnn.conv.fp32_precision == "tf32"
    return {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "cudnn": cudnn,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for CUDA matmuls and cuDNN convolutions, float32 matmul precision 'highest';
    every flag as it was afterwards (also after an exception). Legacy setters are used because
    libraries (Inductor, cuDNN callers) read the legacy flags; the restore goes through the
    fp32_precision nodes where torch has them, so the state is exactly the one found."""
    saved_nodes = _saved_precision_nodes()
    matmul_precision = torch.get_float32_matmul_precision()
    legacy = (
        None
        if saved_nodes
        else (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    )
    try:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.set_float32_matmul_precision(matmul_precision)
        for path, value in saved_nodes.items():
            _node(path).fp32_precision = value
        conv, rnn = saved_nodes.get("cudnn.conv"), saved_nodes.get("cudnn.rnn")
        if conv is not None and conv == rnn:
            # the nodes hold the found values now, but written through the new API after the
            # legacy setter above, torch refuses to read the legacy flag (torch.export does):
            # the legacy setter writes conv and RNN together, to the same values, and makes the
            # flag readable again
            torch.backends.cudnn.allow_tf32 = conv == "tf32"
        if legacy is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy


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


def strict_if_asked(precision: PrecisionConfig):
    """strict_fp32() for a precision with `strict: true`, else PyTorch's flags as they are."""
    return strict_fp32() if precision.strict else contextlib.nullcontext()


@contextlib.contextmanager
def at_precision(precision: PrecisionConfig, device: torch.device | str, owned: bool = False):
    """The whole call-time meaning of `precision`: its TF32 flags, then its autocast; only the
    flags where the backend `owned` the dtype (registered owns_precision)."""
    with (
        strict_if_asked(precision),
        contextlib.nullcontext() if owned else autocast(precision, device),
    ):
        yield

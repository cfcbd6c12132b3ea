"""Shared by the compiler and CUDA-graph backends: which parts of a detector have shapes that
depend only on the input size (so they can be compiled without recompiling per image and
replayed as CUDA graphs), a module that replays one CUDA graph per input shape, and `capture`,
the one place where a CUDA graph is captured (static_graph's replay uses it too).

The data-dependent tail (proposal selection, NMS, ROI heads on a varying number of boxes,
post-processing) stays as it is, so answers do not change.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch
from torch import nn
from torch.utils import _pytree as pytree

from runner.backends import Unsupported
from runner.precision import autocast

log = logging.getLogger(__name__)

SCOPES = ("backbone", "backbone+heads")
# (parent attribute path, child attribute) of the backbone; each family names its heads
_BACKBONE = [("", "backbone")]


# Options every compiler / CUDA-graph backend takes (conf/backend/*.yaml documents them)
TUNING = {
    "channels_last": (bool,),  # NHWC weights and activations for the convolutions
    "cudnn_benchmark": (bool,),  # cuDNN times its algorithms per conv shape, keeps the fastest
}


def tune(model: nn.Module, options: dict) -> None:
    """Apply the TUNING options a run asked for to `model`. cudnn_benchmark is process-wide:
    each run has its own process (runner.run.workers), so it reaches no other run."""
    if options.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    if options.get("cudnn_benchmark"):
        torch.backends.cudnn.benchmark = True


def static_parts(model: nn.Module, scope: str, heads=()) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of each static-shape part of `model` that `scope` covers; `heads`:
    the places of the family's static-shape heads (runner.families: STATIC_HEADS)."""
    places = _BACKBONE + (list(heads) if scope == "backbone+heads" else [])
    found = []
    for parent_path, name in places:
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
        except AttributeError:
            continue
        if isinstance(getattr(parent, name, None), nn.Module):
            found.append((parent, name))
    if not found:
        raise Unsupported(f"no backbone found in {type(model).__name__}")
    return found


def replace_parts(exported, scope: str, wrap) -> list[str]:
    """Replace each static part of the exported model by wrap(part); returns the names."""
    from runner import families

    heads = families.get(exported.family).STATIC_HEADS
    names = []
    for parent, name in static_parts(exported.model, scope, heads):
        setattr(parent, name, wrap(getattr(parent, name)))
        names.append(f"{type(parent).__name__}.{name}")
    return names


def capture(
    fn: Callable,
    static_args: tuple,
    *,
    context: Callable = contextlib.nullcontext,
    pool=None,
    warmup: int = 3,
):
    """fn(*static_args) captured as one CUDA graph: `warmup` calls on a side stream first (lazy
    initialisation, cuDNN and allocator warm-up stay out of the graph), then the capture into
    `pool` (None: a new one). Every call runs inside `context()`: the run's precision (autocast
    without its weight cache, so that the graph owns every cast), or nothing where the callable
    applies it itself. Returns (graph, static outputs): replaying the graph recomputes the
    outputs in place from whatever the static arguments hold then."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), context():
        for _ in range(warmup):
            fn(*static_args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool), context():
        static_out = fn(*static_args)
    return graph, static_out


def _tensors_key(args) -> tuple:
    leaves = pytree.tree_leaves(args)
    return tuple((tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t for t in leaves)


class GraphedByShape(nn.Module):
    """Calls `module` at `precision` through CUDA graphs: one graph per distinct input shapes,
    captured at its first call (after warm-up calls on a side stream) and replayed after.

    Inputs are copied into the graph's static inputs; outputs are the graph's static outputs,
    valid until the next call with the same shapes, which is enough inside one forward pass.
    Autocast's weight cache is off during capture, so the graph owns every cast it uses.
    """

    def __init__(self, module: nn.Module, precision, warmup: int = 3):
        super().__init__()
        self.module = module
        self.precision = precision
        self.warmup = warmup
        self.graphs: dict = {}
        self.pool = None

    def __getattr__(self, name: str):
        """Attributes the detector reads off the part (size_divisibility, output_shape())."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)

    def _autocast(self):
        return autocast(self.precision, "cuda", cache_enabled=False)

    def _capture(self, args):
        static_args = pytree.tree_map(
            lambda t: t.clone() if isinstance(t, torch.Tensor) else t, args
        )
        graph, static_out = capture(
            self.module, static_args, context=self._autocast, pool=self.pool, warmup=self.warmup
        )
        self.pool = graph.pool()
        log.info(
            "captured a CUDA graph of %s for input shapes %s",
            type(self.module).__name__,
            _tensors_key(args),
        )
        return graph, static_args, static_out

    def forward(self, *args):
        key = _tensors_key(args)
        if key not in self.graphs:
            self.graphs[key] = self._capture(args)
        graph, static_args, static_out = self.graphs[key]
        for dst, src in zip(pytree.tree_leaves(static_args), pytree.tree_leaves(args), strict=True):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        graph.replay()
        return static_out


def require_cuda(exported, backend: str) -> None:
    if exported.example[0].device.type != "cuda":
        raise Unsupported(f"backend={backend} replays CUDA graphs: it needs device=cuda")

"""Capture: takes the rewritten, fixed-shape forward of a detector, returns the callable a run
times: images in, the same flat detections as the eager module out.

One CUDA graph per input shapes (each size of `shapes=dynamic`, each batch) and autocast state,
captured at the first call after warm-up calls on a side stream. A call copies the images into
the graph's static inputs, replays it, and reads the per-image detection counts and exactness
flags back in one small copy (the one host synchronisation, inside the timed call, as the
caller needs the detections anyway); it then slices each image's valid slots. Where a flag says
the fixed budgets could not vouch for the answer, that call runs the eager module instead and
is counted (`notes()`), so an answer is never wrong in silence.

On the CPU (or with `graphs=False`) the rewritten forward runs without graphs: same answers,
no replay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from runner.backends.static_graph.heads import Slots

log = logging.getLogger(__name__)


def _key(images: tuple[torch.Tensor, ...]) -> tuple:
    enabled = torch.is_autocast_enabled("cuda")
    dtype = torch.get_autocast_dtype("cuda") if enabled else None
    return tuple((tuple(im.shape), im.dtype) for im in images), enabled, dtype


def _autocast_without_cache():
    """The caller's autocast, but owning every cast it makes (no weight cache across calls)."""
    enabled = torch.is_autocast_enabled("cuda")
    dtype = torch.get_autocast_dtype("cuda") if enabled else torch.float16
    return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)


class Replay:
    """images -> flat detections (boxes, scores, classes[, masks] per image), as the eager
    module returns them, from `forward(*images) -> Slots` replayed as CUDA graphs."""

    def __init__(
        self,
        forward: Callable[..., Slots],
        fallback: Callable[..., tuple],
        graphs: bool,
        warmup: int = 3,
        notes: list | None = None,
    ):
        self.forward = forward
        self.fallback = fallback
        self.graphs_on = graphs
        self.warmup = warmup
        self.graphs: dict = {}
        self.pool = None
        self.graph_bytes = 0
        self.calls = 0
        self.fallbacks = 0
        self.extra_notes = notes or []  # the backend's own (strings, or objects read late)

    def _capture(self, images):
        static_in = tuple(im.clone() for im in images)
        # the graph's own memory: what stays reserved once every freed block is released
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_reserved()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _autocast_without_cache():
            for _ in range(self.warmup):
                self.forward(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), _autocast_without_cache():
            static_out = self.forward(*static_in)
        torch.cuda.synchronize()
        self.pool = graph.pool()
        torch.cuda.empty_cache()  # the warm-up's freed blocks; the graph's pool stays
        self.graph_bytes += max(torch.cuda.memory_reserved() - before, 0)
        log.info("static_graph: captured one graph for %s", _key(images))
        return graph, static_in, static_out

    def _slots(self, images) -> Slots:
        if not self.graphs_on:
            return self.forward(*images)
        key = _key(images)
        if key not in self.graphs:
            self.graphs[key] = self._capture(images)
        graph, static_in, static_out = self.graphs[key]
        for dst, src in zip(static_in, images, strict=True):
            dst.copy_(src)
        graph.replay()
        return static_out

    def __call__(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.calls += 1
        slots = self._slots(images)
        counts_and_flags = torch.cat([slots.valid.sum(dim=1), slots.exact.long()]).cpu()
        n = slots.valid.shape[0]
        counts, exact = counts_and_flags[:n].tolist(), counts_and_flags[n:].tolist()
        if not all(exact):
            self.fallbacks += 1
            return self.fallback(*images)
        flat: list[torch.Tensor] = []
        for i, count in enumerate(counts):
            flat += [slots.boxes[i, :count], slots.scores[i, :count], slots.classes[i, :count]]
            if slots.masks is not None:
                flat.append(slots.masks[i, :count])
        return tuple(flat)

    def notes(self) -> str:
        graphs = (
            f"graphs={len(self.graphs)}; graph_mem_mb={self.graph_bytes / 1e6:.1f}"
            if self.graphs_on
            else "graphs=0 (rewritten forward without CUDA graphs)"
        )
        extra = "".join(f"; {note}" for note in self.extra_notes)
        return f"{graphs}; fallback_calls={self.fallbacks}/{self.calls}{extra}"

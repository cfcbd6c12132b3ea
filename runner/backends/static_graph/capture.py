"""Capture: takes a forward that answers with fixed-shape Outputs (outputs.py: the rewritten
detector in this process, or a loaded AOTInductor package), returns the callable a run times:
images in, the same flat detections as the eager module out.

One CUDA graph per input shapes (each size of `shapes=dynamic`, each batch), captured at the
first call by the backends' one capture helper (runner.backends._parts.capture). The forward
applies the run's precision itself (outputs.Outputs, or the package it was compiled into). A
call copies the images into the graph's static inputs, replays it, and reads the per-image
detection counts and exactness flags back in one small copy (the one host synchronisation,
inside the timed call, as the caller needs the detections anyway); it then slices each image's
valid slots, by the forward's `Fields` (outputs.py: which fields the tuple holds, and whether
its detections are instances, proposals or none beside a semantic segmentation). Where a flag
says the fixed budgets could not vouch for the answer, that call runs the `fallback` (the
eager module) instead and is counted (`notes()`), so an answer is never wrong in silence;
without a fallback (a package stands alone) the call keeps its answer and is counted as
inexact.

On the CPU (or with `graphs=False`) the forward runs without graphs: same answers, no replay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from runner.backends._parts import capture
from runner.backends.static_graph.outputs import FIELDS, Fields, slice_detections

log = logging.getLogger(__name__)


def _key(images: tuple[torch.Tensor, ...]) -> tuple:
    return tuple((tuple(im.shape), im.dtype) for im in images)


class Replay:
    """images -> flat detections (boxes, scores, classes[, masks] per image, or what `fields`
    say), as the eager module returns them, from `forward(*images) -> Outputs` replayed as CUDA
    graphs."""

    def __init__(
        self,
        forward: Callable[..., tuple],
        fields: Fields,
        fallback: Callable[..., tuple] | None,
        graphs: bool,
        warmup: int = 3,
        notes: list | None = None,
        stage_forward: Callable[..., tuple] | None = None,
    ):
        self.forward = forward
        self.fields = fields
        # the forward as it runs uncaptured with its stage ranges (runner.stages), for the run's
        # stage pass; None where they are not kept (compiled code)
        self.stage_call = stage_forward
        self.fallback = fallback
        self.graphs_on = graphs
        self.warmup = warmup
        self.graphs: dict = {}
        self.pool = None
        self.graph_bytes = 0
        self.calls = 0
        self.inexact = 0  # calls whose exactness flags were not all set
        self.extra_notes = notes or []  # the backend's own (strings, or objects read late)

    def _capture(self, images):
        static_in = tuple(im.clone() for im in images)
        # the graph's own memory: what stays reserved once every freed block is released
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_reserved()
        graph, static_out = capture(self.forward, static_in, pool=self.pool, warmup=self.warmup)
        torch.cuda.synchronize()
        self.pool = graph.pool()
        torch.cuda.empty_cache()  # the warm-up's freed blocks; the graph's pool stays
        self.graph_bytes += max(torch.cuda.memory_reserved() - before, 0)
        log.info("captured one CUDA graph for %s", _key(images))
        return graph, static_in, static_out

    def _outputs(self, images) -> tuple:
        if not self.graphs_on:
            return tuple(self.forward(*images))
        key = _key(images)
        if key not in self.graphs:
            self.graphs[key] = self._capture(images)
        graph, static_in, static_out = self.graphs[key]
        for dst, src in zip(static_in, images, strict=True):
            dst.copy_(src)
        graph.replay()
        return tuple(static_out)

    def __call__(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.calls += 1
        outputs = self._outputs(images)
        counts, exact = outputs[FIELDS.index("counts")], outputs[FIELDS.index("exact")]
        counts_and_flags = torch.cat([counts, exact.long()]).cpu()
        n = counts.shape[0]
        counts, exact = counts_and_flags[:n].tolist(), counts_and_flags[n:].tolist()
        if not all(exact):
            self.inexact += 1
            if self.fallback is not None:
                return self.fallback(*images)
        return slice_detections(outputs, counts, self.fields)

    def notes(self) -> str:
        graphs = (
            f"graphs={len(self.graphs)}; graph_mem_mb={self.graph_bytes / 1e6:.1f}"
            if self.graphs_on
            else "graphs=0 (without CUDA graphs)"
        )
        answered = (
            f"fallback_calls={self.inexact}/{self.calls}"
            if self.fallback is not None
            else f"inexact_calls={self.inexact}/{self.calls} (answered by the package anyway)"
        )
        extra = "".join(f"; {note}" for note in self.extra_notes)
        return f"{graphs}; {answered}{extra}"

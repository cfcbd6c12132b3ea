"""Stages: where one call's time goes. Takes the profiler's events of one call in which the
detector's parts were marked as named ranges; returns the time of each stage in ms.

A stage is a `torch.profiler.record_function` range named `d2bench.stage.<name>`, marked two
ways, both below the run (runner.run.timing profiles the call, runner.run.measurement decides
which call):

    in code           `with stage("boxes"):` around the parts of static_graph's rewritten
                      forward (runner.backends.static_graph): the ranges are there whenever
                      its Python runs, and cost nothing in a CUDA graph's replay
    by module hooks   `marked(model, table)`: a family's STAGE_MODULES (submodule path ->
                      stage) entered and left by forward hooks, for the eager model, only while
                      the stage pass runs (the timed calls never carry them)

Each piece of work counts for the innermost stage range around it: on a GPU, every kernel and
copy, by the range its launch happened in (`STAGE_BASIS["cuda"]`); on the CPU, the host time
inside each range less the ranges nested in it. Work outside every range is `other`, so the
stages add up to the call's total. A graph replay runs no Python, and Inductor removes
record_function ranges from what it compiles (so they cannot block fusion): the stage pass
runs one uncaptured call, of the uncompiled forward or of a second compile that keeps the
ranges (static_graph's compile_stages: runner/backends/static_graph/compiled.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

PREFIX = "d2bench.stage."
CALL = "d2bench.call"  # the range around the whole profiled call (its host time on the CPU)

# The stages, in the order a detector runs them, each with what it holds.
STAGES: dict[str, str] = {
    "preprocess": "normalise, pad and batch the images",
    "backbone": "the backbone and its FPN",
    "head": "the RPN's head, a dense head (RetinaNet, FCOS) or a semantic head (Panoptic FPN, "
    "semantic segmentation): convolutions over the pyramid",
    "proposals": "RPN proposals: top-k, decode, clip, NMS (without the head's convolutions)",
    "roi_pool": "ROI pooling (ROIAlign) of the box and mask heads",
    "boxes": "the box head and detection NMS (RetinaNet, FCOS: decoding and NMS)",
    "mask_head": "the mask head (without its ROI pooling)",
    "keypoint_head": "the keypoint head (without its ROI pooling)",
    "paste": "post-processing at the input size: clip, paste masks",
    "other": "everything outside the ranges above (copies, output packing, compaction)",
}
# what a stage's time is, by the device the call ran on
STAGE_BASIS = {
    "cuda": "GPU time (kernels and copies) of one uncaptured call, by the stage that launched it",
    "cpu": "host time of one uncaptured call inside each stage's range (nested ranges excluded)",
}


def column(name: str) -> str:
    """The Row column of stage `name`."""
    return f"stage_{name}_ms"


COLUMNS = tuple(column(name) for name in STAGES)


def stage(name: str):
    """The range of stage `name` around a part of the forward (`with stage("backbone"): ...`)."""
    import torch

    if name not in STAGES or name == "other":
        raise ValueError(f"stage {name!r}; allowed: {[s for s in STAGES if s != 'other']}")
    return torch.profiler.record_function(PREFIX + name)


def _module(model, path: str):
    for part in path.split("."):
        model = getattr(model, part, None)
        if model is None:
            return None
    return model


@contextlib.contextmanager
def marked(model, table: dict[str, str]) -> Iterator[int]:
    """`model`'s submodules named in `table` (dotted path -> stage) run inside their stage's
    range while the block runs; paths the model lacks are skipped. Yields how many were
    marked; the hooks are gone afterwards, also when the block raises."""
    handles, open_ranges = [], []

    def enter(name):
        def hook(module, args):
            context = stage(name)
            context.__enter__()
            open_ranges.append(context)

        return hook

    def leave(module, args, output):
        if open_ranges:
            open_ranges.pop().__exit__(None, None, None)

    for path, name in table.items():
        module = _module(model, path)
        if module is None:
            continue
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        yield len(handles) // 2
    finally:
        for handle in handles:
            handle.remove()
        while open_ranges:  # a forward that raised inside a marked module
            open_ranges.pop().__exit__(None, None, None)


@dataclass(frozen=True)
class Event:
    """One host-side event of the profiled call: its name, its parent's index in the list (None
    at the top), its host time and the device time of the kernels and copies it launched (us)."""

    name: str
    parent: int | None
    host_us: float
    device_us: float = 0.0


def attribute(events: list[Event], device: str) -> dict[str, float] | None:
    """ms per stage of one call from its events, as STAGE_BASIS[device] says: every name of
    STAGES, None for a stage whose range never ran (a model without masks has no mask head),
    `other` always; None in place of all where no stage range ran (nothing was marked)."""

    def innermost(index: int | None) -> str:
        while index is not None:
            name = events[index].name
            if name.startswith(PREFIX):
                return name[len(PREFIX) :]
            index = events[index].parent
        return "other"

    seen = {e.name[len(PREFIX) :] for e in events if e.name.startswith(PREFIX)}
    if not seen:
        return None
    us = dict.fromkeys(STAGES, 0.0)
    if device == "cuda":
        for index, event in enumerate(events):
            if event.device_us:
                us[innermost(index)] += event.device_us
    else:
        calls = [e.host_us for e in events if e.name == CALL]
        for event in events:
            if event.name.startswith(PREFIX):
                name = event.name[len(PREFIX) :]
                us[name] += event.host_us
                us[innermost(event.parent)] -= event.host_us  # the enclosing stage, or other
        us["other"] += sum(calls)
        if not calls:  # no total to take the ranges from
            us["other"] = 0.0
    return {
        name: max(value, 0.0) / 1000.0 if name in seen or name == "other" else None
        for name, value in us.items()
    }


def events_of(function_events: Iterable) -> list[Event]:
    """The Events of torch.profiler's function events (`prof.events()`, its tree built): the
    host-side ones, with each one's own kernels' device time."""
    host = [e for e in function_events if str(getattr(e, "device_type", "")).endswith("CPU")]
    position = {id(e): i for i, e in enumerate(host)}
    events = []
    for e in host:
        parent = getattr(e, "cpu_parent", None)
        device_us = sum(k.duration for k in getattr(e, "kernels", ()) or ())
        events.append(
            Event(
                name=e.name,
                parent=position.get(id(parent)) if parent is not None else None,
                host_us=e.time_range.end - e.time_range.start,
                device_us=float(device_us),
            )
        )
    return events

"""compile=true in static_graph: the rewritten forward compiled by Inductor, and what the row
says of the compile.

    compiled(outputs, inputs, mode, keep_stages)
                             torch.compile of the rewritten forward, once per input size: the
                             anchors of every size are made by one uncompiled call first
                             (proposals.Anchors; made inside the first compiled call they cost a
                             second compile, its guard failing on the next call); with
                             `keep_stages`, also the compile that keeps the stage ranges, for
                             the stage pass
    _CompileCache, _StageCompile
                             the row's notes: how Inductor's on-disk caches answered the timed
                             compile and the stage pass's own
    compile_keeping_ranges(module, mode)
                             a compile whose code keeps the stage ranges (runner.stages)

Dynamo leaves record_function ranges out of the graphs it captures unless it is told to keep
them (torch._dynamo.config.capture_profiler_record_function), and Inductor removes the kept
ones after grad, so that they cannot block fusion (torch/_inductor/fx_passes/post_grad.py,
_remove_profiler_ops). `compile_keeping_ranges` keeps the stage ranges: a post-grad pass that
runs before that removal turns each stage range's enter and exit into the custom ops
d2bench::range_enter and d2bench::range_exit. They have side effects (Inductor keeps them),
each takes the previous one's answer (they run in the ranges' order), and the compiled code
calls them where the ranges were: the kernels between them launch inside the range. Inductor
may still fuse work across a range's edge (nothing ties the kernels to the markers); such a
kernel counts for the range it launched in.
"""

from __future__ import annotations

import torch

from runner.stages import PREFIX


def compiled(outputs, inputs, mode: str, keep_stages: bool):
    """(the compiled forward, the stage pass's call or None, the notes to add) for `outputs`
    (outputs.Outputs) at each input size of `inputs`, in Inductor's `mode`."""
    for images in inputs.images.values():
        with torch.no_grad():
            outputs(*images)  # makes each size's anchors outside the compiled graph
    forward = torch.compile(outputs, mode=mode, dynamic=False)
    stage_forward = _StageCompile(outputs, mode) if keep_stages else None
    notes = [_CompileCache(excluding=stage_forward)]
    if stage_forward is not None:
        notes.append(stage_forward)
    return forward, stage_forward, notes


def _cache_counts():
    """Inductor's on-disk caches' hits and misses in this process so far."""
    from collections import Counter

    from torch._dynamo.utils import counters

    inductor, aot = counters["inductor"], counters["aot_autograd"]
    return Counter(
        fx_graph_cache_hit=inductor["fxgraph_cache_hit"],
        fx_graph_cache_miss=inductor["fxgraph_cache_miss"],
        aot_autograd_cache_hit=aot["autograd_cache_hit"],
        aot_autograd_cache_miss=aot["autograd_cache_miss"],
    )


def _cache_text(counts) -> str:
    return (
        f"fx_graph_cache hit={counts['fx_graph_cache_hit']} "
        f"miss={counts['fx_graph_cache_miss']}; "
        f"aot_autograd_cache hit={counts['aot_autograd_cache_hit']} "
        f"miss={counts['aot_autograd_cache_miss']}"
    )


class _CompileCache:
    """Inductor's on-disk caches as this process met them (read when the row is written, after
    the lazy compile): a warm cache makes optimize_s the cost of a compile whose kernels and
    graphs another process already built. What the stage pass's own compile met
    (`excluding`, a _StageCompile) is left out: it is not the timed compile's."""

    def __init__(self, excluding=None):
        self.excluding = excluding

    def __str__(self) -> str:
        counts = _cache_counts()
        if self.excluding is not None:
            counts -= self.excluding.cache
        return _cache_text(counts)


class _StageCompile:
    """The rewritten forward compiled a second time with its stage ranges kept
    (compile_keeping_ranges, below), for the stage pass of a compile=true row: the
    Replay's stage_call. Its first call compiles; `compiles` tells the stage pass to make that
    call before it profiles. Its note says what Inductor's caches gave this compile."""

    compiles = True

    def __init__(self, module, mode: str):
        from collections import Counter

        self.call = compile_keeping_ranges(module, mode)
        self.cache = Counter()

    def __call__(self, *images):
        before = _cache_counts()
        try:
            return self.call(*images)
        finally:
            self.cache += _cache_counts() - before

    def __str__(self) -> str:
        return f"stage_compile {_cache_text(self.cache)}"


RANGE_OPS = ("d2bench::range_enter", "d2bench::range_exit")


def compile_keeping_ranges(module, mode: str = "default"):
    """`torch.compile(module, mode=mode, dynamic=False)` whose compiled code keeps the stage
    ranges of `module`'s forward (`with stage(...)`), for a stage pass of compiled code. It
    differs from the plain compile only there: the marker calls, and Inductor's locality
    reordering off (it would move a stage's last op past the next stage's marker). The first
    call compiles, as any torch.compile; call it through the returned function, which keeps the
    ranges while dynamo traces."""
    import torch

    _register_range_ops()
    options = dict(torch._inductor.list_mode_options(mode))
    options.update(
        post_grad_custom_pre_pass=_keep_ranges_pass(),
        reorder_for_locality=False,
        reorder_for_peak_memory=False,
    )
    compiled = torch.compile(module, options=options, dynamic=False)

    def call(*args):
        with torch._dynamo.config.patch(capture_profiler_record_function=True):
            return compiled(*args)

    return call


_OPEN_RANGES: dict[int, object] = {}  # range_enter's key -> the profiler's open record


def _register_range_ops() -> None:
    import itertools

    import torch

    if hasattr(torch.ops.d2bench, "range_enter"):
        return
    keys = itertools.count(1)

    @torch.library.custom_op(
        RANGE_OPS[0], mutates_args=(), schema="(str name, Tensor? after) -> Tensor"
    )
    def range_enter(name, after):
        """Opens the profiler range `name` (after the marker whose answer is `after`); answers
        the key range_exit closes it by."""
        key = next(keys)
        answer = torch.full((), key, dtype=torch.int64)
        _OPEN_RANGES[key] = torch.ops.profiler._record_function_enter_new(name, None)
        return answer

    @range_enter.register_fake
    def _(name, after):
        return torch.empty((), dtype=torch.int64)

    @torch.library.custom_op(
        RANGE_OPS[1], mutates_args=(), schema="(Tensor key, Tensor after) -> Tensor"
    )
    def range_exit(key, after):
        """Closes the range range_enter opened with `key` (after the marker answering `after`)."""
        torch.ops.profiler._record_function_exit._RecordFunction(_OPEN_RANGES.pop(int(key)))
        return torch.zeros((), dtype=torch.int64)

    @range_exit.register_fake
    def _(key, after):
        return torch.empty((), dtype=torch.int64)

    for op in (torch.ops.d2bench.range_enter.default, torch.ops.d2bench.range_exit.default):
        torch.fx.node.has_side_effect(op)  # no one reads their answers: Inductor keeps them


def _keep_ranges(graph) -> None:
    """The post-grad pass: every stage range's profiler enter and exit in `graph` replaced by
    range_enter and range_exit, chained in graph order. Other ranges are left to Inductor."""
    import torch

    enter = torch.ops.profiler._record_function_enter_new.default
    leave = torch.ops.profiler._record_function_exit._RecordFunction
    fake_mode = next(
        (
            v.fake_mode
            for v in (n.meta.get("val") for n in graph.nodes)
            if isinstance(v, torch._subclasses.FakeTensor)
        ),
        None,
    )
    if fake_mode is None:  # a graph without tensors: nothing to time, Inductor drops the ranges
        return
    opened, last, old = {}, None, []
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is enter and str(node.args[0]).startswith(PREFIX):
            op, args = torch.ops.d2bench.range_enter.default, (node.args[0], last)
        elif node.target is leave and node.args[0] in opened:
            op, args = torch.ops.d2bench.range_exit.default, (opened[node.args[0]], last)
        else:
            continue
        with graph.inserting_before(node):
            last = graph.call_function(op, args)
        with fake_mode:
            last.meta["val"] = torch.empty((), dtype=torch.int64)
        if node.target is enter:
            opened[node] = last
        old.append(node)
    for node in reversed(old):  # each exit before the enter it reads
        graph.erase_node(node)


def _keep_ranges_pass():
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class KeepRanges(CustomGraphPass):
        def __call__(self, graph) -> None:
            _keep_ranges(graph)

        def uuid(self):  # in Inductor's cache key: a change of this file compiles anew
            return get_hash_for_files((__file__,))

    return KeepRanges()

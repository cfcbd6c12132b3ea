"""Where the GPU work goes (issue 21, items 4-6): stage ranges and their attribution
(runner.stages, runner.run.timing.stage_profile), FLOP counts and the peak table
(runner.run.flops), the row columns they fill, the report's tables and figures, and
conf/sweep/throughput.yaml.

The attribution is checked on hand-made events and on real profiles of the CPU (host time per
stage, known sleeps); the FLOP count on layers whose FLOPs are written out by hand. detectron2
tests (the static_graph forward's stages, the count of a detector) skip without it; GPU tests
(device time per stage, a whole run's columns on the GPU) skip without CUDA and are the lead's
to run on the H200.
"""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from runner import stages
from runner.run import flops, steps, timing
from runner.stages import Event
from tests.helpers import run_runner, skip_without_cuda, skip_without_detectron2

# ---- attribution ---------------------------------------------------------------------------


def test_a_kernel_counts_for_the_innermost_stage_around_its_launch():
    p = stages.PREFIX
    events = [
        Event(stages.CALL, None, 1000.0),  # 0
        Event(p + "backbone", 0, 400.0),  # 1
        Event("aten::conv2d", 1, 300.0, device_us=100.0),  # 2
        Event(p + "boxes", 0, 300.0),  # 3
        Event(p + "roi_pool", 3, 100.0),  # 4
        Event("torchvision::roi_align", 4, 90.0, device_us=30.0),  # 5
        Event("aten::addmm", 3, 50.0, device_us=20.0),  # 6
        Event("aten::copy_", 0, 5.0, device_us=5.0),  # 7: outside every stage
        Event("aten::relu", 2, 1.0, device_us=1.0),  # 8: nested in an op of backbone
    ]
    ms = stages.attribute(events, "cuda")
    assert ms["backbone"] == pytest.approx(0.101)
    assert ms["roi_pool"] == pytest.approx(0.030)
    assert ms["boxes"] == pytest.approx(0.020)
    assert ms["other"] == pytest.approx(0.005)
    assert ms["head"] is None and ms["mask_head"] is None  # never entered
    assert sum(v for v in ms.values() if v) == pytest.approx(0.156)  # every kernel, once


def test_on_the_cpu_a_stage_is_its_host_time_less_the_stages_nested_in_it():
    p = stages.PREFIX
    events = [
        Event(stages.CALL, None, 1000.0),
        Event(p + "backbone", 0, 400.0),
        Event(p + "boxes", 0, 300.0),
        Event(p + "roi_pool", 2, 100.0),
        Event("aten::addmm", 2, 50.0),
    ]
    ms = stages.attribute(events, "cpu")
    assert ms["backbone"] == pytest.approx(0.4)
    assert ms["boxes"] == pytest.approx(0.2)
    assert ms["roi_pool"] == pytest.approx(0.1)
    assert ms["other"] == pytest.approx(0.3)  # the call less its top-level stages


def test_a_call_that_marked_no_stage_has_no_stage_figures():
    assert stages.attribute([Event("aten::conv2d", None, 10.0, 5.0)], "cuda") is None


def test_a_stage_name_outside_the_list_is_refused():
    with pytest.raises(ValueError, match="allowed"):
        stages.stage("backbone_fpn")
    with pytest.raises(ValueError):
        stages.stage("other")  # what no range covers; never a range itself
    assert stages.COLUMNS[-1] == "stage_other_ms"


class Sleeper(nn.Module):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


class Detector(nn.Module):
    """A stand-in whose parts take known host time: backbone 300 ms, its RPN head 150 ms inside
    an RPN of 250 ms in all, and 100 ms outside every part. Each part is at least 100 ms longer
    or shorter than any other it could be mistaken for, far beyond the lateness of a sleep on a
    busy machine (tens of ms; 20 ms sleeps came out 33 ms on a shared 2-core host)."""

    def __init__(self):
        super().__init__()
        self.backbone = Sleeper(0.3)
        self.rpn = nn.Module()
        self.rpn.head = Sleeper(0.15)

    def forward(self, x):
        x = self.backbone(x)
        with stages.stage("proposals"):  # in code, as static_graph marks its parts
            time.sleep(0.1)
            x = self.rpn.head(x)
        time.sleep(0.1)
        return x


def test_the_stage_profile_of_a_real_call_on_the_cpu():
    model, x = Detector(), torch.zeros(1)
    with stages.marked(model, {"backbone": "backbone", "rpn.head": "head", "nope": "boxes"}) as n:
        assert n == 2  # a path the model lacks is skipped
        ms = timing.stage_profile(lambda: model(x), lambda: None, "cpu")
    assert ms["backbone"] == pytest.approx(300, abs=45)
    assert ms["head"] == pytest.approx(150, abs=45)
    assert ms["proposals"] == pytest.approx(100, abs=45)
    assert ms["other"] == pytest.approx(100, abs=45)
    assert ms["boxes"] is None
    # the hooks are gone: the timed calls never carry them
    assert not model.backbone._forward_pre_hooks and not model.backbone._forward_hooks
    assert not model.rpn.head._forward_pre_hooks


def test_hooks_are_removed_when_the_forward_raises():
    model = Detector()
    model.backbone.forward = None  # calling it raises
    with pytest.raises(TypeError), stages.marked(model, {"backbone": "backbone"}):
        model(torch.zeros(1))
    assert not model.backbone._forward_pre_hooks and not model.backbone._forward_hooks


class Ranged(nn.Module):
    def forward(self, x):
        with stages.stage("backbone"):
            y = x.sin()
        with stages.stage("boxes"), stages.stage("roi_pool"):
            y = y.cos()
        return y + 1


def test_the_ranges_leave_compiled_and_exported_code_as_it_was():
    """torch.compile traces through a stage range without a graph break (the compiled forward of
    static_graph compile=true is one graph as before), and torch.export drops the ranges (an
    aot_package holds the same ops)."""
    explained = torch._dynamo.explain(Ranged())(torch.randn(4))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    program = torch.export.export(Ranged(), (torch.randn(4),), strict=False)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets == ["aten.sin.default", "aten.cos.default", "aten.add.Tensor"]


class Convolving(nn.Module):
    """Work Inductor calls out to (a convolution, a matrix product) in known stages, nested
    ranges included, and elementwise work it fuses."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.linear = nn.Linear(8, 4)

    def forward(self, x):
        with stages.stage("backbone"):
            y = self.conv(x).relu()
        with stages.stage("boxes"):
            pooled = y.mean((2, 3))
            with stages.stage("roi_pool"):
                z = torch.mm(pooled, self.linear.weight.t())
            z = z.sigmoid()
        return z + 1


def stage_of_each_op(call) -> dict[str, str]:
    """The innermost stage around each aten op of one profiled call of `call`."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    events = stages.events_of(prof.events())
    found = {}
    for event in events:
        parent, stage = event.parent, "other"
        while parent is not None:
            if events[parent].name.startswith(stages.PREFIX):
                stage = events[parent].name[len(stages.PREFIX) :]
                break
            parent = events[parent].parent
        if event.name in ("aten::convolution", "aten::mm"):
            found[event.name] = stage
    return found


@pytest.mark.slow
def test_compiled_code_keeps_the_stage_ranges_when_asked():
    """A plain torch.compile drops the ranges (Inductor removes them after grad, and the stage
    pass finds nothing); compile_keeping_ranges keeps them in the compiled code, each
    convolution and product launched inside the range it was written in, with the eager
    module's answers."""
    from runner.backends.static_graph.compiled import compile_keeping_ranges

    model, x = Convolving().eval(), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        plain = torch.compile(model, dynamic=False)
        plain(x)
        assert timing.stage_profile(lambda: plain(x), lambda: None, "cpu") is None
        kept = compile_keeping_ranges(model)
        torch.testing.assert_close(kept(x), expected)
        assert stage_of_each_op(lambda: kept(x)) == {
            "aten::convolution": "backbone",
            "aten::mm": "roi_pool",
        }
        ms = timing.stage_profile(lambda: kept(x), lambda: None, "cpu")
    assert {name for name, value in ms.items() if value is not None} == {
        "backbone",
        "boxes",
        "roi_pool",
        "other",
    }


def test_the_stage_pass_compiles_first_when_the_call_compiles():
    """On the CPU the stage pass profiles the first call, unless it is told that the first call
    compiles (`warm`): then one call runs before, unprofiled."""
    calls = []

    def call():  # the first call takes 300 ms more, as a compile would
        with stages.stage("backbone"):
            time.sleep(0.0 if calls else 0.3)
        calls.append(1)

    assert timing.stage_profile(call, lambda: None, "cpu")["backbone"] >= 300
    calls.clear()
    assert timing.stage_profile(call, lambda: None, "cpu", warm=True)["backbone"] < 150
    assert len(calls) == 2


def test_every_family_marks_only_known_stages():
    from runner import families

    for name in families.names():
        table = families.get(name).STAGE_MODULES
        assert set(table.values()) <= set(stages.STAGES) - {"other"}, name


# ---- FLOPs ---------------------------------------------------------------------------------


def test_the_flop_count_of_one_convolution_is_what_the_hand_gives():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    x = torch.zeros(2, 3, 16, 16)
    # a multiply-add is 2 FLOPs: 2 x (outputs: 2 x 8 x 16 x 16) x (inputs per output: 3 x 3 x 3)
    assert flops.count(lambda: conv(x)) == 2 * (2 * 8 * 16 * 16) * (3 * 3 * 3)
    linear = nn.Linear(10, 5)
    assert flops.count(lambda: linear(torch.zeros(4, 10))) == 2 * 4 * 10 * 5
    assert flops.count(lambda: torch.relu(x)) == 0  # elementwise work is not counted


def precision(dtype: str, autocast: bool = False, strict: bool = False):
    return SimpleNamespace(dtype=dtype, autocast=autocast, strict=strict)


def test_the_peak_is_the_datasheets_dense_figure_for_the_precisions_format():
    fp16, bf16 = precision("float16", autocast=True), precision("bfloat16", autocast=True)
    fp32, strict = precision("float32"), precision("float32", strict=True)
    assert flops.peak_tflops("NVIDIA H200", fp16) == 989.4  # 1979 with sparsity, halved
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3", bf16) == 989.4
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3", fp32) == 494.7  # TF32 convolutions
    assert flops.peak_tflops("NVIDIA H200", strict) == 66.9  # TF32 off: plain fp32
    assert flops.peak_tflops("NVIDIA A100-SXM4-80GB", fp16) is None  # not in the table
    assert flops.peak_tflops("", fp16) is None  # a CPU run


def test_the_achieved_flops_and_share_follow_from_the_median():
    assert flops.derived(100.0, 10.0, 1000.0) == {"tflop_per_s": 10.0, "peak_share": 0.01}
    assert flops.derived(100.0, 10.0, None) == {"tflop_per_s": 10.0, "peak_share": None}
    assert flops.derived(None, 10.0, 1000.0) == {"tflop_per_s": None, "peak_share": None}


def test_a_row_gets_its_flop_rate_from_its_own_median():
    row = steps.row(
        {"model": "m", "status": "ok", "latency_ms_median": 20.0},
        {"gflop_per_call": 50.0, "peak_tflop_per_s": 500.0},
    )
    assert row.tflop_per_s == pytest.approx(2.5) and row.peak_share == pytest.approx(0.005)


def test_the_stage_figures_are_row_columns_outside_the_identity():
    from runner import identity

    finished = steps.Finished(call_stages_ms={"backbone": 2.0, "other": 0.5, "head": None})
    fields = finished.fields()
    assert fields["stage_backbone_ms"] == 2.0 and fields["stage_head_ms"] is None
    measured = (*stages.COLUMNS, "gflop_per_call", "tflop_per_s", "peak_tflop_per_s", "peak_share")
    assert not set(measured) & set(identity.identity_columns())
    assert set(measured) <= set(steps.COLUMNS)


# ---- the throughput sweep ------------------------------------------------------------------


def test_sweep_throughput_runs_two_detectors_at_three_batches_in_fp16(tmp_path):
    """conf/sweep/throughput.yaml (the plan only: every job is refused before it runs)."""
    from tests.test_sweeper import NO_RUN, REFUSED, launched_jobs, launched_sessions

    done = run_runner("sweep=throughput", *NO_RUN, f"hydra.sweep.dir={tmp_path}", timeout=300)
    log = done.stdout + done.stderr
    jobs = launched_jobs(log)
    assert len(jobs) == 12 and launched_sessions(log) == 6, log[-2000:]
    assert {(j["model"], j["batch"]) for j in jobs} == {
        (model, batch) for model in ("mask_rcnn_fpn", "retinanet") for batch in ("1", "8", "32")
    }
    assert {j["precision"] for j in jobs} == {"fp16"}
    assert {(j["backend"], j.get("backend.options.compile", "")) for j in jobs} == {
        ("eager", ""),
        ("static_graph", "true"),
    }
    assert REFUSED.format(12) in log


# ---- the report ----------------------------------------------------------------------------


def kernel_rows():
    from tests.test_report import measured

    stage_ms = {"backbone": 3.0, "head": 0.5, "proposals": 1.0, "boxes": 0.7, "other": 0.2}
    figures = {stages.column(name): value for name, value in stage_ms.items()}
    rows = [
        measured(
            "MaskRCNNFPN",
            "fp16",
            "static_graph",
            6.0,
            gflop_per_call=120.0,
            tflop_per_s=20.0,
            peak_tflop_per_s=989.4,
            peak_share=20.0 / 989.4,
            **figures,
        ),
        measured("MaskRCNNFPN", "fp16", "eager", 30.0, gflop_per_call=120.0, tflop_per_s=4.0),
    ]
    for batch, median in ((2, 20.0), (8, 60.0)):  # one line at two batches
        rows.append(measured("", "fp16", "eager", median, batch=batch))
    return rows


def test_the_report_shows_stages_flops_and_throughput():
    from runner.report.tables import tables

    text = tables(kernel_rows())
    assert "### Where the time goes, by stage" in text
    assert (
        "| MaskRCNNFPN | fp16 | static_graph | 3.000 | 0.500 | 1.000 | 0.700 | 0.200 | 5.400 |"
        in (text)
    )
    assert "### FLOP/s" in text and "| 120.0 | 6.00 | 20.00 | 989.4 | 2.0% |" in text
    assert "### Throughput" in text
    assert "| 2 | 100.0 | 20.00 | 10.000 |" in text and "| 8 | 133.3 | 60.00 | 7.500 |" in text


def test_rows_without_those_figures_leave_the_report_as_it_was():
    from runner.report import kernels
    from tests.test_report import measured

    assert kernels.section([measured("RetinaNet", "fp16", "eager", 10.0)], level=3) == ""


def test_the_stage_and_throughput_figures_draw_what_the_rows_hold():
    from runner.report.kernels_plot import draw_stages, draw_throughput

    stages_drawing = draw_stages(kernel_rows())
    assert len(stages_drawing.drawn) == 5  # one bar per stage of the one row with stages
    throughput = draw_throughput(kernel_rows())
    assert sorted(m.x for m in throughput.drawn) == [2.0, 8.0]
    from tests.test_report import measured

    assert draw_stages([measured("RetinaNet", "fp16", "eager", 10.0)]) is None
    assert draw_throughput([measured("RetinaNet", "fp16", "eager", 10.0)]) is None


# ---- detectron2 (CPU) ----------------------------------------------------------------------


def small_detector(make_config, *overrides):
    from runner.run import measurement

    cfg = make_config(
        "model=mask_rcnn_fpn", "device=cpu", "inputs.height=128", "inputs.width=160", *overrides
    )
    built = measurement.build(cfg, torch.device("cpu"))
    return cfg, built


@pytest.mark.detectron2
@pytest.mark.slow
def test_the_static_graph_forward_marks_every_stage_of_mask_rcnn(make_config):
    """Each R-CNN stage runs inside its range in the rewritten forward (CPU: host time)."""
    skip_without_detectron2()
    from runner import backends

    cfg, built = small_detector(make_config, "backend=static_graph", "postprocess=true")
    options = backends.validate_options("static_graph", cfg.backend.options)
    fn = backends.get("static_graph")(built.exported, built.images, cfg.precision, options)
    batch = built.images.images["opt"]
    with torch.no_grad():
        ms = timing.stage_profile(lambda: fn.stage_call(*batch), lambda: None, "cpu")
    for name in ("preprocess", "backbone", "head", "proposals", "roi_pool", "boxes", "mask_head"):
        assert ms[name] is not None and ms[name] > 0, (name, ms)
    assert ms["paste"] is not None  # postprocess=true pastes the masks


@pytest.mark.detectron2
@pytest.mark.slow
def test_compiled_static_graph_has_stages_only_with_compile_stages(make_config):
    """compile=true alone keeps no ranges (no stage_call); with compile_stages the stage pass
    gets a second compile that keeps them, every R-CNN stage is there, and the row's notes keep
    that compile's cache counts apart from the timed compile's."""
    skip_without_detectron2()
    from runner import backends

    compiled = ("backend=static_graph", "backend.options.compile=true")
    cfg, built = small_detector(make_config, *compiled)
    options = backends.validate_options("static_graph", cfg.backend.options)
    fn = backends.get("static_graph")(built.exported, built.images, cfg.precision, options)
    assert fn.stage_call is None and "stage_compile" not in fn.notes()

    cfg = make_config("model=mask_rcnn_fpn", *compiled, "backend.options.compile_stages=true")
    options = backends.validate_options("static_graph", cfg.backend.options)
    fn = backends.get("static_graph")(built.exported, built.images, cfg.precision, options)
    batch = built.images.images["opt"]
    with torch.no_grad():
        expected = fn.forward(*batch)  # the timed compile
        ms = timing.stage_profile(
            lambda: fn.stage_call(*batch), lambda: None, "cpu", warm=fn.stage_call.compiles
        )
        torch.testing.assert_close(fn.stage_call(*batch), expected)
    for name in ("preprocess", "backbone", "head", "proposals", "roi_pool", "boxes", "mask_head"):
        assert ms[name] is not None and ms[name] > 0, (name, ms)
    timed, staged = fn.notes().split("; stage_compile ")
    hits_and_misses = [int(n) for n in re.findall(r"(?:hit|miss)=(\d+)", staged)]
    assert sum(hits_and_misses) >= 1, staged  # the stage compile met Inductor's caches
    assert "fx_graph_cache" in timed


@pytest.mark.detectron2
@pytest.mark.slow
def test_the_static_graph_forward_marks_the_keypoint_head(make_config):
    skip_without_detectron2()
    from runner import backends

    cfg = make_config(
        "model=keypoint_rcnn_fpn", "device=cpu", "inputs.height=128", "inputs.width=160"
    )
    from runner.run import measurement

    built = measurement.build(cfg, torch.device("cpu"))
    cfg = make_config("model=keypoint_rcnn_fpn", "backend=static_graph", "device=cpu")
    options = backends.validate_options("static_graph", cfg.backend.options)
    fn = backends.get("static_graph")(built.exported, built.images, cfg.precision, options)
    batch = built.images.images["opt"]
    with torch.no_grad():
        ms = timing.stage_profile(lambda: fn.stage_call(*batch), lambda: None, "cpu")
    assert ms["keypoint_head"] > 0 and ms["roi_pool"] > 0 and ms["mask_head"] is None, ms


@pytest.mark.detectron2
@pytest.mark.slow
def test_the_eager_detectron2_model_is_marked_by_its_modules(make_config):
    skip_without_detectron2()
    from runner import families

    cfg, built = small_detector(make_config)
    batch = built.images.images["opt"]
    with (
        torch.no_grad(),
        stages.marked(built.exported.model, families.get("detectron2").STAGE_MODULES),
    ):
        ms = timing.stage_profile(lambda: built.exported.module(*batch), lambda: None, "cpu")
    for name in ("backbone", "head", "proposals", "roi_pool", "boxes", "mask_head"):
        assert ms[name] is not None and ms[name] > 0, (name, ms)


@pytest.mark.detectron2
def test_a_detectron2_detectors_flops_grow_with_the_batch(make_config):
    skip_without_detectron2()
    cfg, one = small_detector(make_config)
    counted = [flops.count(lambda b=one.images.images["opt"]: one.exported.module(*b))]
    cfg, two = small_detector(make_config, "batch=2")
    counted.append(flops.count(lambda b=two.images.images["opt"]: two.exported.module(*b)))
    assert counted[0] > 1e9  # a backbone, an RPN and 1000 proposals through the box head
    assert counted[1] == pytest.approx(2 * counted[0], rel=0.02)


# ---- GPU: the lead's H200 run --------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.detectron2
@pytest.mark.slow
def test_stages_of_the_uncaptured_forward_add_up_to_the_replays_gpu_time(make_config):
    """On CUDA a stage is device time: the stages of one uncaptured call of static_graph's
    forward add up to about the GPU busy time of one replay of its graph (the same kernels)."""
    skip_without_cuda()
    skip_without_detectron2()
    from runner import backends

    cfg = make_config("model=mask_rcnn_fpn", "precision=fp16", "backend=static_graph")
    from runner.run import measurement

    built = measurement.build(cfg, torch.device("cuda"))
    options = backends.validate_options("static_graph", cfg.backend.options)
    fn = backends.get("static_graph")(built.exported, built.images, cfg.precision, options)
    batch = built.images.images["opt"]
    with torch.no_grad():
        fn(*batch)  # capture
        busy = timing.gpu_profile(lambda: fn(*batch), torch.cuda.synchronize)
        ms = timing.stage_profile(lambda: fn.stage_call(*batch), torch.cuda.synchronize, "cuda")
    total = sum(v for v in ms.values() if v)
    assert ms["backbone"] > ms["preprocess"] and ms["mask_head"] > 0 and ms["roi_pool"] > 0
    assert total == pytest.approx(busy.busy_ms, rel=0.25), (ms, busy.busy_ms)


@pytest.mark.gpu
@pytest.mark.detectron2
@pytest.mark.slow
def test_stages_of_the_compile_that_keeps_them_add_up_to_the_compiled_replays_gpu_time(
    make_config,
):
    """compile_stages: the stages of one uncaptured call of the compile that keeps the ranges
    add up to about the GPU busy time of one replay of the timed compile's graph (the same
    rewrite, compiled with its stage edges kept)."""
    skip_without_cuda()
    skip_without_detectron2()
    from runner import backends
    from runner.run import measurement

    cfg = make_config(
        "model=mask_rcnn_fpn",
        "precision=fp16",
        "backend=static_graph",
        "backend.options.compile=true",
        "backend.options.compile_stages=true",
    )
    built = measurement.build(cfg, torch.device("cuda"))
    options = backends.validate_options("static_graph", cfg.backend.options)
    fn = backends.get("static_graph")(built.exported, built.images, cfg.precision, options)
    batch = built.images.images["opt"]
    with torch.no_grad():
        fn(*batch)  # compile and capture
        busy = timing.gpu_profile(lambda: fn(*batch), torch.cuda.synchronize)
        ms = timing.stage_profile(lambda: fn.stage_call(*batch), torch.cuda.synchronize, "cuda")
    total = sum(v for v in ms.values() if v)
    assert ms["backbone"] > ms["preprocess"] and ms["mask_head"] > 0 and ms["roi_pool"] > 0
    assert total == pytest.approx(busy.busy_ms, rel=0.25), (ms, busy.busy_ms)


@pytest.mark.gpu
@pytest.mark.detectron2
@pytest.mark.slow
def test_a_gpu_run_writes_stages_flops_and_the_share_of_the_peak(tmp_path):
    skip_without_cuda()
    skip_without_detectron2()
    from runner.run.record import read_rows

    out = tmp_path / "sweep"
    done = run_runner(
        "model=retinanet",
        "precision=fp16",
        "bench.warmup=10",
        "bench.iters=20",
        "bench.repeats=1",
        f"hydra.sweep.dir={out}",
        "--multirun",
        "backend=eager,static_graph",
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r.backend: r for p in out.rglob("result.csv") for r in read_rows(p)}
    for row in rows.values():
        assert row.gflop_per_call > 10 and row.tflop_per_s > 0
        if row.gpu_name in flops.PEAK_TFLOPS:
            assert 0 < row.peak_share < 1
        assert row.stage_backbone_ms > 0 and row.stage_head_ms > 0
    assert rows["eager"].gflop_per_call == rows["static_graph"].gflop_per_call
    graph = rows["static_graph"]
    assert graph.stage_boxes_ms > 0 and graph.stage_preprocess_ms > 0


def test_sweep_kernels_pairs_each_option_with_todays_best_form(tmp_path):
    """conf/sweep/kernels.yaml (the plan only): one session of seven static_graph compile=true
    points per variant, the new options alone and together, each against the form as it is."""
    from tests.test_sweeper import NO_RUN, REFUSED, launched_jobs, launched_sessions

    args = ("sweep=kernels", "precision=fp16", "variant=MaskRCNNFPN", *NO_RUN)
    done = run_runner(*args, f"hydra.sweep.dir={tmp_path}", timeout=300)
    log = done.stdout + done.stderr
    jobs = launched_jobs(log)
    assert len(jobs) == 7 and launched_sessions(log) == 1, log[-2000:]
    forms = {(j["backend"], j["backend.options.compile"]) for j in jobs}
    assert forms == {("static_graph", "true")}
    options = ("roi_align", "select", "fuse_levels", "compile_nms", "cudnn_benchmark")
    points = {tuple(j.get(f"backend.options.{o}", "") for o in options) for j in jobs}
    assert points == {
        ("", "", "", "", ""),
        ("op", "", "", "", ""),
        ("", "topk", "", "", ""),
        ("", "", "true", "", ""),
        ("", "", "", "true", ""),
        ("op", "topk", "true", "true", ""),
        ("op", "topk", "true", "true", "true"),
    }
    # the stages of the compiled form come from one point: all four options, cuDNN as it is
    (staged,) = [j for j in jobs if j.get("backend.options.compile_stages") == "true"]
    all_four = ["op", "topk", "true", "true", ""]
    assert [staged.get(f"backend.options.{o}", "") for o in options] == all_four
    assert REFUSED.format(7) in log

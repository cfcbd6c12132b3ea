"""runner/backends/static_graph/nms.py against torchvision's batched_nms.

The oracle is `torchvision.ops.batched_nms(boxes[valid].float(), scores[valid], idxs[valid], t)`
(detectron2's batched_nms), sliced to k. Beyond 1000 boxes torchvision's CPU build switches to
per-class loops (`_batched_nms_vanilla`, IoU on unshifted boxes, which can differ in the last
ulp); its CUDA build and tracing keep the coordinate trick up to 25000 boxes, so there the
oracle calls `_batched_nms_coordinate_trick` itself, the path static_graph mirrors.

CPU tests run the torch path for real, and the Triton kernels too through Triton's interpreter
(a subprocess with TRITON_INTERPRET=1) where triton imports. `gpu` tests check both paths on
CUDA under `torch.cuda.set_sync_debug_mode("error")` and inside a CUDA graph.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.ops.boxes import _batched_nms_coordinate_trick

from runner.backends.static_graph.nms import batched_nms_topk, triton_available
from tests.helpers import capture_sync_free, f64_uses, ptx_for_sm90

REPO = Path(__file__).resolve().parents[1]
TRITON_MISSING = "triton is not importable here (it ships with CUDA builds of torch)"


def expected(boxes, scores, idxs, valid, threshold, k):
    """Per leading index (flattened), torchvision's first k kept boxes as indices into N."""
    n = scores.shape[-1]
    rows = zip(
        boxes.reshape(-1, n, 4),
        scores.reshape(-1, n),
        idxs.reshape(-1, n),
        valid.reshape(-1, n),
        strict=True,
    )
    found = []
    for b, s, i, v in rows:
        where = v.nonzero()[:, 0]
        b = b[v].float()
        if b.numel() <= (100_000 if b.is_cuda else 4000):  # torchvision takes the trick itself
            keep = torchvision.ops.batched_nms(b, s[v], i[v], threshold)
        else:
            keep = _batched_nms_coordinate_trick(b, s[v], i[v], threshold)
        found.append(where[keep][:k].tolist())
    return found


def check(boxes, scores, idxs, valid, threshold, k, **options):
    """Run batched_nms_topk, check its invariants, compare every row that says exact with the
    oracle; return exact [B] (flattened) for the caller to assert on."""
    index, kept, exact = batched_nms_topk(boxes, scores, idxs, valid, threshold, k, **options)
    lead = scores.shape[:-1]
    assert index.shape == kept.shape == (*lead, k) and exact.shape == lead
    assert index.dtype == torch.int64 and kept.dtype == torch.bool and exact.dtype == torch.bool
    index, kept, exact = index.reshape(-1, k).cpu(), kept.reshape(-1, k).cpu(), exact.reshape(-1)
    want = expected(boxes, scores, idxs, valid, threshold, k)  # on their device: CUDA's kernel
    for row, (i, m, e, w) in enumerate(zip(index, kept, exact.cpu(), want, strict=True)):
        count = int(m.sum())
        assert m[:count].all() and not m[count:].any(), f"row {row}: kept slots are not a prefix"
        assert (i[count:] == 0).all(), f"row {row}: padded slots must hold index 0"
        if e:
            assert i[:count].tolist() == w, f"row {row}: exact=True but differs from torchvision"
    return exact


def random_case(seed, n=300, classes=5, lead=(), tie_levels=0, valid_p=0.85, spread=300.0):
    """Clustered boxes (so that NMS has work), integer categories, some invalid entries that
    carry garbage, optionally scores rounded to `tie_levels` values (many exact ties)."""
    g = torch.Generator().manual_seed(seed)
    shape = (*lead, n)
    centres = torch.rand(*lead, 12, 2, generator=g) * spread
    pick = torch.randint(0, 12, shape, generator=g)
    centre = torch.gather(centres, -2, pick[..., None].expand(*shape, 2))
    size = torch.rand(*shape, 2, generator=g) * 60 + 4
    xy = centre + torch.randn(*shape, 2, generator=g) * 12
    boxes = torch.cat([xy - size / 2, xy + size / 2], -1)
    scores = torch.rand(shape, generator=g)
    if tie_levels:
        scores = (scores * tie_levels).floor() / tie_levels
    idxs = torch.randint(0, classes, shape, generator=g)
    valid = torch.rand(shape, generator=g) < valid_p
    garbage = torch.rand(*shape, 4, generator=g) * 1e6  # must not move the per-class offsets
    boxes = torch.where(valid[..., None], boxes, garbage)
    scores = torch.where(valid, scores, torch.full_like(scores, 2.0))  # would sort first
    return boxes, scores, idxs, valid


# --- the torch path, on the CPU ---------------------------------------------------------------


@pytest.mark.parametrize("solver", ["scan", "fixpoint"])
@pytest.mark.parametrize("seed", range(30))
def test_random_cases_match_torchvision(seed, solver):
    g = torch.Generator().manual_seed(1000 + seed)
    n = int(torch.randint(1, 400, (), generator=g))
    classes = int(torch.randint(1, 30, (), generator=g))
    ties = [0, 3, 20][seed % 3]
    threshold = [0.3, 0.5, 0.7][seed % 3 - 1]
    boxes, scores, idxs, valid = random_case(seed, n, classes, tie_levels=ties)
    for k in (1, 7, 100, n + 5):
        assert check(boxes, scores, idxs, valid, threshold, k, solver=solver).all()


def nms_caller(compile_nms):
    """A compiled caller's forward around one NMS call (static_graph's compile_nms)."""
    from runner.backends.static_graph.nms import nms_call

    def forward(boxes, scores, idxs, valid):
        shifted = boxes * 1.0 + 0.5  # work on both sides of the NMS, for one graph
        index, kept, exact = nms_call(compile_nms)(shifted, scores, idxs, valid, 0.5, 20)
        return index * kept, exact

    return forward


def assert_compiled_nms_is_one_graph_with_the_same_answers(case):
    split = torch._dynamo.explain(nms_caller(False))(*case)
    assert split.graph_break_count >= 1
    whole = torch._dynamo.explain(nms_caller(True))(*case)
    assert (whole.graph_count, whole.graph_break_count) == (1, 0), whole.break_reasons
    expected_answer = nms_caller(True)(*case)
    compiled = torch.compile(nms_caller(True), dynamic=False)(*case)
    for got, want in zip(compiled, expected_answer, strict=True):
        assert torch.equal(got, want)


def test_compiled_callers_trace_the_nms_only_when_asked():
    """static_graph's compile_nms: nms_call(True) is traced into the compiled caller's one graph
    (the op d2bench::greedy_nms is opaque to dynamo, so nothing breaks it) and gives the
    answers of the uncompiled call; nms_call(False) is a compile boundary, run as it is."""
    assert_compiled_nms_is_one_graph_with_the_same_answers(random_case(3, n=200, lead=(2,)))


def test_all_scores_tied_keep_torchvisions_stable_order():
    boxes, scores, idxs, valid = random_case(1, 250, 4)
    scores = torch.full_like(scores, 0.5)
    assert check(boxes, scores, idxs, valid, 0.5, 300).all()
    far = torch.arange(250.0)[:, None] * 100 + torch.tensor([0.0, 0.0, 10.0, 10.0])
    index, kept, _ = batched_nms_topk(far, scores, idxs, valid, 0.5, 300)
    assert index[kept].tolist() == valid.nonzero()[:, 0].tolist()  # ties: input order


def test_identical_boxes_leave_one_per_class():
    n = 64
    boxes = torch.tensor([10.0, 10.0, 50.0, 40.0]).expand(n, 4)
    idxs = torch.arange(n) % 3
    scores = torch.rand(n, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(n, dtype=torch.bool)
    assert check(boxes, scores, idxs, valid, 0.5, 10).all()
    _, kept, _ = batched_nms_topk(boxes, scores, idxs, valid, 0.5, 10)
    assert int(kept.sum()) == 3


def test_nothing_valid_keeps_nothing_and_is_exact():
    boxes, scores, idxs, _ = random_case(2, 50)
    index, kept, exact = batched_nms_topk(boxes, scores, idxs, torch.zeros(50, dtype=bool), 0.5, 8)
    assert not kept.any() and exact.item() and (index == 0).all()


def test_one_box_and_empty_inputs():
    box = torch.tensor([[1.0, 2.0, 3.0, 5.0]])
    one = torch.ones(1, dtype=torch.bool)
    index, kept, exact = batched_nms_topk(box, torch.tensor([0.3]), torch.tensor([4]), one, 0.5, 3)
    assert index.tolist() == [0, 0, 0] and kept.tolist() == [True, False, False] and exact
    index, kept, exact = batched_nms_topk(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), one[:0], 0.5, 3
    )
    assert index.shape == (3,) and not kept.any() and exact
    index, kept, exact = batched_nms_topk(box, torch.tensor([0.3]), torch.tensor([4]), one, 0.5, 0)
    assert index.shape == kept.shape == (0,) and exact


def test_iou_equal_to_the_threshold_does_not_suppress():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.9, 1.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    idxs, valid = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.bool)
    index, kept, _ = batched_nms_topk(boxes, scores, idxs, valid, 0.5, 3)
    assert index[kept].tolist() == [0, 1]  # IoU exactly 0.5 stays, 0.95 goes
    assert check(boxes, scores, idxs, valid, 0.5, 3).all()


def test_many_classes_with_large_offsets():
    """80 classes x coordinates up to ~1300: offsets near 1e5, where fp32 rounds the shifted
    boxes; mirroring the trick exactly is what keeps the answers equal."""
    for seed in range(4):
        boxes, scores, idxs, valid = random_case(seed, 1500, 80, spread=1300.0)
        assert check(boxes, scores, idxs, valid, 0.5, 100, max_candidates=1500).all()


def test_leading_batch_dimensions():
    boxes, scores, idxs, valid = random_case(3, 200, 6, lead=(2, 3), tie_levels=10)
    valid[1, 2] = False  # one row with nothing valid
    assert check(boxes, scores, idxs, valid, 0.6, 40).all()


def test_fp16_boxes_are_computed_in_fp32():
    boxes, scores, idxs, valid = random_case(4, 300, 3)
    half = boxes.clamp(max=6e4).half()
    index, kept, exact = batched_nms_topk(half, scores.half(), idxs, valid, 0.5, 50)
    want = expected(half.float(), scores.half().float(), idxs, valid, 0.5, 50)[0]
    assert exact.item() and index[kept].tolist() == want


def test_interleaved_padding_never_suppresses_or_shifts():
    boxes, scores, idxs, valid = random_case(5, 400, 4, valid_p=1.0)
    base = check(boxes, scores, idxs, valid, 0.5, 400)
    assert base.all()
    padded = torch.zeros(800, 4)
    padded[0::2] = boxes
    padded[1::2] = boxes.flip(0) + 0.5  # overlapping impostors with top scores
    pad_scores = torch.ones(800)
    pad_scores[0::2] = scores
    pad_idxs = torch.zeros(800, dtype=torch.long)
    pad_idxs[0::2] = idxs
    pad_valid = torch.zeros(800, dtype=torch.bool)
    pad_valid[0::2] = True
    index, kept, exact = batched_nms_topk(padded, pad_scores, pad_idxs, pad_valid, 0.5, 400)
    reference, ref_kept, _ = batched_nms_topk(boxes, scores, idxs, valid, 0.5, 400)
    assert exact.item() and (index[kept] // 2).tolist() == reference[ref_kept].tolist()
    assert (index[kept] % 2 == 0).all()


@pytest.mark.parametrize("seed", range(12))
def test_candidate_budget_is_exact_exactly_when_the_prefix_argument_holds(seed):
    """Only the top-C valid boxes enter NMS. exact must be num_valid <= C or k kept among them,
    and then the answer must be torchvision's on the full set."""
    g = torch.Generator().manual_seed(seed)
    boxes, scores, idxs, valid = random_case(seed, 240, 3, lead=(4,), tie_levels=seed % 2 * 8)
    budget = int(torch.randint(20, 260, (), generator=g))
    for k in (5, 30, 120):
        exact = check(boxes, scores, idxs, valid, 0.5, k, max_candidates=budget)
        for row in range(4):
            v = valid[row]
            order = torch.sort(scores[row].masked_fill(~v, -1e9), descending=True, stable=True)
            top = order.indices[: min(budget, int(v.sum()))]
            among = torchvision.ops.batched_nms(
                boxes[row, top], scores[row, top], idxs[row, top], 0.5
            )
            should = int(v.sum()) <= budget or len(among) >= k
            assert bool(exact[row]) == should, (row, k, budget)


def test_a_budget_of_zero_candidates_is_exact_only_without_valid_boxes():
    boxes, scores, idxs, valid = random_case(6, 30, lead=(2,))
    valid[1] = False
    _, kept, exact = batched_nms_topk(boxes, scores, idxs, valid, 0.5, 5, max_candidates=0)
    assert not kept.any() and exact.tolist() == [False, True]


def chain(n):
    """Boxes sliding by 1 along x, each overlapping the next at IoU 9/11 > 0.7 and the one after
    at 8/12 < 0.7, scores falling: greedy keeps every other box, and every decision depends on
    the previous one, the slowest case for a fixed-point iteration."""
    x = torch.arange(n, dtype=torch.float32)
    boxes = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], -1)
    return boxes, 1 - x / n, torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool)


def test_too_few_rounds_say_inexact_never_wrong():
    boxes, scores, idxs, valid = chain(60)
    fixpoint = dict(solver="fixpoint")
    _, _, exact = batched_nms_topk(boxes, scores, idxs, valid, 0.7, 30, rounds=8, **fixpoint)
    assert not exact.item()
    assert check(boxes, scores, idxs, valid, 0.7, 30, rounds=70, **fixpoint).all()
    assert check(boxes, scores, idxs, valid, 0.7, 3, rounds=8, **fixpoint).all()  # decided prefix
    assert check(boxes, scores, idxs, valid, 0.7, 30, solver="scan").all()


@pytest.mark.parametrize("rounds", [1, 2, 3, 5])
def test_exact_is_sound_for_any_number_of_rounds(rounds):
    """Whatever the rounds, a row that says exact equals torchvision (check() asserts it)."""
    said = 0
    for seed in range(25):
        boxes, scores, idxs, valid = random_case(seed, 150, 2, lead=(2,), tie_levels=seed % 4)
        exact = check(boxes, scores, idxs, valid, 0.5, 20, solver="fixpoint", rounds=rounds)
        said += int(exact.sum())
    assert said > 0


def test_no_data_dependent_shapes_meta_tensors():
    """On the meta device every op must infer shapes without data: .item(), nonzero, boolean
    indexing or a host copy would raise here. That is the CPU proof of 'sync-free'."""
    meta = dict(device="meta")
    boxes = torch.empty(2, 500, 4, dtype=torch.float16, **meta)
    scores, valid = torch.empty(2, 500, **meta), torch.empty(2, 500, dtype=torch.bool, **meta)
    idxs = torch.empty(2, 500, dtype=torch.long, **meta)
    for budget in (None, 100):
        index, kept, exact = batched_nms_topk(boxes, scores, idxs, valid, 0.5, 50, budget)
        assert index.shape == kept.shape == (2, 50) and exact.shape == (2,)


def test_bad_arguments_fail_with_the_field_named():
    boxes, scores, idxs, valid = random_case(0, 10)
    with pytest.raises(ValueError, match="method"):
        batched_nms_topk(boxes, scores, idxs, valid, 0.5, 3, method="fast")
    with pytest.raises(ValueError, match="shapes"):
        batched_nms_topk(boxes[:, :3], scores, idxs, valid, 0.5, 3)


# --- the Triton kernels on the CPU, through Triton's interpreter --------------------------------


def triton_failures(seeds: int) -> list[str]:
    """Run in a TRITON_INTERPRET=1 process: the Triton path over random cases (ties, classes,
    padding, budgets, k below and above the kept count); returns what disagreed."""
    failures = []
    for seed in range(seeds):
        n = [1, 31, 32, 33, 97, 200][seed % 6]
        boxes, scores, idxs, valid = random_case(
            seed, n, 1 + seed % 7, lead=(2,), tie_levels=seed % 3
        )
        for k, budget in ((3, None), (40, n // 2 + 1), (n + 3, None)):
            triton = batched_nms_topk(boxes, scores, idxs, valid, 0.5, k, budget, method="triton")
            plain = batched_nms_topk(boxes, scores, idxs, valid, 0.5, k, budget, method="torch")
            try:
                check(boxes, scores, idxs, valid, 0.5, k, max_candidates=budget, method="triton")
            except AssertionError as error:
                failures.append(f"seed {seed} k {k}: {error}")
            for a, b in zip(triton, plain, strict=True):
                if not torch.equal(a, b):
                    failures.append(f"seed {seed} k {k} budget {budget}: paths differ")
    boxes, scores, idxs, valid = chain(100)
    if batched_nms_topk(boxes, scores, idxs, valid, 0.7, 60, method="triton")[2].item() is not True:
        failures.append("chain: not exact")
    return failures


@pytest.mark.skipif(not triton_available(), reason=TRITON_MISSING)
def test_triton_kernels_in_the_interpreter_match_torchvision_and_the_torch_path():
    code = "from tests.test_static_nms import triton_failures; print(triton_failures(12))"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --- CUDA: both paths, sync-free and inside a CUDA graph ----------------------------------------


@pytest.mark.skipif(not triton_available(), reason=TRITON_MISSING)
@pytest.mark.parametrize("floats", ["fp32", "fp64"])
def test_iou_kernel_compares_in_fp32_however_the_launcher_types_the_threshold(floats):
    """Eager Triton passes the Python-float threshold as fp32, Inductor (torch.compile,
    AOTInductor) as fp64; the torch path compares in fp32 (a tensor against a Python float).
    Compiled for an H100, the kernel only rounds an fp64 threshold to fp32 and compares fp32:
    an IoU of exactly fp32(0.6) is not above 0.6 either way, as on the torch path."""
    from runner.ops.nms_triton import _iou_mask_kernel

    signature = dict(boxes_ptr="*fp32", mask_ptr="*i32", C="i32", W="i32", threshold=floats)
    ptx = ptx_for_sm90(_iou_mask_kernel, signature, dict(ROWS=64, BITS=32, ROUNDED=True))["ptx"]
    uses = f64_uses(ptx)
    assert [use for use in uses if not use.startswith("cvt.rn.f32.f64")] == []
    assert bool(uses) == (floats == "fp64")
    assert re.search(r"setp\.\w+\.f32", ptx) and not re.search(r"setp\.\w+\.f64", ptx)
    at_threshold = torch.tensor([0.6], dtype=torch.float32)
    assert not (at_threshold > 0.6).item()  # the torch path's comparison, which the kernel keeps


def load_bench():
    spec = importlib.util.spec_from_file_location("nms_bench", REPO / "scripts" / "nms_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_script_runs_its_cpu_check(tmp_path):
    """scripts/nms_bench.py on the CPU at a tenth of the sizes: equality with torchvision for every
    workload, no timing asserted (the H200 numbers come from the lead's run)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OUT": str(tmp_path)}
    script = str(REPO / "scripts" / "nms_bench.py")
    done = subprocess.run(
        [sys.executable, script, "--device", "cpu", "--scale", "0.1", "--repeats", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| workload" in done.stdout and "MISMATCH" not in done.stdout
    assert (tmp_path / "nms_bench.txt").read_text() == done.stdout


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["torch", "triton"])
def test_gpu_sync_free_in_a_cuda_graph_and_equal_to_torchvision_on_the_gpu(method):
    if method == "triton" and not triton_available():
        pytest.skip(TRITON_MISSING)
    bench = load_bench()
    for load in bench.workloads(torch.device("cuda"), seed=0):
        static = [t.clone() for t in load.inputs]

        def call(static=static, load=load):
            return batched_nms_topk(*static, load.threshold, load.k, load.budget, method=method)

        graph, outputs = capture_sync_free(call)
        for seed in (1, 2, 3):
            fresh = bench.workloads(torch.device("cuda"), seed=seed, only=load.name)[0]
            for target, source in zip(static, fresh.inputs, strict=True):
                target.copy_(source)
            graph.replay()
            index, kept, exact = (t.cpu() for t in outputs)
            want = expected(*fresh.inputs, load.threshold, load.k)
            for row, w in enumerate(want):
                assert exact.reshape(-1)[row], (load.name, seed, row)
                got = index.reshape(-1, load.k)[row][kept.reshape(-1, load.k)[row]].tolist()
                assert got == w, (load.name, seed, row, method)


@pytest.mark.gpu
def test_gpu_compiled_callers_compile_the_triton_nms_with_the_same_answers():
    """compile_nms on CUDA: Inductor compiles d2bench::greedy_nms's Triton kernels (a
    triton_op) into the caller's one graph, with the uncompiled call's answers."""
    if not triton_available():
        pytest.skip(TRITON_MISSING)
    case = tuple(t.cuda() for t in random_case(3, n=2100, lead=(2,)))
    assert_compiled_nms_is_one_graph_with_the_same_answers(case)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["torch", "triton"])
def test_gpu_random_cases_match_torchvision_on_the_gpu(method):
    """The CPU property cases on CUDA (ties, padding, classes, budgets, k below and above the
    kept count), against torchvision's CUDA kernel."""
    if method == "triton" and not triton_available():
        pytest.skip(TRITON_MISSING)
    for seed in range(24):
        n = [1, 31, 32, 33, 300, 2100][seed % 6]
        case = random_case(seed, n, 1 + seed % 9, lead=(2,), tie_levels=seed % 3 * 5)
        boxes, scores, idxs, valid = (t.cuda() for t in case)
        for k, budget in ((5, None), (100, n // 2 + 1), (n + 3, None)):
            exact = check(boxes, scores, idxs, valid, 0.5, k, max_candidates=budget, method=method)
            if budget is None:
                assert exact.all(), (seed, k)

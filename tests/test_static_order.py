"""runner/backends/static_graph/order.py: orders without a full sort, against the sort they stand
for, and static_graph's option `select` (sort | topk) that chooses between them.

CPU, for real: `stable_topk` against `torch.sort(descending=True, stable=True)`'s prefix on
rows full of ties (a few levels, fp16 and bf16, -inf, +inf, -0.0), 80000-wide rows with 2048
taken; `valid_first` (compact without a sort) against the stable sort of the flags; batched NMS
and slot selection with select=topk against select=sort and torchvision; a small selection
module exported by torch.export with its topk. detectron2-marked: static_graph with select=topk
gives eager's detections and select=sort's outputs bit for bit, with the sort and topk calls
counted, and the rewrite exports.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from runner import backends
from runner.backends.static_graph.nms import batched_nms_topk
from runner.backends.static_graph.order import (
    TOPK_SHARE,
    descending_prefix,
    packed_topk,
    stable_topk,
    valid_first,
)
from runner.backends.static_graph.slots import Slots, compact, select
from tests.test_static_nms import check, random_case

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def sort_prefix(values: torch.Tensor, c: int) -> torch.Tensor:
    return torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :c]


def tied_rows(seed: int, rows: int, n: int, levels: int, dtype: torch.dtype) -> torch.Tensor:
    """[rows, n] values on `levels` levels (many exact ties) around zero, with +inf, -inf, +0.0
    and -0.0 sprinkled in, in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-levels, levels + 1, (rows, n), generator=g).float() / 4
    pick = torch.rand(rows, n, generator=g)
    values[pick < 0.05] = float("inf")
    values[(pick >= 0.05) & (pick < 0.15)] = -float("inf")
    values[(pick >= 0.15) & (pick < 0.25)] = -0.0
    values[(pick >= 0.25) & (pick < 0.3)] = 0.0
    return values.to(dtype)


def widths(n: int) -> list[int]:
    return sorted({0, 1, min(3, n), min(17, n), n // 2, n // 2 + 1, n - 1, n})


# --- stable_topk against the stable sort ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(6))
def test_stable_topk_is_the_stable_sorts_prefix_on_tied_rows(dtype, seed):
    """Rows of 1 to 600 entries on 1 to 9 levels (so nearly every value is tied), several rows
    at once, every c from 1 to N: the packed topk and stable_topk (which sorts where c is more
    than half the row) both give the sort's first c indices, ties at the lower index first."""
    g = torch.Generator().manual_seed(seed)
    for case in range(12):
        n = int(torch.randint(1, 600, (), generator=g))
        levels = int(torch.randint(0, 5, (), generator=g))
        values = tied_rows(100 * seed + case, 3, n, levels, dtype)
        for c in widths(n):
            want = sort_prefix(values, c)
            assert torch.equal(packed_topk(values, c), want), (n, levels, c)
            assert torch.equal(stable_topk(values, c), want), (n, levels, c)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_stable_topk_on_box_head_rows_80000_wide_taking_2048(dtype):
    """The box head's shape: 1000 proposals x 80 classes, max_candidates=2048, two images;
    probabilities on 256 levels, most masked to -inf as the candidates below the threshold are."""
    g = torch.Generator().manual_seed(7)
    values = (torch.rand(2, 80000, generator=g) * 256).floor() / 256
    values[torch.rand(2, 80000, generator=g) < 0.7] = -float("inf")
    values = values.to(dtype)
    assert 2048 <= TOPK_SHARE * 80000  # the packed path, not its sort fallback
    assert torch.equal(stable_topk(values, 2048), sort_prefix(values, 2048))
    everything_tied = torch.zeros(2, 80000, dtype=dtype)
    assert torch.equal(stable_topk(everything_tied, 2048), torch.arange(2048).expand(2, -1))


def test_negative_zero_ties_zero_as_the_sort_ties_them():
    """The sort sees -0.0 == 0.0 and keeps them in index order; so do the keys (both map to 0),
    where flipping a negative's magnitude bits would put -0.0 below 0.0."""
    values = torch.tensor([[-0.0, 0.0, -0.0, 0.0, 1.0, -1.0, -0.0]])
    want = sort_prefix(values, 7)
    assert want.tolist() == [[4, 0, 1, 2, 3, 6, 5]]
    assert torch.equal(packed_topk(values, 7), want)


def test_nan_is_placed_by_its_sign_bit_as_documented():
    """Not promised (callers mask non-finite scores), but as the docstring says: a NaN with its
    sign bit clear first, as in the sort; one with it set after -inf (the sort: first)."""
    nan = torch.tensor(float("nan"))
    negative_nan = (nan.view(torch.int32) | torch.tensor(-(2**31), dtype=torch.int32)).view(
        torch.float32
    )
    values = torch.stack([torch.tensor(1.0), nan, -torch.tensor(float("inf")), negative_nan])[None]
    assert sort_prefix(values, 4).tolist() == [[1, 3, 0, 2]]
    assert packed_topk(values, 4).tolist() == [[1, 0, 2, 3]]


def test_other_dtypes_and_wide_prefixes_take_the_sort():
    values = torch.randn(2, 50, dtype=torch.float64)
    assert torch.equal(stable_topk(values, 5), sort_prefix(values, 5))
    ints = torch.randint(0, 4, (2, 50))
    assert torch.equal(stable_topk(ints, 5), sort_prefix(ints, 5))


def test_bad_arguments_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"c=6 must be between 0 and N=5"):
        stable_topk(torch.zeros(1, 5), 6)
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        stable_topk(torch.zeros(5), 2)
    with pytest.raises(ValueError, match=r"select='heap': allowed values are \('sort', 'topk'\)"):
        descending_prefix(torch.zeros(1, 5), 2, "heap")


@pytest.mark.parametrize("select_by", ["sort", "topk"])
def test_descending_prefix_takes_all_of_a_row_shorter_than_asked(select_by):
    """As slicing a sort does: the RPN's post_nms_topk may exceed the levels' candidates."""
    values = tied_rows(3, 2, 40, 2, torch.float32)
    assert torch.equal(descending_prefix(values, 50, select_by), sort_prefix(values, 40))
    assert torch.equal(descending_prefix(values, 10, select_by), sort_prefix(values, 10))


# --- compact without a sort -------------------------------------------------------------------


def sorted_compact(slots: Slots) -> Slots:
    """compact as it was: a stable sort of the invalid flags gives the order."""
    order = torch.sort((~slots.valid).to(torch.uint8), dim=1, stable=True).indices

    def take(values):
        if values is None:
            return None
        index = order.view(*order.shape, *([1] * (values.dim() - 2))).expand(
            *order.shape, *values.shape[2:]
        )
        return values.gather(1, index)

    fields = ("boxes", "scores", "classes", "valid", "masks", "keypoint_heatmaps", "keypoints")
    return Slots(
        **{name: take(getattr(slots, name)) for name in fields},
        exact=slots.exact,
        sem_seg=slots.sem_seg,
    )


def patterns(d: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(d)
    alternating = torch.arange(d) % 2 == 0
    return {
        "random": torch.rand(3, d, generator=g) < 0.4,
        "all": torch.ones(3, d, dtype=torch.bool),
        "none": torch.zeros(3, d, dtype=torch.bool),
        "alternating": torch.stack([alternating, ~alternating, alternating]),
        "mixed rows": torch.stack(
            [torch.ones(d, dtype=torch.bool), torch.zeros(d, dtype=torch.bool), alternating]
        ),
    }


@pytest.mark.parametrize("d", [0, 1, 2, 7, 100])
def test_valid_first_is_the_stable_sorts_permutation(d):
    for name, valid in patterns(d).items():
        want = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices
        assert torch.equal(valid_first(valid), want), name


def test_compact_moves_every_field_as_the_sorted_compact_did():
    """Boxes, scores, classes, masks, keypoint heatmaps and keypoints move together; sem_seg and
    exact stay."""
    g = torch.Generator().manual_seed(0)
    n, d, k, s = 3, 100, 17, 6
    for name, valid in patterns(d).items():
        slots = Slots(
            boxes=torch.rand(n, d, 4, generator=g),
            scores=torch.rand(n, d, generator=g),
            classes=torch.randint(0, 80, (n, d), generator=g),
            valid=valid,
            exact=torch.tensor([True, False, True]),
            masks=torch.rand(n, d, 1, s, s, generator=g),
            keypoint_heatmaps=torch.rand(n, d, k, s, s, generator=g),
            keypoints=torch.rand(n, d, k, 3, generator=g),
            sem_seg=torch.rand(n, 4, 8, 8, generator=g),
        )
        got, want = compact(slots), sorted_compact(slots)
        for field in ("boxes", "scores", "classes", "valid", "masks", "keypoint_heatmaps"):
            assert torch.equal(getattr(got, field), getattr(want, field)), (name, field)
        assert torch.equal(got.keypoints, want.keypoints), name
        assert got.sem_seg is slots.sem_seg and got.exact is slots.exact
        count = int(valid[0].sum())
        assert got.valid[0, :count].all() and not got.valid[0, count:].any()


# --- NMS and slot selection: select=topk against select=sort ----------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_batched_nms_with_topk_candidates_is_the_sorts_to_the_bit(seed):
    """Random clustered boxes with scores on a few levels (ties everywhere), fp32 and fp16,
    budgets that take the packed path (c at most half the row): index, kept and exact equal
    select=sort's, and every exact row equals torchvision's."""
    g = torch.Generator().manual_seed(500 + seed)
    n = int(torch.randint(200, 600, (), generator=g))
    ties = [2, 5, 20][seed % 3]
    boxes, scores, idxs, valid = random_case(seed, n, 1 + seed % 7, lead=(2,), tie_levels=ties)
    scores = scores.half() if seed % 2 else scores
    for budget in (1, 40, n // 4, n // 2):  # c = N takes the sort either way
        for k in (1, 100):
            by_sort = batched_nms_topk(boxes, scores, idxs, valid, 0.5, k, budget, select="sort")
            by_topk = batched_nms_topk(boxes, scores, idxs, valid, 0.5, k, budget, select="topk")
            for a, b in zip(by_sort, by_topk, strict=True):
                assert torch.equal(a, b), (n, budget, k)
    widened = scores.float()  # fp16 widened exactly: torchvision's NMS wants one dtype
    check(boxes, widened, idxs, valid, 0.5, 30, max_candidates=n // 4, select="topk")


@pytest.mark.parametrize("seed", range(6))
def test_rows_of_a_sorted_topk_taken_where_they_stand_are_the_sorts(seed):
    """The RPN's per-level rows come from a sorted torch.topk (tied scores in topk's order),
    some entries masked invalid afterwards: select="presorted" takes the valid ones first where they
    stand, and index, kept and exact equal the stable sort's."""
    g = torch.Generator().manual_seed(900 + seed)
    n, levels = 300, 3
    boxes, _, _, _ = random_case(seed, n, 1, lead=(levels,))
    raw = torch.randint(0, [2, 5, 30][seed % 3], (levels, 4 * n), generator=g).float()
    raw = raw.half() if seed % 2 else raw
    scores = raw.topk(n, dim=1).values  # sorted=True: descending, ties in topk's order
    valid = torch.rand(levels, n, generator=g) > [0.0, 0.3, 0.9][seed % 3]
    same = torch.zeros(levels, n, dtype=torch.int64)
    for budget in (n, n // 2):
        by_sort, in_place = (
            batched_nms_topk(boxes, scores, same, valid, 0.7, 100, budget, select=way)
            for way in ("sort", "presorted")
        )
        for a, b in zip(by_sort, in_place, strict=True):
            assert torch.equal(a, b), budget


def test_slot_selection_with_topk_is_the_sorts():
    boxes, scores, idxs, valid = random_case(11, 1200, 9, lead=(2,), tie_levels=4)
    by = {
        way: select(boxes, scores, idxs, valid, 0.5, 100, 300, select=way)
        for way in ("sort", "topk")
    }
    for field in ("boxes", "scores", "classes", "valid", "exact"):
        assert torch.equal(getattr(by["sort"], field), getattr(by["topk"], field)), field
    assert by["topk"].valid.sum() > 50  # NMS kept enough for the comparison to mean something


def test_a_bad_select_is_refused_by_the_nms_and_the_options():
    boxes, scores, idxs, valid = random_case(1, 20)
    with pytest.raises(ValueError, match=r"select='heap'"):
        batched_nms_topk(boxes, scores, idxs, valid, 0.5, 5, 10, select="heap")
    for backend in ("static_graph", "aot_package"):
        assert backends.validate_options(backend, {"select": "topk"}) == {"select": "topk"}
        with pytest.raises(ValueError, match=r"options.select='heap'"):
            backends.validate_options(backend, {"select": "heap"})


def test_conf_defaults_select_to_sort_in_both_backends():
    import re

    from tests.helpers import CONF

    for backend in ("static_graph", "aot_package"):
        text = (CONF / "backend" / f"{backend}.yaml").read_text()
        assert re.search(r"^  select: sort\b", text, re.MULTILINE), backend


class _Selection(torch.nn.Module):
    """slots.select then compact: the tail every head of the rewrite ends in."""

    def __init__(self, select_by: str):
        super().__init__()
        self.select_by = select_by

    def forward(self, boxes, scores, classes, valid):
        slots = compact(select(boxes, scores, classes, valid, 0.5, 50, 200, select=self.select_by))
        return slots.boxes, slots.scores, slots.classes, slots.valid, slots.exact


@pytest.mark.parametrize("select_by", ["sort", "topk"])
def test_selection_exports_with_its_topk_and_answers_the_same(select_by):
    """torch.export (the package path, build.export) keeps the packed topk: the candidates by
    one topk and no sort with select=topk, and compact with no sort either way."""
    from runner.backends.aot_package import build

    inputs = random_case(2, 1000, 6, lead=(1,), tie_levels=8)
    module = _Selection(select_by).eval()
    program = build.export(module, inputs)
    targets = Counter(
        str(node.target) for node in program.graph.nodes if node.op == "call_function"
    )
    sorts = sum(v for name, v in targets.items() if name.startswith("aten.sort"))
    topks = sum(v for name, v in targets.items() if name.startswith("aten.topk"))
    assert (sorts, topks) == ((1, 0) if select_by == "sort" else (0, 1)), targets
    with torch.no_grad():
        want = module(*inputs)
    got = program.module()(*inputs)
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)


# --- detectron2: static_graph with select=topk ------------------------------------------------


class Orders(TorchDispatchMode):
    """Counts the sort and topk calls dispatched while it is on, by op and input shape."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith(("aten.sort", "aten.topk")):
            self.calls[(name.split(".")[1], tuple(args[0].shape))] += 1
        return func(*args, **(kwargs or {}))

    def count(self, op: str) -> int:
        return sum(v for (name, _), v in self.calls.items() if name == op)


def _rewritten(cfg, exported, **options):
    from runner.backends.static_graph import rewrite

    merged = backends.validate_options("static_graph", {**cfg.backend.options, **options})
    outputs, _ = rewrite(exported, cfg.precision, merged)
    return outputs


def both_ways(cfg, exported, images) -> tuple[dict, dict]:
    """The rewrite's outputs with select=sort and select=topk, and the sort and topk calls each
    made (Orders), by way."""
    answers, orders = {}, {}
    for way in ("sort", "topk"):
        outputs = _rewritten(cfg, exported, select=way)
        orders[way] = Orders()
        with torch.no_grad(), orders[way]:
            answers[way] = outputs(*images)
    return answers, orders


@pytest.mark.detectron2
@pytest.mark.parametrize(
    "name",
    [
        "MaskRCNNFPN",
        pytest.param("MaskRCNNFPN_b2", marks=pytest.mark.slow),
        pytest.param("CascadeRCNN", marks=pytest.mark.slow),
    ],
)
def test_static_graph_with_topk_answers_as_with_sort_and_as_eager(make_config, name):
    """The whole rewrite (RPN merge, box-head candidates, compact) on a small seed variant:
    static_graph with select=topk detects what eager detects and answers itself; the rewrite's
    outputs with select=topk equal select=sort's bit for bit. Counted: select=topk sorts
    nothing (the per-level NMS takes its rows where they stand) and adds two topk calls (the RPN
    merge, the box-head candidates) where select=sort sorts."""
    from runner.run import measurement, parity
    from tests.test_detectron2 import (
        FEWER_PROPOSALS,
        SMALL,
        assert_same_detections,
        variant_overrides,
    )

    cfg = make_config(*variant_overrides(name), *SMALL, "backend=static_graph")
    cfg.model.arch_options = {**cfg.model.arch_options, **FEWER_PROPOSALS}
    exported, images, _ = measurement.build(cfg, torch.device("cpu"))
    opt = images.images["opt"]
    chosen = backends.validate_options("static_graph", {**cfg.backend.options, "select": "topk"})
    with torch.no_grad():
        reference = exported.decode(exported.module(*opt), cfg.batch)
        fn = backends.get("static_graph")(exported, images, cfg.precision, chosen)
        output = exported.decode(fn(*opt), cfg.batch)
    assert all(len(d) > 0 for d in reference), "no detections: parity would prove nothing"
    assert "fallback_calls=0/1" in fn.notes(), fn.notes()  # the rewrite answered itself
    assert_same_detections(reference, parity.compare(reference, output, cfg.bench.match_iou))
    for ref, out in zip(reference, output, strict=True):
        assert torch.equal(ref.classes, out.classes)

    answers, orders = both_ways(cfg, exported, opt)
    for a, b in zip(answers["sort"], answers["topk"], strict=True):
        assert torch.equal(a, b)
    rpn = exported.model.proposal_generator
    batch, levels, pre_k = cfg.batch, len(rpn.in_features), rpn.pre_nms_topk[False]
    per_level_nms = ("sort", (batch * levels, pre_k))
    assert orders["topk"].count("sort") == 0, orders["topk"].calls  # every sort replaced
    assert orders["sort"].calls[per_level_nms] == 1
    assert orders["sort"].count("sort") == 1 + 2  # and the RPN merge, the box-head candidates
    assert orders["topk"].count("topk") == orders["sort"].count("topk") + 2
    assert orders["topk"].calls[("topk", (batch, levels * pre_k))] == 1  # the RPN merge
    assert orders["topk"].calls[("topk", (batch, 200 * 80))] == 1  # the box-head candidates


@pytest.mark.detectron2
def test_retinanets_candidates_take_the_topk_and_answer_as_the_sort(make_config):
    """RetinaNet's final candidates (dense.py) follow `select`: with topk the rewrite's outputs
    equal the sort's bit for bit, and its candidates come from a topk instead of a sort."""
    from runner.run import measurement
    from tests.test_detectron2 import SMALL, variant_overrides

    cfg = make_config(*variant_overrides("RetinaNet"), *SMALL, "backend=static_graph")
    exported, images, _ = measurement.build(cfg, torch.device("cpu"))
    opt = images.images["opt"]
    answers, orders = both_ways(cfg, exported, opt)
    assert int(answers["sort"][3].sum()) > 0, "no detections: the comparison would prove nothing"
    for a, b in zip(answers["sort"], answers["topk"], strict=True):
        assert torch.equal(a, b)
    assert orders["topk"].count("sort") == orders["sort"].count("sort") - 1, orders["topk"].calls
    assert orders["topk"].count("topk") == orders["sort"].count("topk") + 1


@pytest.mark.detectron2
@pytest.mark.slow
def test_the_rewrite_exports_with_topk_and_its_package_key_differs(make_config):
    """torch.export of static_graph's rewrite of Mask R-CNN FPN with select=topk (what
    aot_package compiles): the graph holds the packed topk calls, and the package key of
    select=topk differs from select=sort's, as the graphs differ."""
    from runner.backends.aot_package import build
    from runner.run import measurement
    from tests.test_detectron2 import FEWER_PROPOSALS, SMALL

    cfg = make_config("model=mask_rcnn_fpn", *SMALL, "backend=static_graph")
    cfg.model.arch_options = {**cfg.model.arch_options, **FEWER_PROPOSALS}
    exported, images, _ = measurement.build(cfg, torch.device("cpu"))
    opt = images.images["opt"]
    keys, topks = {}, {}
    for way in ("sort", "topk"):
        outputs = _rewritten(cfg, exported, select=way)
        with torch.no_grad():
            expected = outputs(*opt)  # makes the anchors outside the trace, as aot_package does
        program = build.export(outputs, opt)
        topks[way] = sum(
            str(node.target).startswith("aten.topk")
            for module in program.graph_module.modules()
            if isinstance(module, torch.fx.GraphModule)
            for node in module.graph.nodes
            if node.op == "call_function"
        )
        keys[way] = build.package_key(program, torch.device("cpu"), {})
        with torch.no_grad():
            got = program.module()(*opt)
        for a, b in zip(expected, got, strict=True):
            assert torch.equal(a, b)
    assert topks["topk"] == topks["sort"] + 2, topks
    assert keys["sort"] != keys["topk"]

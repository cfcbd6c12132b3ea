"""runner/backends/static_graph/order.py: orders without a full sort, against the sort they stand
for.

CPU, for real: `stable_topk` against `torch.sort(descending=True, stable=True)`'s prefix on
rows full of ties (a few levels, fp16 and bf16, -inf, +inf, -0.0), 80000-wide rows with 2048
taken; `valid_first` (compact without a sort) against the stable sort of the flags.
"""

from __future__ import annotations

import pytest
import torch

from runner.backends.static_graph.order import (
    TOPK_SHARE,
    descending_prefix,
    packed_topk,
    stable_topk,
    valid_first,
)
from runner.backends.static_graph.slots import Slots, compact

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

"""Orderings without a full sort: takes score rows or validity flags, returns the indices that a
stable sort of them would give, for the parts of the rewrite that only need a prefix or a
partition of that order.

    stable_topk(values [B, N] float, c) -> indices [B, c] int64
        = torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :c]
    packed_topk(values [B, N], c) -> the same, by the packed keys for any c (its topk path)
    descending_prefix(values [B, N], c, select) -> the same indices, by "sort" or "topk"
    valid_first(valid [B, D] bool) -> order [B, D] int64
        = torch.sort((~valid).to(torch.uint8), dim=-1, stable=True).indices

`stable_topk` packs each value and its index into one int64 key whose order is the stable
descending order, then takes one `torch.topk(c, sorted=True)` of the keys: the float's fp32 bit
pattern b as an order-preserving signed int32 (b itself where the sign bit is clear; minus its
magnitude bits where it is set, so that -0.0 and +0.0 both map to 0 and tie, as the sort ties
them) in the high 32 bits, (2^32 - 1 - index) in the low 32 bits. Keys are unique, so topk's
own tie order never matters, and a larger key is a larger value or an equal value at a lower
index: the sort's stable order, ties included (fp16 and bf16 are widened to fp32 first,
exactly; -inf and +inf are ordinary values). NaN is not promised the sort's place: a NaN whose
sign bit is clear comes before +inf, as in the sort, one whose sign bit is set after -inf (the
sort puts every NaN first), and NaNs order among themselves by payload bits, not index. NaN
scores never reach these calls: their callers mask non-finite entries to -inf first.

Where c is more than half of N the plain stable sort is kept (`TOPK_SHARE`): torch.topk's
sorted answer is a selection pass over all N keys plus a sort of the c chosen, on twice the
bytes of fp32 values and after a few elementwise passes that build the keys, so once c is most
of the row it costs about a full sort and more. Same indices either way.

`valid_first` is a stable partition from two running counts: valid slot i goes to position
(valid slots up to and including i) - 1, invalid slot i after every valid one, at num_valid +
(invalid slots up to and including i) - 1; one scatter inverts that into the gather order.
The same permutation as the stable sort of the flags, without a sort.
"""

from __future__ import annotations

import torch

SELECTS = ("sort", "topk")  # static_graph's option `select`: how a prefix of an order is taken
TOPK_SHARE = 0.5  # stable_topk sorts instead where c > TOPK_SHARE * N
_PACKED = (torch.float32, torch.float16, torch.bfloat16)
_MAGNITUDE = 0x7FFFFFFF
_LOW = (1 << 32) - 1


def stable_topk(values: torch.Tensor, c: int) -> torch.Tensor:
    """values [B, N] (fp32, fp16 or bf16; -inf and +inf allowed; NaN not promised, see the
    module's docstring) -> [B, c] int64, exactly
    `torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :c]`: descending,
    ties at the lower index first. One topk of packed keys where c <= TOPK_SHARE * N, else
    that sort itself (other dtypes too: their values do not fit 32 bits of a key)."""
    if values.dim() != 2:
        raise ValueError(f"stable_topk: values must be [B, N]; got {tuple(values.shape)}")
    n = values.shape[1]
    if not 0 <= c <= n:
        raise ValueError(f"stable_topk: c={c} must be between 0 and N={n}")
    if c > TOPK_SHARE * n or values.dtype not in _PACKED:
        return torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :c]
    return packed_topk(values, c)


def packed_topk(values: torch.Tensor, c: int) -> torch.Tensor:
    """stable_topk's packed path for any c (values [B, N] fp32, fp16 or bf16): the keys, then
    one `topk(c, sorted=True)` of them."""
    n = values.shape[1]
    bits = values.float().view(torch.int32).to(torch.int64)  # sign-extended bit pattern
    magnitude = bits & _MAGNITUDE
    ordered = torch.where(bits < 0, -magnitude, magnitude)  # -0.0 and +0.0 both 0
    later_lower = _LOW - torch.arange(n, device=values.device, dtype=torch.int64)
    keys = (ordered << 32) | later_lower
    return keys.topk(c, dim=-1, sorted=True).indices


def descending_prefix(values: torch.Tensor, c: int, select: str = "sort") -> torch.Tensor:
    """values [B, N] -> the first c indices of their stable descending sort, [B, c] int64:
    by that sort (select="sort") or by `stable_topk` ("topk"); the same indices. A c beyond N
    gives all N, as slicing the sort does."""
    c = min(c, values.shape[-1])
    if select == "sort":
        return torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :c]
    if select == "topk":
        return stable_topk(values, c)
    raise ValueError(f"select={select!r}: allowed values are {SELECTS}")


def valid_first(valid: torch.Tensor) -> torch.Tensor:
    """valid [B, D] bool -> order [B, D] int64: the valid slots first, then the others, each
    in their own order; what `torch.sort((~valid).to(torch.uint8), stable=True).indices`
    gives, from running counts and one scatter."""
    d = valid.shape[1]
    position = torch.arange(d, device=valid.device).expand_as(valid)
    valid_up_to = valid.cumsum(dim=1)  # int64
    num_valid = valid.sum(dim=1, keepdim=True)
    invalid_up_to = position + 1 - valid_up_to
    target = torch.where(valid, valid_up_to - 1, num_valid + invalid_up_to - 1)
    return torch.zeros_like(target).scatter(1, target, position)

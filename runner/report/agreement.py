"""Agreement of sweeps: takes the rows of two or more sweeps of the same configurations (each a
results file or run folder, one row per repeat), returns Markdown: per configuration, each
sweep's reported median and how far apart they are, and the same for the fast-host median
where rows carry the host probe (runner.report.host).

    python -m runner.report --agreement results/h200_protocol_g.csv results/h200_protocol_h.csv \\
        [more sweeps...] [--out-md results/h200_protocol_agreement.md]

The target: one configuration measured in two sweeps on one host agrees within 3%, stated
for eager rows and graph-replayed rows apart: the summary under the table gives the worst
agreement of each kind. Agreement is max / min - 1 over the sweeps, in percent.
"""

from __future__ import annotations

from collections.abc import Sequence

from runner.report.host import fast_host_medians
from runner.report.identity import backend_label, identity_of, is_baseline, pair_key
from runner.report.markdown import DASH, markdown_header, markdown_row
from runner.report.repeats import merged_rows
from runner.run.record import Row, is_measured


def spread_percent(values: Sequence[float]) -> float:
    """max / min - 1 in percent: how far apart the sweeps' figures are."""
    if not values or min(values) <= 0:
        raise ValueError(f"need positive figures, got {list(values)}")
    return (max(values) / min(values) - 1.0) * 100.0


def agreement(sweeps: Sequence[Sequence[Row]], names: Sequence[str]) -> str:
    """Markdown: one line per configuration measured in every sweep, then the worst agreement
    of eager rows and of the others. `sweeps`: each sweep's rows, one per repeat."""
    if len(sweeps) < 2 or len(sweeps) != len(names):
        raise ValueError(f"need two or more sweeps with a name each, got {len(sweeps)}")
    measured = [[r for r in rows if is_measured(r)] for rows in sweeps]
    fast_by_identity = [fast_host_medians(rows) for rows in measured]
    merged = [{pair_key(r): r for r in merged_rows(rows)} for rows in measured]
    keys = [key for key in merged[0] if all(key in side for side in merged[1:])]
    letters = [chr(ord("A") + i) for i in range(len(sweeps))]
    columns = ["Variant", "Precision", "Backend", *[f"{x} median (ms)" for x in letters]]
    columns += ["Agreement", *[f"{x} fast-host (ms)" for x in letters], "Fast-host agreement"]
    lines = [
        "## Agreement of sweeps",
        "",
        *[f"- **{x}:** `{name}`" for x, name in zip(letters, names, strict=True)],
        "",
        *markdown_header(columns, {"Variant", "Precision", "Backend"}),
    ]
    worst: dict[str, list[float]] = {"eager": [], "other": [], "eager fast": [], "other fast": []}
    for key in keys:
        row = merged[0][key]
        medians = [side[key].latency_ms_median for side in merged]
        fast = [
            found.get(identity_of(side[key]))
            for found, side in zip(fast_by_identity, merged, strict=True)
        ]
        kind = "eager" if is_baseline(row) else "other"
        worst[kind].append(spread_percent(medians))
        fast_text = [DASH if f is None else f"{f:.2f}" for f in fast]
        fast_spread = DASH
        if all(f is not None for f in fast):
            worst[f"{kind} fast"].append(spread_percent(fast))
            fast_spread = f"{worst[f'{kind} fast'][-1]:.1f}%"
        lines.append(
            markdown_row(
                [
                    row.variant or row.model,
                    row.precision,
                    backend_label(row),
                    *[f"{m:.2f}" for m in medians],
                    f"{spread_percent(medians):.1f}%",
                    *fast_text,
                    fast_spread,
                ]
            )
        )
    lines += ["", *_summary(worst, len(keys)), "", LEGEND]
    return "\n".join(lines) + "\n"


def _summary(worst: dict[str, list[float]], count: int) -> list[str]:
    def text(values: list[float]) -> str:
        return DASH if not values else f"{max(values):.1f}%"

    return [
        f"Configurations in every sweep: {count}. Worst agreement of eager rows: "
        f"{text(worst['eager'])} (fast-host: {text(worst['eager fast'])}); of the other "
        f"backends' rows: {text(worst['other'])} (fast-host: {text(worst['other fast'])})."
    ]


LEGEND = """\
**median**: the sweep's reported median (the median of its repeats' medians). **Agreement**:
max / min - 1 over the sweeps. **fast-host**: the median over the blocks whose host probe is at
most 1.25x the sweep's lowest probe (docs/measurement.md); — where rows carry no
probe."""

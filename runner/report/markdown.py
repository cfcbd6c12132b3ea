"""Markdown cells, rows and phrases shared by the report's tables: takes numbers and texts,
returns table text. No knowledge of rows or runs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

DASH = "—"  # a figure that does not exist


def number(value: float | None, decimals: int) -> str:
    return DASH if value is None else f"{value:.{decimals}f}"


MOST_DECIMALS = 4  # past this a ratio's difference from 1 is rounding noise of the medians


def ratio_digits(ratio: float, decimals: int = 2) -> str:
    """`ratio` with `decimals` decimals, or with as many more (up to MOST_DECIMALS) as it takes
    for a ratio other than 1 not to read as 1: at one decimal 0.97 is "0.97", not "1.0", and
    at two 0.997 is "0.997", not "1.00". A slowdown or a gain never reads as a tie."""
    text = f"{ratio:.{decimals}f}"
    while ratio != 1.0 and float(text) == 1.0 and decimals < MOST_DECIMALS:
        decimals += 1
        text = f"{ratio:.{decimals}f}"
    return text


def ratio_text(ratio: float | None, decimals: int = 2) -> str:
    return DASH if ratio is None else f"{ratio_digits(ratio, decimals)}x"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_row(texts: Iterable[str]) -> str:
    return "| " + " | ".join(cell(text) for text in texts) + " |"


def markdown_header(columns: Sequence[str], text_columns: Iterable[str]) -> list[str]:
    """The header line and the alignment line (text_columns left, the rest right)."""
    text = set(text_columns)
    aligned = ("---" if c in text else "---:" for c in columns)
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(aligned) + "|"]


def counted(count: int, noun: str) -> str:
    """'1 row', '3 rows'."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def joined(values: Sequence[str]) -> str:
    return ", ".join(values) if values else DASH


def as_code(values: Sequence[str]) -> str:
    return joined([f"`{value}`" for value in values])


def bullet(label: str, values: Sequence[str]) -> str:
    """One bullet; several values (commands, protocols) become sub-bullets of it."""
    if len(values) <= 1:
        return f"- **{label}:** {values[0] if values else DASH}"
    return "\n".join([f"- **{label}:**", *(f"  - {value}" for value in values)])

"""Markdown cells and rows shared by the report's tables (runner.report, runner.performance):
takes numbers and texts, returns table text. No knowledge of rows or runs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

DASH = "—"  # a figure that does not exist


def number(value: float | None, decimals: int) -> str:
    return DASH if value is None else f"{value:.{decimals}f}"


def ratio_text(ratio: float | None) -> str:
    return DASH if ratio is None else f"{ratio:.2f}x"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_row(texts: Iterable[str]) -> str:
    return "| " + " | ".join(cell(text) for text in texts) + " |"


def markdown_header(columns: Sequence[str], text_columns: Iterable[str]) -> list[str]:
    """The header line and the alignment line (text_columns left, the rest right)."""
    text = set(text_columns)
    aligned = ("---" if c in text else "---:" for c in columns)
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(aligned) + "|"]

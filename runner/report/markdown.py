"""Markdown cells, rows and phrases shared by the report's tables: takes numbers and texts,
returns table text. No knowledge of rows or runs."""

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

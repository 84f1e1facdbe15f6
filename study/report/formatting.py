"""How the report writes values: markdown tables, ``mean ± std`` in %, counts, missing values."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table as lines: the header, its rule and one line per row.

    >>> markdown_table(["schedule", "mAP"], [["finetune", "19.58"]])
    ['| schedule | mAP |', '|---|---|', '| finetune | 19.58 |']
    """

    def line(cells: list[Any]) -> str:
        return f"| {' | '.join(map(str, cells))} |"

    return [line(header), "|" + "---|" * len(header), *map(line, rows)]


def pm(mean: float, std: float) -> str:
    """``mean ± std`` in %; the mean alone when there is no spread to give (one seed)."""
    if is_missing(mean):
        return "–"
    return f"{mean * 100:.2f}" if is_missing(std) else f"{mean * 100:.2f} ± {std * 100:.2f}"


def percent(value: Any) -> str:
    return "–" if is_missing(value) else f"{value * 100:.2f}"


def status_counts(statuses: pd.Series) -> str:
    return ", ".join(f"{n} {status}" for status, n in statuses.value_counts().items())


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def shown_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

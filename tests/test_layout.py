"""The README's Layout table names every module of the packages it lists, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_rows() -> dict[str, str]:
    """Each row of the README's Layout table: the folder, and what the row says about it."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout") :].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([\w/]+)/` \| (.*) \|$", table, re.MULTILINE))


def test_the_layout_table_names_each_module_of_each_package_it_lists():
    rows = layout_rows()
    assert {"schedules", "study", "study/evaluate", "study/report"} <= set(rows)
    for folder, text in rows.items():
        if not (ROOT / folder / "__init__.py").exists():
            continue  # search_spaces/, tests/, benchmarks/: described, not listed module by module
        modules = {p.name for p in (ROOT / folder).glob("*.py")} - {"__init__.py", "__main__.py"}
        named = set(re.findall(r"`(\w+\.py)`", text))
        unnamed, gone = sorted(modules - named), sorted(named - modules)
        assert not unnamed and not gone, f"{folder}/: not in the table {unnamed}, no such file {gone}"
        packages = {f"{folder}/{p.parent.name}" for p in (ROOT / folder).glob("*/__init__.py")}
        assert packages <= set(rows), f"packages without a row: {sorted(packages - set(rows))}"

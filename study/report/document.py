"""A study's report as one markdown document: its sections in order and its plots, written at once
(DIR/report.md, or one file for one or several studies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from study.files import atomic_write_text
from study.report.chance import near_chance
from study.report.curves import (
    boundary_gradient_table,
    drift_table,
    evaluation_table,
    gradient_table,
    period_table,
)
from study.report.formatting import status_counts
from study.report.loading import Study
from study.report.plots import write_plots
from study.report.statistics import caveats, unfinished_note
from study.report.tables import (
    against_finetune,
    best_configuration,
    final_table,
    importance_section,
    pairs_section,
    schedules_table,
    verdict,
)

PLOTS = "plots"


def write_report(study: Study, final: list[dict[str, Any]] | None = None) -> Path:
    """Write DIR/report.md and DIR/plots/*.png; returns the report's path."""
    path = study.folder / "report.md"
    atomic_write_text(path, "\n".join(study_lines(study, final, study.folder / PLOTS, path.parent)) + "\n")
    return path


def write_combined_report(studies: list[tuple[Study, list[dict[str, Any]] | None]], path: Path) -> Path:
    """Write the report of one or several studies to ``path``, plots in ``path``'s stem folder beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [] if len(studies) == 1 else [f"# Studies {', '.join(s.name for s, _ in studies)}", ""]
    for study, final in studies:
        plots = path.parent / path.stem / study.name
        lines += study_lines(study, final, plots, path.parent, level=1 if len(studies) == 1 else 2)
        lines.append("")
    atomic_write_text(path, "\n".join(lines).rstrip("\n") + "\n")
    return path


def study_lines(
    study: Study, final: list[dict[str, Any]] | None, plots_folder: Path, relative_to: Path, level: int = 1
) -> list[str]:
    """The markdown of one study's report; its plots are written to ``plots_folder``."""
    plots = write_plots(study, plots_folder)
    h1, h2 = "#" * level, "#" * (level + 1)
    lines = [f"{h1} Study {study.name}", "", _overview(study), ""]
    lines += [
        line for warning in (unfinished_note(study), near_chance(study)) if warning for line in (warning, "")
    ]
    lines += [f"{h2} Verdict", "", *verdict(study), ""]
    lines += [f"{h2} Caveats", "", *caveats(study), ""]
    lines += [f"{h2} Pairs", "", *pairs_section(study), ""]
    lines += [f"{h2} Schedules", "", *schedules_table(study), ""]
    lines += [f"{h2} Against fine-tuning", "", *against_finetune(study), ""]
    lines += [f"{h2} Best configuration", "", *best_configuration(study), ""]
    lines += [f"{h2} Parameter importance", "", *importance_section(study), ""]
    lines += [f"{h2} After every period (the paper's Table 2)", "", *period_table(study), ""]
    lines += [f"{h2} {study.metric} at each evaluation", "", *evaluation_table(study), ""]
    lines += [f"{h2} Gradient norm per block", "", *gradient_table(study), ""]
    lines += [f"{h2} Gradient norm across period boundaries", "", *boundary_gradient_table(study), ""]
    lines += [f"{h2} Distance from the pre-trained weights", "", *drift_table(study), ""]
    if final:
        lines += [f"{h2} Test set (retrained on every training identity)", "", *final_table(final), ""]
    lines += [f"{h2} Plots", ""]
    lines += [f"![{title}]({path.relative_to(relative_to).as_posix()})" for title, path in plots.items()] or [
        "No epochs reported yet."
    ]
    return lines


def _overview(study: Study) -> str:
    trials = study.results
    pieces = (
        f" (run in {len(study.pieces)} pieces: {', '.join(map(str, study.pieces))})" if study.pieces else ""
    )
    statuses, schedules = status_counts(trials["status"]), trials["schedule"].nunique()
    return (
        f"{len(trials)} trials ({statuses}) of {schedules} schedules"
        f"{pieces}; ranked by best {study.metric} (the best of a run's evaluations; final: its last one); "
        "mean ± sample std over the seeds (n in the seeds column), in %."
    )

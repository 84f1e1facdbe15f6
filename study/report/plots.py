"""The report's plots (PNG): the metric, the training loss and each block's gradient norm against the
epoch, like the paper's Figures 4 and 5, and each tuned parameter against the metric."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from study.report.loading import Study, best_curves


def write_plots(study: Study, folder: Path) -> dict[str, Path]:
    """PNG plots into ``folder``; returns title -> path for those that had data."""
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    curves = best_curves(study)
    plots: dict[str, Path] = {}
    if not curves.empty:
        m = study.metric
        validated = curves.dropna(subset=[m]) if m in curves else curves.iloc[0:0]
        if not validated.empty:
            chance = _chance_map(study)
            path = folder / f"{m}.png"
            plots[f"{m} against epoch"] = _line_plot(validated, m, 100, f"{m} (%)", path, chance)
        plots["training loss against epoch"] = _line_plot(
            curves, "loss", 1, "training loss", folder / "loss.png"
        )
        plots["gradient norm per block"] = _grad_plot(curves, folder / "grad_norm.png")
    scatter = _param_plot(study, folder / "params.png")
    if scatter is not None:
        plots[f"tuned parameters against best {study.metric}"] = scatter
    return plots


def period_boundaries(rows: pd.DataFrame) -> list[float]:
    """Where periods start (between the epochs), over every schedule in ``rows``: x positions to mark."""
    if "period" not in rows or rows.empty:
        return []
    starts = rows[rows["period"] > 1].groupby(["schedule", "period"])["epoch"].min()
    return sorted({float(epoch) - 0.5 for epoch in starts})


def _mark_periods(ax: Any, rows: pd.DataFrame) -> bool:
    boundaries = period_boundaries(rows)
    for x in boundaries:
        ax.axvline(x, color="0.5", linestyle=":", linewidth=1, zorder=0)
    return bool(boundaries)


def _chance_map(study: Study) -> float | None:
    """A random ranking's expected mAP on the study's evaluation split, where it can be computed."""
    from study.errors import UserError
    from study.report.chance import chance_level

    try:
        chance = chance_level(study)
    except (UserError, OSError, ValueError, KeyError):  # the caveats say why
        return None
    return None if chance is None else chance[2]


def _line_plot(
    rows: pd.DataFrame, column: str, scale: float, label: str, path: Path, chance: float | None = None
) -> Path:
    """Mean over seeds against the epoch, per schedule; ``chance``: the chance level, drawn dashed."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _distinct_colors(ax, rows["schedule"].nunique())
    for schedule, group in rows.groupby("schedule", sort=False):
        stats = (group.groupby("epoch")[column].agg(["mean", "min", "max"]) * scale).reset_index()
        (line,) = ax.plot(stats["epoch"], stats["mean"], marker="o", markersize=3, label=schedule)
        ax.fill_between(stats["epoch"], stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
    if chance is not None:
        ax.axhline(chance * scale, color="0.3", linestyle="--", linewidth=1, label="chance")
    marked = _mark_periods(ax, rows)
    title = f"{label}: mean over seeds (band: min to max)" + ("\ndotted: period boundaries" if marked else "")
    ax.set(xlabel="epoch", ylabel=label, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2 if rows["schedule"].nunique() > 6 else 1)
    return _save(fig, path)


def _grad_plot(rows: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = [c for c in rows.columns if c.startswith("grad_norm_")]
    fig, axes = plt.subplots(2, math.ceil(len(columns) / 2), figsize=(12, 6.5), squeeze=False)
    for ax, column in zip(axes.flat, columns, strict=False):
        _distinct_colors(ax, rows["schedule"].nunique())
        for schedule, group in rows.groupby("schedule", sort=False):
            stats = group.groupby("epoch")[column].agg(["mean", "min", "max"])
            stats = stats[stats["mean"] > 0]  # frozen epochs have no gradient to show on a log scale
            (line,) = ax.plot(stats.index, stats["mean"], label=schedule)
            ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
        _mark_periods(ax, rows)
        ax.set(title=column.removeprefix("grad_norm_"), xlabel="epoch", yscale="log")
        _readable_log_ticks(ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(columns) :]:
        ax.set_visible(False)
    axes.flat[0].set_ylabel("gradient norm (mean over the epoch's steps)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize="small")
    fig.suptitle("Gradient norm per block: mean over seeds (band: min to max; dotted: period boundaries)")
    return _save(fig, path, rect=(0, 0.07, 1, 1))  # room for the figure's legend


def _readable_log_ticks(ax: Any) -> None:
    """Plain numbers at 1, 2 and 5 times the powers of ten when the axis spans under three decades
    (otherwise at the powers alone), never matplotlib's crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = ax.get_ylim()
    plain = FuncFormatter(lambda value, _: f"{value:.3g}")
    narrow = low > 0 and high / low < 1000
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(NullFormatter())


def _param_plot(study: Study, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    results = study.results
    best = f"best_{study.metric}"
    keys = [k for k in study.keys if results[k].nunique() > 1]
    if not keys or results[best].notna().sum() == 0:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=True):
        _distinct_colors(ax, results["schedule"].nunique())
        numeric = pd.to_numeric(results[key], errors="coerce")
        for schedule, group in results.groupby("schedule", sort=False):
            x = numeric[group.index] if numeric.notna().any() else group[key].astype(str)
            ax.scatter(x, group[best] * 100, label=schedule, alpha=0.8)
        if numeric.notna().any() and numeric.min() > 0 and numeric.max() / numeric.min() >= 10:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=f"best {study.metric} (%)", title=f"{key}: one point per trial")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    return _save(fig, path)


def _distinct_colors(ax: Any, count: int) -> None:
    """Matplotlib's default cycle repeats after 10 colours; studies may compare more schedules."""
    if count > 10:
        import matplotlib

        ax.set_prop_cycle(color=matplotlib.colormaps["tab20"].colors[:count])


def _save(fig: Any, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

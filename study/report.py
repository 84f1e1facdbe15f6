"""``python -m study.report DIR [DIR ...] [--final [--seeds N ...] [--jobs N]] [--out FILE]``: study reports.

The report compares the schedules (each schedule's best configuration, mean ± std over its
seeds), names the best configuration, ranks the tuned parameters by importance (Optuna's
PED-ANOVA on DIR/optuna.db), tabulates each block's gradient norm against fine-tuning's, and plots
validation mAP, training loss and gradient norms against the epoch (like the paper's Figures 4
and 5) and each tuned parameter against mAP.
``--final`` retrains the best configuration and the fine-tuning baseline (the best ``finetune``
configuration, or ``finetune`` for the same number of epochs when the study has none) on every
training identity with ``data.evaluate_on=test``, once per seed of the study or of ``--seeds``
(into DIR/final/), and adds their test mAP and rank-1; ``--jobs N`` trains N of those runs at once.
By default the report is DIR/report.md with plots in DIR/plots/; ``--out FILE`` writes it (of one
or several studies) to FILE, with plots in a folder named after FILE beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study.config import read_yaml
from study.errors import UserError, cli
from study.files import atomic_write_text

PLOTS = "plots"
SEED = "seed"


@dataclass
class Study:
    """A study folder's tables and the settings of the search space it ran."""

    folder: Path
    name: str
    saved: dict[str, Any]  # DIR/study.yaml
    results: pd.DataFrame
    epochs: pd.DataFrame
    prefix: str  # val or test
    keys: list[str]  # the searched run-config keys (results.csv columns), schedule.name excluded

    @property
    def metric(self) -> str:
        return f"{self.prefix}_mAP"

    def configurations(self) -> pd.DataFrame:
        """One row per sampled configuration: its seeds' mean and std of the best mAP and rank-1."""
        results = self.results.copy()
        group = ["schedule", *self.keys]
        results["config"] = [repr(tuple(values)) for values in results[group].itertuples(index=False)]
        best_map, best_rank1 = f"best_{self.prefix}_mAP", f"best_{self.prefix}_rank1"
        final_map = f"final_{self.prefix}_mAP"
        if final_map not in results:
            results[final_map] = math.nan
        rows = []
        for _, trials in results.groupby("config", sort=False):
            first = trials.iloc[0]
            rows.append(
                {
                    "schedule": first["schedule"],
                    **{k: first[k] for k in self.keys},
                    "seeds": len(trials),
                    "trial_ids": list(trials["trial_id"]),
                    "mAP_mean": trials[best_map].mean(),
                    "mAP_std": trials[best_map].std(ddof=0),
                    "rank1_mean": trials[best_rank1].mean(),
                    "rank1_std": trials[best_rank1].std(ddof=0),
                    "final_mean": trials[final_map].mean(),
                    "final_std": trials[final_map].std(ddof=0),
                    "epochs": trials["epochs"].mean(),
                    "statuses": _counts(trials["status"]),
                }
            )
        return pd.DataFrame(rows)

    def best_per_schedule(self) -> pd.DataFrame:
        """Each schedule's best configuration (highest mean best mAP over seeds), best first."""
        configs = self.configurations().sort_values("mAP_mean", ascending=False, na_position="last")
        return configs.drop_duplicates("schedule").reset_index(drop=True)


def load_study(folder: str | Path) -> Study:
    """Read DIR/study.yaml, results.csv and epochs.csv (one-line errors when DIR holds no study)."""
    folder = Path(folder)
    if not (folder / "study.yaml").exists():
        raise UserError(f"{folder} holds no study (no study.yaml); run python -m study.sweep first")
    if not (folder / "results.csv").exists():
        raise UserError(f"{folder} has no results.csv yet; wait for the first trial to report")
    saved = read_yaml(folder / "study.yaml")
    results = pd.read_csv(folder / "results.csv")
    epochs_file = folder / "epochs.csv"
    has_epochs = epochs_file.exists() and epochs_file.stat().st_size > 1  # a header-only file is one newline
    epochs = pd.read_csv(epochs_file) if has_epochs else pd.DataFrame()
    prefix = (saved.get("data") or {}).get("evaluate_on", "val")
    search = saved.get("search") or {}
    searched = [*(search.get("params") or {}), *(k for p in (search.get("when") or {}).values() for k in p)]
    keys = [k for k in dict.fromkeys(searched) if k in results.columns]
    return Study(folder, saved.get("_name", folder.name), saved, results, epochs, prefix, keys)


# ----------------------------------------------------------------------------- the report


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
    lines += [f"{h2} Schedules", "", *schedules_table(study), ""]
    lines += [f"{h2} Against fine-tuning", "", *against_finetune(study), ""]
    lines += [f"{h2} Best configuration", "", *best_configuration(study), ""]
    lines += [f"{h2} Parameter importance", "", *importance_section(study), ""]
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
    return (
        f"{len(trials)} trials ({_counts(trials['status'])}) of {trials['schedule'].nunique()} schedules; "
        f"ranked by best {study.metric} (the best of a run's evaluations; final: its last one); "
        "mean ± std over seeds, in %."
    )


def schedules_table(study: Study) -> list[str]:
    """Markdown table: each schedule's best configuration, mean ± std over seeds of best mAP and rank-1."""
    best = study.best_per_schedule()
    trials = study.results.groupby("schedule").size()
    configs = study.configurations().groupby("schedule").size()
    p = study.prefix
    lines = [
        f"| schedule | best {p} mAP | best {p} rank-1 | final {p} mAP "
        "| seeds | epochs | configurations | trials | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in best.iterrows():
        name = row["schedule"]
        lines.append(
            f"| {name} | {_pm(row['mAP_mean'], row['mAP_std'])} | {_pm(row['rank1_mean'], row['rank1_std'])} "
            f"| {_pm(row['final_mean'], row['final_std'])} "
            f"| {row['seeds']} | {row['epochs']:g} | {configs[name]} | {trials[name]} "
            f"| {_counts(study.results.loc[study.results['schedule'] == name, 'status'])} |"
        )
    return lines


def against_finetune(study: Study) -> list[str]:
    """Each schedule's final mAP minus fine-tuning's (best configurations), with Welch's t-test over seeds.

    The final (last) evaluation is compared, not the best one, so no schedule gains from a selection
    on the evaluation set; seeds are paired by their number for the per-seed count.
    """
    best = study.best_per_schedule()
    final = f"final_{study.prefix}_mAP"
    if "finetune" not in set(best["schedule"]) or final not in study.results:
        return ["No comparison: the study has no `finetune` trials."]
    results = study.results.set_index("trial_id")

    def per_seed(row: pd.Series) -> pd.Series:
        trials = results.loc[row["trial_ids"]].dropna(subset=[final])
        return trials.groupby(SEED)[final].mean()

    baseline = per_seed(best[best["schedule"] == "finetune"].iloc[0])
    lines = [
        f"Final {study.metric} (the last evaluation of each run) minus `finetune`'s, in points; p: Welch's "
        "two-sided t-test over the seeds (with a few seeds only a large, consistent gap stands out of the "
        "seed noise); seeds better: the seeds whose run beats `finetune`'s run of the same seed.",
        "",
        f"| schedule | final {study.prefix} mAP | Δ vs finetune | p | seeds better |",
        "|---|---|---|---|---|",
    ]
    for _, row in best.iterrows():
        if row["schedule"] == "finetune":
            continue
        values = per_seed(row)
        if values.empty or baseline.empty:
            continue
        common = values.index.intersection(baseline.index)
        better = int((values[common] > baseline[common]).sum())
        gap = (values.mean() - baseline.mean()) * 100
        lines.append(
            f"| {row['schedule']} | {_pm(values.mean(), values.std(ddof=0))} | {gap:+.2f} "
            f"| {_p_value(values, baseline)} | {better}/{len(common)} |"
        )
    return lines if len(lines) > 4 else ["No schedule besides `finetune` has been evaluated yet."]


def _p_value(a: pd.Series, b: pd.Series) -> str:
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return "–"
    from scipy.stats import ttest_ind

    return f"{ttest_ind(a, b, equal_var=False).pvalue:.3f}"


def best_configuration(study: Study) -> list[str]:
    """The configuration with the highest mean best mAP, its values and how to train it again."""
    best = study.best_per_schedule()
    if best.empty or pd.isna(best.iloc[0]["mAP_mean"]):
        return ["No trial has been validated yet."]
    row = best.iloc[0]
    lines = [
        f"**{row['schedule']}**: best {study.metric} {_pm(row['mAP_mean'], row['mAP_std'])}, "
        f"rank-1 {_pm(row['rank1_mean'], row['rank1_std'])} over {row['seeds']} seed(s).",
        "",
    ]
    lines += [f"- `{key}`: {_value(row[key])}" for key in study.keys if not _missing(row[key])]
    trial = row["trial_ids"][0]
    final = f", or on the test protocol with `python -m study.report {study.folder} --final`"
    lines += [
        "",
        f"Trials: {', '.join(row['trial_ids'])}. Train it again with "
        f"`python -m study.train {study.folder / 'trials' / trial / 'config.yaml'} --out DIR`"
        f"{final if study.prefix == 'val' else ''}.",
    ]
    return lines


def importance_section(study: Study) -> list[str]:
    """Optuna parameter importance (PED-ANOVA) over the completed configurations, or why there is none."""
    db = study.folder / "optuna.db"
    if not db.exists():
        return ["No Optuna study (optuna.db) in this folder."]
    if importlib.util.find_spec("optuna") is None:
        return ["Not computed: Optuna is not installed here (pip install -e '.[sweep]')."]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        stored = optuna.load_study(study_name=study.name, storage=f"sqlite:///{db}")
    except KeyError:
        return [f"optuna.db holds no study named {study.name!r}."]
    complete = [t for t in stored.trials if t.state == optuna.trial.TrialState.COMPLETE]
    varying = sorted(
        {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
    )
    if len(complete) < 2 or not varying:
        return [
            f"Not computed: needs at least 2 completed configurations and 1 varying parameter "
            f"(has {len(complete)} and {len(varying)})."
        ]
    with _quiet_warnings():
        try:
            importances = optuna.importance.get_param_importances(
                stored, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
            )
        except (ValueError, RuntimeError) as error:
            return [f"Not computed: {error}"]
    lines = [
        f"PED-ANOVA over {len(complete)} completed configurations (Optuna trials, seeds averaged); "
        "parameters that only some schedules have are left out"
        f"{'; rough with so few configurations' if len(complete) < 10 else ''}. "
        f"Open the study with `optuna-dashboard sqlite:///{db}`.",
        "",
        "| parameter | importance |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {value:.3f} |" for name, value in importances.items()]
    return lines


def final_table(final: list[dict[str, Any]]) -> list[str]:
    """Test mAP and rank-1 of the final models, mean ± std over seeds per retrained configuration."""
    diverged = {(run["label"], run["seed"]) for run in final if run["summary"]["status"] == "diverged"}

    def value(run: dict[str, Any], key: str) -> Any:  # a diverged run's last evaluation is no final model's
        return math.nan if (run["label"], run["seed"]) in diverged else run["summary"].get(key)

    runs = pd.DataFrame(
        {
            "label": run["label"],
            "schedule": run["summary"]["schedule"],
            "seed": run["seed"],
            "mAP": value(run, "final_test_mAP"),
            "rank1": value(run, "final_test_rank1"),
            "epochs": run["summary"]["epochs"],
            "folder": run["folder"],
        }
        for run in final
    )
    lines = [
        "| run | schedule | test mAP | test rank-1 | seeds | mAP per seed | epochs | folders |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, runs_of in runs.groupby("label", sort=False):
        seeds = zip(runs_of["seed"], runs_of["mAP"], strict=True)
        per_seed = ", ".join(
            f"diverged (seed {seed})" if (label, seed) in diverged else f"{mAP * 100:.2f} (seed {seed})"
            for seed, mAP in seeds
        )
        folders = ", ".join(sorted({str(Path(f).parent) for f in runs_of["folder"]}))
        mAP, rank1 = runs_of["mAP"], runs_of["rank1"]
        lines.append(
            f"| {label} | {runs_of['schedule'].iloc[0]} | {_pm(mAP.mean(), mAP.std(ddof=0))} "
            f"| {_pm(rank1.mean(), rank1.std(ddof=0))} | {len(runs_of)} | {per_seed} "
            f"| {runs_of['epochs'].iloc[0]} | {folders} |"
        )
    lines += ["", "Values of the final model (no selection on the test set); mean ± std over seeds, in %."]
    if diverged:
        lines.append(f"{len(diverged)} run(s) diverged; means and tests are over the runs that did not.")
    means = runs.groupby("label", sort=False)["mAP"].mean()
    if {"best", "finetune"} <= set(means.index) and means[["best", "finetune"]].notna().all():
        gap = (means["best"] - means["finetune"]) * 100
        spread = runs[runs["label"] == "finetune"]["mAP"].std(ddof=0) * 100
        by_label = {label: of["mAP"].dropna() for label, of in runs.set_index("seed").groupby("label")}
        p = _p_value(by_label["best"], by_label["finetune"])
        lines.append(
            f"The best configuration minus fine-tuning: {gap:+.2f} mAP points "
            f"(fine-tuning's std over seeds: {spread:.2f}; Welch's t-test p = {p})."
        )
    return lines


def evaluation_table(study: Study) -> list[str]:
    """Each schedule's metric at every evaluated epoch (mean ± std over seeds): the curve as numbers."""
    curves = best_curves(study)
    metric = study.metric
    if curves.empty or metric not in curves or curves[metric].isna().all():
        return ["No evaluations reported yet."]
    validated = curves.dropna(subset=[metric])
    stats = validated.groupby(["schedule", "epoch"])[metric].agg(["mean", lambda v: v.std(ddof=0)])
    stats.columns = ["mean", "std"]
    epochs = sorted(validated["epoch"].unique())
    schedules = [s for s in study.best_per_schedule()["schedule"] if s in stats.index.get_level_values(0)]
    lines = [
        f"{metric} of each schedule's best configuration after the epochs it was evaluated at, "
        "mean ± std over the seeds, in %.",
        "",
        f"| schedule | {' | '.join(f'epoch {e}' for e in epochs)} |",
        f"|---|{'---|' * len(epochs)}",
    ]
    for schedule in schedules:
        cells = [
            _pm(stats.loc[(schedule, e), "mean"], stats.loc[(schedule, e), "std"])
            if (schedule, e) in stats.index
            else "–"
            for e in epochs
        ]
        lines.append(f"| {schedule} | {' | '.join(cells)} |")
    return lines


def gradient_table(study: Study) -> list[str]:
    """Each block's gradient norm over the second half of training, per schedule, relative to finetune."""
    curves = best_curves(study)
    columns = [c for c in curves.columns if c.startswith("grad_norm_")]
    if curves.empty or not columns:
        return ["No gradient norms reported yet."]
    late = curves[curves["epoch"] > curves.groupby("trial_id")["epoch"].transform("max") / 2]
    means = late.groupby("schedule")[columns].mean()
    means = means.reindex([s for s in study.best_per_schedule()["schedule"] if s in means.index])
    blocks = [c.removeprefix("grad_norm_") for c in columns]
    has_baseline = "finetune" in means.index
    lines = [
        "Mean gradient norm of each block over the second half of each run's epochs (mean over the "
        "epoch's steps, then over epochs and seeds)"
        + ("; in brackets, the ratio to `finetune`'s." if has_baseline else "."),
        "",
        f"| schedule | {' | '.join(blocks)} |",
        f"|---|{'---|' * len(blocks)}",
    ]
    for schedule, row in means.iterrows():
        cells = []
        for column in columns:
            ratio = row[column] / means.loc["finetune", column] if has_baseline else math.nan
            cells.append(f"{row[column]:.3g}" + ("" if math.isnan(ratio) else f" ({ratio:.2f}×)"))
        lines.append(f"| {schedule} | {' | '.join(cells)} |")
    return lines


def drift_table(study: Study) -> list[str]:
    """Each block's relative distance from its pre-trained weights at the end of every period.

    The paper's premise is that ordinary fine-tuning barely moves the low blocks; a rollback keeps
    them training while the high blocks restart from their pre-trained weights.
    """
    curves = best_curves(study)
    columns = [c for c in curves.columns if c.startswith("drift_")]
    if curves.empty or not columns or "period" not in curves:
        return ["No distances from the pre-trained weights reported yet (runs before this metric existed)."]
    ends = curves.sort_values("epoch").groupby(["schedule", "trial_id", "period"], sort=False).tail(1)
    stats = ends.groupby(["schedule", "epoch"])[columns].agg(["mean", "std", "count"])
    order = [s for s in study.best_per_schedule()["schedule"] if s in set(ends["schedule"])]
    blocks = [c.removeprefix("drift_") for c in columns]
    lines = [
        "‖θ − θ⁰‖ / ‖θ⁰‖ of each block's parameters against its pre-trained weights, in %, at the "
        "last epoch of each period (mean ± sample std over the n seeds).",
        "",
        f"| schedule | epoch | n | {' | '.join(blocks)} |",
        f"|---|---|---|{'---|' * len(blocks)}",
    ]
    for schedule in order:
        for epoch in sorted(e for s, e in stats.index if s == schedule):
            row = stats.loc[(schedule, epoch)]
            n = int(row[(columns[0], "count")])
            cells = " | ".join(
                _pm(row[(c, "mean")], row[(c, "std")]) if n > 1 else _percent(row[(c, "mean")])
                for c in columns
            )
            lines.append(f"| {schedule} | {epoch} | {n} | {cells} |")
    return lines


def boundary_gradient_table(study: Study) -> list[str]:
    """How each block's gradient norm changes at a period boundary: first epoch of a period over the
    last epoch of the one before, per schedule with several periods.

    The paper's claim is that rolling back the higher blocks revives the vanished gradients of the
    lower ones; ``base_cy`` (the same restarts, nothing rolled back) is the control.
    """
    curves = best_curves(study)
    columns = [c for c in curves.columns if c.startswith("grad_norm_")]
    if curves.empty or not columns or "period" not in curves:
        return ["No gradient norms reported yet."]
    ratios = []
    for (schedule, _), trial in curves.sort_values("epoch").groupby(["schedule", "trial_id"], sort=False):
        ends = trial.groupby("period").tail(1).set_index("period")
        starts = trial.groupby("period").head(1).set_index("period")
        for period in starts.index[1:]:
            if period - 1 in ends.index:
                before = ends.loc[period - 1, columns].astype(float)
                ratio = starts.loc[period, columns].astype(float) / before.where(before > 0)  # 0: frozen
                ratios.append({"schedule": schedule, **ratio.to_dict()})
    if not ratios:
        return ["No schedule in this study has crossed a period boundary."]
    table = pd.DataFrame(ratios)
    order = [s for s in study.best_per_schedule()["schedule"] if s in set(table["schedule"])]
    blocks = [c.removeprefix("grad_norm_") for c in columns]
    lines = [
        "Each block's gradient norm in the first epoch of a period divided by the last epoch of the "
        "period before (geometric mean over the boundaries and seeds; above 1: larger after the "
        "boundary; –: the block was frozen before it). `base_cy` restarts the learning rates without "
        "rolling anything back.",
        "",
        f"| schedule | boundaries | {' | '.join(blocks)} |",
        f"|---|---|{'---|' * len(blocks)}",
    ]
    for schedule in order:
        rows = table[table["schedule"] == schedule]
        means = rows[columns].apply(lambda r: float(np.exp(np.log(r.dropna()).mean())))
        cells = " | ".join("–" if math.isnan(means[c]) else f"{means[c]:.2f}×" for c in columns)
        lines.append(f"| {schedule} | {len(rows)} | {cells} |")
    return lines


# ----------------------------------------------------------------------------- plots


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
            plots[f"{m} against epoch"] = _line_plot(validated, m, 100, f"{m} (%)", folder / f"{m}.png")
        plots["training loss against epoch"] = _line_plot(
            curves, "loss", 1, "training loss", folder / "loss.png"
        )
        plots["gradient norm per block"] = _grad_plot(curves, folder / "grad_norm.png")
    scatter = _param_plot(study, folder / "params.png")
    if scatter is not None:
        plots[f"tuned parameters against best {study.metric}"] = scatter
    return plots


def best_curves(study: Study) -> pd.DataFrame:
    """Epoch rows of each schedule's best configuration (all its seeds), diverged epochs left out."""
    if study.epochs.empty:
        return study.epochs
    trials = {t: row["schedule"] for _, row in study.best_per_schedule().iterrows() for t in row["trial_ids"]}
    rows = study.epochs[study.epochs["trial_id"].isin(trials)]
    if "diverged" in rows:
        rows = rows[~rows["diverged"].astype(bool)]
    return rows


def _line_plot(rows: pd.DataFrame, column: str, scale: float, label: str, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _distinct_colors(ax, rows["schedule"].nunique())
    for schedule, group in rows.groupby("schedule", sort=False):
        stats = (group.groupby("epoch")[column].agg(["mean", "min", "max"]) * scale).reset_index()
        (line,) = ax.plot(stats["epoch"], stats["mean"], marker="o", markersize=3, label=schedule)
        ax.fill_between(stats["epoch"], stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
    ax.set(xlabel="epoch", ylabel=label, title=f"{label}: mean over seeds (band: min to max)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2 if rows["schedule"].nunique() > 6 else 1)
    return _save(fig, path)


def _grad_plot(rows: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    columns = [c for c in rows.columns if c.startswith("grad_norm_")]
    fig, axes = plt.subplots(2, math.ceil(len(columns) / 2), figsize=(12, 6.5), squeeze=False)
    for ax, column in zip(axes.flat, columns, strict=False):
        _distinct_colors(ax, rows["schedule"].nunique())
        for schedule, group in rows.groupby("schedule", sort=False):
            mean = group.groupby("epoch")[column].mean()
            ax.plot(mean.index, mean.values, label=schedule)
        ax.set(title=column.removeprefix("grad_norm_"), xlabel="epoch", yscale="log")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("gradient norm (mean over the epoch's steps)")
    axes.flat[0].legend(fontsize="small")
    fig.suptitle("Gradient norm per block, mean over seeds")
    return _save(fig, path)


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
        ax.set(xlabel=key, ylabel=f"best {study.metric} (%)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    return _save(fig, path)


def _distinct_colors(ax: Any, count: int) -> None:
    """Matplotlib's default cycle repeats after 10 colours; studies may compare more schedules."""
    if count > 10:
        import matplotlib

        ax.set_prop_cycle(color=matplotlib.colormaps["tab20"].colors[:count])


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- --final


def retrain_final(study: Study, seeds: list[int] | None = None, jobs: int = 1) -> list[dict[str, Any]]:
    """Retrain the best configuration and the fine-tuning baseline on the test protocol, once per seed
    (``seeds``, by default the study's), ``jobs`` runs at a time.

    Runs go to DIR/final/LABEL/seed-N; finished ones are read back, interrupted ones resumed.

    >>> retrain_final(load_study("runs/cuhk03_periods"), seeds=[0, 1, 2], jobs=3)
    """
    from schedules import build_schedule
    from study.config import config_from_dict
    from study.search_space import SCHEDULE_KEY, SEED_KEY, parse_search_space

    best = study.best_per_schedule().dropna(subset=["mAP_mean"])
    if best.empty:
        raise UserError("no trial has been validated yet; nothing to retrain")
    source = {k: v for k, v in study.saved.items() if k != "_name"}
    space = parse_search_space(source, study.name)

    def configuration(row: pd.Series) -> dict[str, Any]:
        sampled = {SCHEDULE_KEY: row["schedule"]}
        return sampled | {k: _cell(row[k]) for k in study.keys if not _missing(row[k])}

    chosen = {"best": lambda seed: space.run_config(configuration(best.iloc[0]) | {SEED_KEY: seed})}
    finetune = best[best["schedule"] == "finetune"]
    if best.iloc[0]["schedule"] != "finetune" and not finetune.empty:
        chosen["finetune"] = lambda seed: space.run_config(configuration(finetune.iloc[0]) | {SEED_KEY: seed})
    elif best.iloc[0]["schedule"] != "finetune":
        # The paper's baseline, one period with LR x0.1 half-way, for as many epochs as the best trains.
        epochs = build_schedule(chosen["best"](0).schedule).total_epochs
        baseline = space.base_for("finetune")
        baseline["schedule"] |= {"epochs": epochs, "decay_every": "half"}
        chosen["finetune"] = lambda seed: config_from_dict(
            copy.deepcopy(baseline), [f"train.seed={seed}", "train.progress=false"]
        )
    runs, pending = [], []
    for label, make_config in chosen.items():
        for seed in seeds or space.seeds:
            config = make_config(seed)
            config.data.evaluate_on = "test"
            config.train.progress = jobs == 1  # the bars of several processes would interleave
            folder = study.folder / "final" / label / f"seed-{seed}"
            runs.append({"label": label, "seed": seed, "folder": str(folder.relative_to(study.folder))})
            if not (folder / "summary.json").exists():
                pending.append((f"{label} ({config.schedule['name']}, seed {seed})", config, folder))
    if jobs == 1:
        for what, config, folder in pending:
            print(f"retraining {what} on the test protocol into {folder}")
            _train_final(config, folder, what)
    else:
        _train_in_processes(pending, jobs)
    for run in runs:
        run["summary"] = json.loads((study.folder / run["folder"] / "summary.json").read_text())
    return runs


def _train_final(config: Any, folder: Path, what: str) -> None:
    from study.trainer import Diverged, train_run

    try:
        train_run(config, folder, resume=True)
    except Diverged as error:  # a result, not a failure: the table shows it, summary.json says so
        print(f"{what} diverged ({error}); it counts as no test mAP")


def threads_per_job(jobs: int) -> int:
    """The torch CPU threads of each of ``jobs`` runs at once: an equal share of this process's cores.

    >>> threads_per_job(3)  # 5 on a 16-core machine, 1 on a 2-core one
    """
    import os

    return max(1, len(os.sched_getaffinity(0)) // jobs)


def _train_in_processes(pending: list[tuple[str, Any, Path]], jobs: int) -> None:
    """Train ``jobs`` runs at a time, each in its own process with its share of the cores (and, on a
    machine of several GPUs, the GPUs in turn); the first failure is raised once the others end."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    gpus = torch.cuda.device_count()
    # spawn, not fork: a forked child cannot use CUDA, and torch's thread pools do not survive a fork.
    context = multiprocessing.get_context("spawn")
    threads = threads_per_job(jobs)
    with ProcessPoolExecutor(jobs, context, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        submitted = {}
        for index, (what, config, folder) in enumerate(pending):
            if gpus > 1 and config.train.device in ("auto", "cuda"):
                config.train.device = f"cuda:{index % gpus}"
            print(f"retraining {what} on the test protocol into {folder} ({jobs} at a time)")
            submitted[pool.submit(_train_final, config, folder, what)] = what
        failures = []
        for future in as_completed(submitted):
            error = future.exception()
            if error is None:
                print(f"done: {submitted[future]}")
            else:
                failures.append(error)
    if failures:
        raise failures[0]


# ----------------------------------------------------------------------------- formatting


def _pm(mean: float, std: float) -> str:
    if _missing(mean):
        return "–"
    return f"{mean * 100:.2f} ± {0.0 if _missing(std) else std * 100:.2f}"


def _percent(value: Any) -> str:
    return "–" if _missing(value) else f"{value * 100:.2f}"


def _counts(statuses: pd.Series) -> str:
    return ", ".join(f"{n} {status}" for status, n in statuses.value_counts().items())


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(value: Any) -> Any:
    """A results.csv value as the type the config wants: whole floats that pandas made of ints become ints."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", metavar="DIR", help="a folder made by python -m study.sweep")
    parser.add_argument(
        "--final",
        action="store_true",
        help="retrain the best configuration and fine-tuning on the test protocol, once per seed (slow)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", metavar="N", help="seeds for --final (default: the study's)"
    )
    parser.add_argument(
        "--jobs", type=int, metavar="N", help="--final runs trained at once, in processes sharing the machine"
    )
    parser.add_argument(
        "--out", type=Path, help="the report's file, plots in a folder named after it (default DIR/report.md)"
    )
    args = parser.parse_args(argv)
    for option, value in (("--seeds", args.seeds), ("--jobs", args.jobs)):
        if value is not None and not args.final:
            raise UserError(f"{option} is an option of the --final retraining; add --final")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    if len(args.folders) > 1 and args.out is None:
        raise UserError("several study folders make one report: name its file with --out FILE")
    studies = [load_study(folder) for folder in args.folders]
    reports = []
    for study in studies:
        final = None
        if args.final and study.prefix == "test":
            print(f"{study.folder} was evaluated on the test protocol already: --final retrains nothing")
        elif args.final:
            final = retrain_final(study, args.seeds, args.jobs or 1)
        reports.append((study, final))
    if args.out is None:
        path = write_report(*reports[0])
        print(f"wrote {path} and plots in {reports[0][0].folder / PLOTS}")
    else:
        path = write_combined_report(reports, args.out)
        print(f"wrote {path} and plots in {args.out.parent / args.out.stem}")


if __name__ == "__main__":
    main()

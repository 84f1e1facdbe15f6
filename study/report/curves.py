"""The report's sections on the training curves, as markdown lines: the metric at each evaluation
and after every period (the paper's Table 2), each block's gradient norm (over the second half of
training and across period boundaries) and its distance from the pre-trained weights."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from study.report.formatting import markdown_table, percent, pm
from study.report.loading import Study, best_curves
from study.report.statistics import rebuilt_configs


def evaluation_table(study: Study) -> list[str]:
    """Each schedule's metric at every evaluated epoch (mean ± std over seeds): the curve as numbers."""
    curves = best_curves(study)
    metric = study.metric
    if curves.empty or metric not in curves or curves[metric].isna().all():
        return ["No evaluations reported yet."]
    validated = curves.dropna(subset=[metric])
    stats = validated.groupby(["schedule", "epoch"])[metric].agg(["mean", "std"])
    stats.columns = ["mean", "std"]
    epochs = sorted(validated["epoch"].unique())
    schedules = [s for s in study.best_per_schedule()["schedule"] if s in stats.index.get_level_values(0)]
    lines = [
        f"{metric} of each schedule's best configuration after the epochs it was evaluated at, "
        "mean ± std over the seeds, in %.",
    ]
    rows = [
        [
            schedule,
            *(
                pm(stats.loc[(schedule, e), "mean"], stats.loc[(schedule, e), "std"])
                if (schedule, e) in stats.index
                else "–"
                for e in epochs
            ),
        ]
        for schedule in schedules
    ]
    return [*lines, "", *markdown_table(["schedule", *(f"epoch {e}" for e in epochs)], rows)]


def period_end_rows(curves: pd.DataFrame) -> pd.DataFrame:
    """The epoch rows that end a period: ``periods_done`` reaches the period there (a run stopped
    mid-period ends none); without that column, each period's last epoch."""
    if "periods_done" in curves:
        return curves[curves["periods_done"] == curves["period"]]
    return curves.sort_values("epoch").groupby(["trial_id", "period"], sort=False).tail(1)


def period_table(study: Study) -> list[str]:
    """The paper's Table 2: each schedule's metric and rank-1 at every epoch where a period ends.

    Every schedule is read at the period ends of all of them, so that one-period fine-tuning is
    compared with a rollback after each of the rollback's periods.
    """
    curves = best_curves(study)
    metric, rank1 = study.metric, f"{study.prefix}_rank1"
    if curves.empty or metric not in curves or "period" not in curves or curves[metric].isna().all():
        return ["No evaluations reported yet."]
    ends = period_end_rows(curves)
    own_end = ends.groupby(["schedule", "epoch"])["period"].max()
    evaluated = curves[curves["epoch"].isin(set(ends["epoch"]))].dropna(subset=[metric])
    columns = [c for c in (metric, rank1, "accuracy") if c in evaluated]
    stats = evaluated.groupby(["schedule", "epoch"])[columns].agg(["mean", "std", "count"])
    order = [s for s in study.best_per_schedule()["schedule"] if s in stats.index.get_level_values(0)]
    lines = [
        f"{metric} and rank-1 of each schedule's best configuration at every epoch where a period of "
        "one of the schedules ends (the schedule's own period ends named), mean ± std over the n seeds, "
        "in %; training accuracy: the mean over the epoch's batches and the seeds.",
    ]
    rows = []
    for schedule in order:
        for epoch in sorted(e for s, e in stats.index if s == schedule):
            row = stats.loc[(schedule, epoch)]
            period = own_end.get((schedule, epoch))
            cells = [pm(row[(c, "mean")], row[(c, "std")]) for c in columns if c != "accuracy"]
            if "accuracy" in columns:
                cells.append(f"{row[('accuracy', 'mean')] * 100:.1f}")
            label = f"{epoch} (period {int(period)})" if period is not None else str(epoch)
            rows.append([schedule, label, int(row[(metric, "count")]), *cells])
    titles = {metric: metric.replace("_", " "), rank1: f"{study.prefix} rank-1"}
    titles["accuracy"] = "training accuracy"
    header = ["schedule", "after epoch", "n", *(titles[c] for c in columns)]
    return [*lines, "", *markdown_table(header, rows)]


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
    ]
    rows = []
    for schedule, row in means.iterrows():
        cells = []
        for column in columns:
            ratio = row[column] / means.loc["finetune", column] if has_baseline else math.nan
            cells.append(f"{row[column]:.3g}" + ("" if math.isnan(ratio) else f" ({ratio:.2f}×)"))
        rows.append([schedule, *cells])
    return [*lines, "", *markdown_table(["schedule", *blocks], rows)]


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
    ]
    from scipy.stats import gmean

    rows = []
    for schedule in order:
        boundaries = table[table["schedule"] == schedule]
        means = boundaries[columns].apply(lambda r: float(gmean(r.dropna())) if r.notna().any() else math.nan)
        cells = ["–" if math.isnan(means[c]) else f"{means[c]:.2f}×" for c in columns]
        rows.append([schedule, len(boundaries), *cells])
    return [*lines, "", *markdown_table(["schedule", "boundaries", *blocks], rows)]


def drift_table(study: Study) -> list[str]:
    """Each block's relative distance from its pre-trained weights at the end of every period.

    The paper's premise is that ordinary fine-tuning barely moves the low blocks; a rollback keeps
    them training while the high blocks restart from their pre-trained weights.
    """
    curves = best_curves(study)
    columns = [c for c in curves.columns if c.startswith("drift_")]
    if curves.empty or not columns or "period" not in curves:
        return ["No distances from the pre-trained weights reported yet (runs before this metric existed)."]
    ends = period_end_rows(curves)
    stats = ends.groupby(["schedule", "epoch"])[columns].agg(["mean", "std", "count"])
    order = [s for s in study.best_per_schedule()["schedule"] if s in set(ends["schedule"])]
    blocks = [c.removeprefix("drift_") for c in columns]
    lines = [
        "‖θ − θ⁰‖ / ‖θ⁰‖ of each block's parameters against its pre-trained weights, in %, at the "
        "end of each period (mean ± sample std over the n seeds).",
    ]
    rows = []
    for schedule in order:
        for epoch in sorted(e for s, e in stats.index if s == schedule):
            row = stats.loc[(schedule, epoch)]
            n = int(row[(columns[0], "count")])
            cells = [
                pm(row[(c, "mean")], row[(c, "std")]) if n > 1 else percent(row[(c, "mean")]) for c in columns
            ]
            rows.append([schedule, epoch, n, *cells])
    decay_share = decay_share_table(study, curves, blocks, order)
    table = [*lines, "", *markdown_table(["schedule", "epoch", "n", *blocks], rows)]
    return table + (["", *decay_share] if decay_share else [])


def decay_share_table(study: Study, curves: pd.DataFrame, blocks: list[str], order: list[str]) -> list[str]:
    """Each block's summed learning rate since it last started from its pre-trained weights, and the
    drift weight decay alone would give it at that rate.

    SGD's weight decay shrinks every weight by lr · wd / (1 − momentum) per step (with momentum, in
    steady state), so θ shrinks to exp(−wd / (1 − momentum) · Σ lr) of θ⁰ even where the loss moves
    nothing: a relative drift of 1 − exp(...) that says nothing about what the block learnt. Steps per
    epoch are the images an epoch trained (seconds × images per second) over the batch size; frozen
    epochs count no rate, a reset (rollback) starts the sum again.
    """
    train = study.saved.get("train") or {}
    decay, momentum, batch = (
        train.get("weight_decay", 5e-4),
        train.get("momentum", 0.9),
        train.get("batch_size"),
    )
    configs = rebuilt_configs(study)
    if not decay or not batch or configs is None or not {"seconds", "images_per_second"} <= set(curves):
        return []
    rows = []
    for schedule in order:
        runs = curves[curves["schedule"] == schedule]
        summed = {block: [] for block in blocks}
        for trial_id, trial in runs.groupby("trial_id"):
            plan = configs[trial_id].built_schedule.plan()
            steps = dict(
                zip(trial["epoch"], trial["seconds"] * trial["images_per_second"] / batch, strict=True)
            )
            for block in blocks:
                start = max((step.epoch for step in plan if block in step.resets), default=1)
                rates = [(step.epoch, step.lr[block]) for step in plan if step.epoch >= start]
                training = [(e, lr) for e, lr in rates if e in steps and block not in plan[e - 1].frozen]
                summed[block].append(
                    (sum(lr for _, lr in training), sum(lr * steps[e] for e, lr in training))
                )
        cells = []
        for block in blocks:
            epochs = float(np.mean([e for e, _ in summed[block]]))
            shrink = 1 - math.exp(-decay / (1 - momentum) * float(np.mean([s for _, s in summed[block]])))
            cells.append(f"{epochs:.3g} / {shrink * 100:.1f}")
        rows.append([schedule, int(runs["epoch"].max()), *cells])
    return [
        "Each block's summed learning rate (Σ lr · epochs since its last rollback, frozen epochs left out) / "
        f"the distance in % that weight decay alone gives at that rate, 1 − exp(−wd / (1 − momentum) · Σ lr "
        f"· steps) with wd {decay:g} and momentum {momentum:g}: a distance near it needs no learning, and "
        "does not show that the block left its pre-trained function.",
        "",
        *markdown_table(["schedule", "last epoch", *blocks], rows),
    ]

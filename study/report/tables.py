"""The report's sections on the schedules' results, as markdown lines: the verdict, the pairs, the
schedules, fine-tuning against the others, the best configuration, parameter importance and the
final retraining on the test protocol."""

from __future__ import annotations

import contextlib
import importlib.util
import math
from pathlib import Path
from typing import Any

import pandas as pd

from study.report.chance import NEAR_CHANCE, near_chance
from study.report.formatting import is_missing, markdown_table, pm, shown_value, status_counts
from study.report.loading import Study
from study.report.statistics import (
    compared_values,
    comparisons,
    p_value,
    paired_comparison,
    pairing_call,
    rebuilt_configs,
    seed_trials,
    trial_pair,
    unfinished_trials,
)


def schedules_table(study: Study) -> list[str]:
    """Markdown table: each schedule's best configuration, mean ± std over seeds of best mAP and rank-1."""
    best = study.best_per_schedule()
    trials = study.results.groupby("schedule").size()
    configs = study.configurations().groupby("schedule").size()
    p = study.prefix
    header = ["schedule", f"best {p} mAP", f"best {p} rank-1", f"final {p} mAP"]
    header += ["seeds", "epochs", "configurations", "trials", "status"]
    rows = [
        [
            row["schedule"],
            pm(row["mAP_mean"], row["mAP_std"]),
            pm(row["rank1_mean"], row["rank1_std"]),
            pm(row["final_mean"], row["final_std"]),
            row["seeds"],
            f"{row['epochs']:g}",
            configs[row["schedule"]],
            trials[row["schedule"]],
            status_counts(study.results.loc[study.results["schedule"] == row["schedule"], "status"]),
        ]
        for _, row in best.iterrows()
    ]
    return markdown_table(header, rows)


def verdict(study: Study) -> list[str]:
    """Each schedule against the baseline in words, decided by the paired per-seed difference's 95 % CI."""
    baseline, found = comparisons(study)
    if not found and not unfinished_trials(study).empty:
        return ["No verdict yet: no schedule's runs and the baseline's have evaluated a common epoch yet."]
    if not found:
        return ["No verdict yet: no schedule has a final evaluation on a seed the baseline also has."]
    metric = f"final {study.metric}"
    lines = [
        f"Each schedule's {metric} (its last evaluation, no selection) minus `{baseline}`'s on the same "
        "seed; the mean difference in points, with its 95 % t-interval over the seeds. *No detectable "
        "difference*: the interval contains 0 (with few seeds only large gaps can be told apart from seed "
        "noise); *better*/*worse*: it lies wholly above/below 0.",
        "",
    ]
    for c in found:
        gap = c.differences.mean() * 100
        name = f"**{c.schedule}**" + ("" if c.epoch is None else f" (*interim, at epoch {c.epoch}*)")
        if c.seeds < 2:
            detail = f"{gap:+.2f} points on 1 seed; one seed gives no interval, so no call can be made"
            lines.append(f"- {name}: {detail}; {pairing_call(list(c.pairs))}.")
            continue
        words = c.call if c.call == "no detectable difference" else f"{c.call} than {baseline}"
        lines.append(
            f"- {name}: {words}: {gap:+.2f} points (95 % CI {c.low * 100:+.2f} to "
            f"{c.high * 100:+.2f}; {c.seeds} seeds, better on {int((c.differences > 0).sum())}); "
            f"{pairing_call(list(c.pairs))}."
        )
    return lines


def pairs_section(study: Study) -> list[str]:
    """Every two schedules' best configurations whose runs of one seed share leading epochs by
    construction (e.g. ``base_cy`` and ``incremental_rollback``: period 1), and whether their numbers do."""
    configs = rebuilt_configs(study)
    if configs is None:
        return ["Not checked: the study's settings no longer build its trials' run configs."]
    best = list(study.best_per_schedule().iterrows())
    found = []
    for i, (_, first) in enumerate(best):
        for _, second in best[i + 1 :]:
            trials_a, trials_b = seed_trials(study, first), seed_trials(study, second)
            for seed in sorted(set(trials_a) & set(trials_b)):
                pair = trial_pair(study, trials_a[seed], trials_b[seed], configs)
                if pair.shared:
                    found.append(pair)
    if not found:
        return ["No two schedules' runs share leading epochs by construction."]
    exact = sum(p.exact for p in found)
    lines = [
        f"Runs of one seed whose schedules plan the same first epochs compute the same numbers through them "
        f"when they ran alike; {exact} of {len(found)} such pairs do.",
        "",
    ]
    header = [
        "schedules",
        "seed",
        "planned alike through epoch",
        "trained once through",
        "numbers",
        "environment",
    ]
    rows = [
        [
            " / ".join(p.schedules),
            p.seed,
            p.shared,
            p.trained_once or "–",
            p.describe(),
            ", ".join(p.environment) or "same",
        ]
        for p in found
    ]
    return lines + markdown_table(header, rows)


def against_finetune(study: Study) -> list[str]:
    """Each schedule's final mAP minus fine-tuning's (best configurations), with Welch's t-test over seeds.

    The final (last) evaluation is compared, not the best one, so no schedule gains from a selection
    on the evaluation set; seeds are paired by their number for the per-seed count.
    """
    best = study.best_per_schedule()
    final = f"final_{study.prefix}_mAP"
    if "finetune" not in set(best["schedule"]) or final not in study.results:
        return ["No comparison: the study has no `finetune` trials."]
    finetune = best[best["schedule"] == "finetune"].iloc[0]
    lines = [
        f"Final {study.metric} (the last evaluation of each run) minus `finetune`'s, in points; p: Welch's "
        "two-sided t-test over the seeds (with a few seeds only a large, consistent gap stands out of the "
        "seed noise); seeds better: the seeds whose run beats `finetune`'s run of the same seed.",
    ]
    rows, interim = [], False
    for _, row in best.iterrows():
        if row["schedule"] == "finetune":
            continue
        values, baseline, epoch = compared_values(study, row, finetune)
        if values.empty or baseline.empty:
            continue
        interim |= epoch is not None
        common = values.index.intersection(baseline.index)
        better = int((values[common] > baseline[common]).sum())
        gap = (values.mean() - baseline.mean()) * 100
        rows.append(
            [
                row["schedule"] + ("" if epoch is None else f" (*interim, at epoch {epoch}*)"),
                pm(values.mean(), values.std(ddof=1)),
                f"{gap:+.2f}",
                p_value(values, baseline),
                f"{better}/{len(common)}",
            ]
        )
    if not rows:
        return ["No schedule besides `finetune` has been evaluated yet."]
    if interim:
        lines[0] += " *Interim, at epoch N*: runs unfinished; both schedules' runs read at that epoch."
    header = ["schedule", f"final {study.prefix} mAP", "Δ vs finetune", "p", "seeds better"]
    return [*lines, "", *markdown_table(header, rows)]


def best_configuration(study: Study) -> list[str]:
    """The configuration with the highest mean best mAP, its values and how to train it again."""
    best = study.best_per_schedule()
    if best.empty or pd.isna(best.iloc[0]["mAP_mean"]):
        return ["No trial has been validated yet."]
    row = best.iloc[0]
    scores = (
        f"best {study.metric} {pm(row['mAP_mean'], row['mAP_std'])}, "
        f"rank-1 {pm(row['rank1_mean'], row['rank1_std'])} over {row['seeds']} seed(s)"
    )
    if near_chance(study):
        first = (
            f"None: every configuration is at chance level (under {NEAR_CHANCE:g} × a random ranking's "
            f"{study.metric}). The highest, for the record, `{row['schedule']}`: {scores}."
        )
    else:
        first = f"**{row['schedule']}**: {scores}."
    lines = [first, ""]
    lines += [f"- `{key}`: {shown_value(row[key])}" for key in study.keys if not is_missing(row[key])]
    final = f", or on the test protocol with `python -m study.report {study.folder} --final`"
    lines += [
        "",
        f"Trials: {', '.join(row['trial_ids'])}. Train it again with "
        f"`{study.retrain_command(row['trial_ids'][0])}`{final if study.prefix == 'val' else ''}.",
    ]
    return lines


def importance_section(study: Study) -> list[str]:
    """Optuna parameter importance (PED-ANOVA) over the completed configurations, or why there is none."""
    db = study.folder / "optuna.db"
    if study.pieces:
        return ["Not computed: the study was run in pieces, each with an Optuna study of its own."]
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
    # only what every trial has and not all share: a constant explains nothing, yet gets a share
    shared = set.intersection(*(set(t.params) for t in complete)) if complete else set()
    varying = sorted(k for k in shared if len({str(t.params[k]) for t in complete}) > 1)
    constant = sorted(shared - set(varying))
    if len(varying) < 2:
        same = f"; {', '.join(f'`{k}`' for k in constant)} took one value in every trial" if constant else ""
        return [
            f"Not computed: {len(varying)} parameter(s) varied over the {len(complete)} completed "
            f"configurations ({', '.join(f'`{k}`' for k in varying) or 'none'}){same}; importance "
            "shares the effect out among at least two parameters that vary."
        ]
    if len(complete) < 2 * len(varying) + 1:
        return [
            f"Not computed: needs at least 2 completed configurations per varying parameter, plus one "
            f"(has {len(complete)} for {len(varying)})."
        ]
    confounded = _confounded_with_schedule(complete, varying)
    if confounded:
        return [
            f"Not computed: {', '.join(f'`{k}`' for k in confounded)} took one value per schedule, so their "
            "effect cannot be told apart from the schedule's."
        ]
    with _quiet_warnings():
        try:
            importances = optuna.importance.get_param_importances(
                stored, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=varying
            )
        except (ValueError, RuntimeError) as error:
            return [f"Not computed: {error}"]
    lines = [
        f"PED-ANOVA over {len(complete)} completed configurations (Optuna trials, seeds averaged); "
        "parameters that only some schedules have, or that every trial shares, are left out"
        f"{'; rough with so few configurations' if len(complete) < 10 else ''}. "
        f"Open the study with `optuna-dashboard sqlite:///{db}`.",
        "",
        *markdown_table(
            ["parameter", "importance"], [[f"`{name}`", f"{v:.3f}"] for name, v in importances.items()]
        ),
    ]
    return lines


def _confounded_with_schedule(trials: list, varying: list[str]) -> list[str]:
    """Varying parameters that map one to one onto the schedules in these trials."""
    schedules = {str(t.params.get("schedule.name")) for t in trials}
    if "schedule.name" not in varying or len(schedules) < 2:
        return []
    found = []
    for key in varying:
        if key == "schedule.name":
            continue
        pairs = {(str(t.params.get("schedule.name")), str(t.params.get(key))) for t in trials}
        if len(pairs) == len(schedules) == len({str(t.params.get(key)) for t in trials}):
            found.append(key)
    return found


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


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
    rows = []
    for label, runs_of in runs.groupby("label", sort=False):
        seeds = zip(runs_of["seed"], runs_of["mAP"], strict=True)
        per_seed = ", ".join(
            f"diverged (seed {seed})" if (label, seed) in diverged else f"{mAP * 100:.2f} (seed {seed})"
            for seed, mAP in seeds
        )
        folders = ", ".join(sorted({str(Path(f).parent) for f in runs_of["folder"]}))
        mAP, rank1 = runs_of["mAP"], runs_of["rank1"]
        rows.append(
            [
                label,
                runs_of["schedule"].iloc[0],
                pm(mAP.mean(), mAP.std(ddof=1)),
                pm(rank1.mean(), rank1.std(ddof=1)),
                len(runs_of),
                per_seed,
                runs_of["epochs"].iloc[0],
                folders,
            ]
        )
    header = ["run", "schedule", "test mAP", "test rank-1", "seeds", "mAP per seed", "epochs", "folders"]
    lines = [
        *markdown_table(header, rows),
        "",
        "Values of the final model (no selection on the test set); mean ± std over seeds, in %.",
    ]
    if diverged:
        lines.append(f"{len(diverged)} run(s) diverged; means and tests are over the runs that did not.")
    means = runs.groupby("label", sort=False)["mAP"].mean()
    if {"best", "finetune"} <= set(means.index) and means[["best", "finetune"]].notna().all():
        gap = (means["best"] - means["finetune"]) * 100
        spread = runs[runs["label"] == "finetune"]["mAP"].std(ddof=1) * 100
        by_label = {label: of["mAP"].dropna() for label, of in runs.set_index("seed").groupby("label")}
        p = p_value(by_label["best"], by_label["finetune"])
        lines.append(
            f"The best configuration minus fine-tuning: {gap:+.2f} mAP points "
            f"(fine-tuning's std over seeds: {spread:.2f}; Welch's t-test p = {p})."
        )
    rollback = "rollback" if "rollback" in set(means.index) else "best"
    by_seed = runs.pivot_table(index="seed", columns="label", values="mAP")  # runs that did not diverge
    if {"control", rollback} <= set(by_seed.columns):
        compared = paired_comparison(rollback, by_seed[rollback].dropna(), by_seed["control"].dropna())
        per_seed = ", ".join(f"{d * 100:+.2f} (seed {seed})" for seed, d in compared.differences.items())
        interval = (
            f"; 95 % CI {compared.low * 100:+.2f} to {compared.high * 100:+.2f}" if compared.seeds > 1 else ""
        )
        lines.append(
            f"The rollback minus its control (`base_cy` at the rollback's values, the same seed): "
            f"{compared.differences.mean() * 100:+.2f} mAP points ({per_seed}{interval})"
            + _trained_once_note(final, rollback, "control")
            + "."
        )
    return lines


def _trained_once_note(final: list[dict[str, Any]], a: str, b: str) -> str:
    """``; epochs 1-k trained once for both on every seed`` where runs ``a`` and ``b`` of each seed
    shared their prefix (one took it from the other); else nothing."""
    runs = {(run["label"], run["seed"]): run for run in final}
    shared = []
    for (label, seed), run in runs.items():
        other = runs.get((b, seed)) if label == a else None
        if other is None:
            continue
        taken = [(r, o) for r, o in ((run, other), (other, run)) if r.get("shared")]
        epochs = [
            r["shared"]["epochs"]
            for r, o in taken
            if r["shared"]["trained_by"] == f"{o['label']}-seed-{seed}"
        ]
        shared.append(max(epochs, default=0))
    if not shared or min(shared) == 0:
        return ""
    return (
        f"; epochs 1-{min(shared)} trained once for both on every seed, so the pairs are exact through them"
    )

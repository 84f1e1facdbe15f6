"""What a study's numbers can show: each schedule against the baseline, seed by seed, with the 95 %
t-interval of the mean difference (``comparisons``); which runs of one seed are exactly paired
(``Pair``); the runs still training (``compared_values``: compared at one epoch); and the caveats the
study's own data raises."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from study.errors import UserError
from study.report.chance import chance_level
from study.report.formatting import is_missing, shown_value
from study.report.loading import SEED, Study, best_curves


def baseline_schedule(study: Study) -> str | None:
    """What every schedule is judged against: ``finetune``, else the study's first schedule."""
    present = set(study.results["schedule"])
    if "finetune" in present:
        return "finetune"
    listed = [s for s in (study.saved.get("search") or {}).get("schedules", []) if s in present]
    return listed[0] if listed else (study.results["schedule"].iloc[0] if len(study.results) else None)


def final_per_seed(study: Study, row: pd.Series) -> pd.Series:
    """The final metric of each seed's run of one configuration (its last evaluation), by seed."""
    final = f"final_{study.prefix}_mAP"
    results = study.results.set_index("trial_id")
    if final not in results:
        return pd.Series(dtype=float)
    trials = results.loc[row["trial_ids"]].dropna(subset=[final])
    return trials.groupby(SEED)[final].mean()


@dataclass(frozen=True)
class Pair:
    """Two trials of one seed, and how far they are shown to be the same computation."""

    schedules: tuple[str, str]
    seed: int
    shared: int | None  # leading epochs the same by construction (0: none); None: configs not rebuilt
    differs_at: int | None  # the first of the shared epochs whose recorded numbers differ
    environment: list[str]  # the pairing keys that differ (threads, CPU, ...), or ["not recorded"]
    trained_once: int = 0  # leading epochs one computation for both (a shared prefix, study.prefixes)

    @property
    def exact(self) -> bool:
        """Identical numbers through every epoch the two runs share by construction."""
        return bool(self.shared) and self.differs_at is None

    @property
    def paired(self) -> bool:
        if self.shared and self.differs_at is not None:
            return False
        return self.exact or not self.environment

    def describe(self) -> str:
        if self.shared and self.differs_at is not None:
            differs, shared = self.differs_at, self.shared
            return f"not paired: numbers differ from epoch {differs} (planned alike through {shared})"
        if self.exact and self.trained_once:
            once, shared = self.trained_once, self.shared
            return f"exactly paired: epochs 1-{once} trained once for both, identical through {shared}"
        if self.exact:
            return f"exactly paired: identical through epoch {self.shared}"
        if self.environment == ["not recorded"]:
            return "unverified: no environment recorded"
        if self.environment:
            return "seed-matched, not paired: " + ", ".join(self.environment)
        return "paired: same seed and environment"


def trial_pair(study: Study, a: str, b: str, configs: dict[str, Any] | None) -> Pair:
    """How trials ``a`` and ``b`` (one seed) pair up; ``configs``: ``Study.trial_configs()`` or None."""
    from study.pairing import environment_differences, first_difference, shared_epochs

    results = study.results.set_index("trial_id")
    row_a, row_b = results.loc[a], results.loc[b]
    shared = shared_epochs(configs[a], configs[b]) if configs else None
    differs_at = None
    if shared and not study.epochs.empty:
        rows = {t: study.epochs[study.epochs["trial_id"] == t].to_dict("records") for t in (a, b)}
        differs_at = first_difference(rows[a], rows[b], through=shared)
    return Pair(
        (row_a["schedule"], row_b["schedule"]),
        int(row_a[SEED]),
        shared,
        differs_at,
        environment_differences(row_a.to_dict(), row_b.to_dict()),
        trained_once(a, row_a, b, row_b),
    )


def trained_once(a: str, row_a: pd.Series, b: str, row_b: pd.Series) -> int:
    """The leading epochs trials ``a`` and ``b`` computed once: one took them from the other, or both
    from a third (results.csv's ``shared_epochs``, ``shared_with``)."""

    def taken(row: pd.Series) -> tuple[str, int]:
        source, epochs = row.get("shared_with"), row.get("shared_epochs")
        if not isinstance(source, str) or not source or pd.isna(epochs):
            return "", 0
        return source, int(epochs)

    (source_a, epochs_a), (source_b, epochs_b) = taken(row_a), taken(row_b)
    if source_b == a:
        return epochs_b
    if source_a == b:
        return epochs_a
    return min(epochs_a, epochs_b) if source_a and source_a == source_b else 0


def rebuilt_configs(study: Study) -> dict[str, Any] | None:
    """Each trial's run config, or None where the study's settings no longer build (a report still runs)."""
    try:
        return study.trial_configs()
    except (UserError, ValueError, KeyError):
        return None


def seed_trials(study: Study, row: pd.Series) -> dict[int, str]:
    """The trial of each seed of one configuration (a ``configurations()`` row)."""
    results = study.results.set_index("trial_id").loc[row["trial_ids"]]
    return {int(seed): trial_id for trial_id, seed in results[SEED].items()}


def pairing_call(pairs: list[Pair]) -> str:
    """One comparison's pairs in words: exactly paired, paired, unverified, or which seeds are not paired."""
    if pairs and all(p.exact for p in pairs):
        return f"exactly paired (identical through epoch {min(p.shared for p in pairs)} on every seed)"
    if pairs and all(p.paired for p in pairs):
        return "paired (same seeds, same environment)"
    if not pairs or all(p.describe().startswith("unverified") for p in pairs):
        return "pairing unverified: no environment recorded"
    unpaired = [f"seed {p.seed}: {p.describe().split(': ', 1)[1]}" for p in pairs if not p.paired]
    return "not exactly paired: " + "; ".join(unpaired)


@dataclass(frozen=True)
class Comparison:
    """One schedule against the baseline: the per-seed differences of the final metric and their 95 % CI."""

    schedule: str
    differences: pd.Series  # by seed, in metric units (not %)
    low: float
    high: float
    pairs: tuple[Pair, ...] = ()  # the seeds' trial pairs behind the differences
    epoch: int | None = None  # where runs are unfinished: the one epoch all were compared at; None: final

    @property
    def seeds(self) -> int:
        return len(self.differences)

    @property
    def call(self) -> str:
        if self.seeds < 2:
            return "no call can be made"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no detectable difference"


def paired_comparison(schedule: str, values: pd.Series, baseline: pd.Series) -> Comparison:
    """Differences of the seeds both have, with the t-interval of their mean (95 %, n - 1 degrees of freedom).

    >>> paired_comparison("x", pd.Series([0.30, 0.50, 0.40]), pd.Series([0.20, 0.41, 0.30])).call
    'better'
    """
    common = values.index.intersection(baseline.index)
    differences = values[common] - baseline[common]
    n = len(differences)
    mean = float(differences.mean()) if n else math.nan
    if n < 2:
        return Comparison(schedule, differences, mean, mean)
    from scipy.stats import t

    half = float(t.ppf(0.975, n - 1) * differences.std(ddof=1) / math.sqrt(n))
    return Comparison(schedule, differences, mean - half, mean + half)


def comparisons(study: Study) -> tuple[str | None, list[Comparison]]:
    """The baseline, and every other schedule's best configuration compared with its best, paired by seed
    (at one common epoch where runs are unfinished: ``compared_values``)."""
    baseline = baseline_schedule(study)
    best = study.best_per_schedule()
    if baseline is None or baseline not in set(best["schedule"]):
        return baseline, []
    reference_row = best[best["schedule"] == baseline].iloc[0]
    reference_trials = seed_trials(study, reference_row)
    configs = rebuilt_configs(study)
    found = []
    for _, row in best.iterrows():
        if row["schedule"] != baseline:
            values, reference, epoch = compared_values(study, row, reference_row)
            compared = paired_comparison(row["schedule"], values, reference)
            trials = seed_trials(study, row)
            seeds = compared.differences.index
            pairs = tuple(trial_pair(study, trials[s], reference_trials[s], configs) for s in seeds)
            if compared.seeds:
                found.append(dataclasses.replace(compared, pairs=pairs, epoch=epoch))
    return baseline, found


# Ray's states of a trial that has not ended, and a stopped sweep's (``--resume`` continues it); a trial
# that ASHA stopped has ended ("stopped"): its last evaluation is final.
UNFINISHED = ("running", "pending", "paused", "interrupted")


def unfinished_trials(study: Study) -> pd.DataFrame:
    """The results.csv rows of the trials still to train on."""
    return study.results[study.results["status"].isin(UNFINISHED)]


def compared_values(
    study: Study, row: pd.Series, reference_row: pd.Series
) -> tuple[pd.Series, pd.Series, int | None]:
    """Two configurations' metric by seed, and the epoch they were read at (None: their final metric).

    Where all their runs have ended, each run's final metric. Where one is unfinished, a final metric
    would set a run half-way through against one at its end: every seed both have is read at one
    epoch, the latest that all of these runs evaluated (seeds a run of which has no evaluation yet
    are left out); no such epoch: nothing to compare.
    """
    values, reference = final_per_seed(study, row), final_per_seed(study, reference_row)
    trials, reference_trials = seed_trials(study, row), seed_trials(study, reference_row)
    seeds = sorted(set(trials) & set(reference_trials))
    unfinished = set(unfinished_trials(study)["trial_id"])
    if not unfinished & {t for s in seeds for t in (trials[s], reference_trials[s])} or study.epochs.empty:
        return values, reference, None
    evaluated = (
        study.epochs.dropna(subset=[study.metric]) if study.metric in study.epochs else study.epochs[:0]
    )
    epochs = {t: set(rows["epoch"]) for t, rows in evaluated.groupby("trial_id")}
    seeds = [s for s in seeds if epochs.get(trials[s]) and epochs.get(reference_trials[s])]
    common = (
        set.intersection(*(epochs[t] for s in seeds for t in (trials[s], reference_trials[s])))
        if seeds
        else set()
    )
    if not common:
        return pd.Series(dtype=float), pd.Series(dtype=float), None
    epoch = int(max(common))
    at_epoch = evaluated[evaluated["epoch"] == epoch].groupby("trial_id")[study.metric].mean()

    def by_seed(chosen: dict[int, str]) -> pd.Series:
        return pd.Series({s: at_epoch[chosen[s]] for s in seeds}, dtype=float)

    return by_seed(trials), by_seed(reference_trials), epoch


def unfinished_note(study: Study) -> str | None:
    """A warning for the top of the report where trials are still to train on: which, and how the
    verdict compares them; None where every trial has ended."""
    unfinished = unfinished_trials(study)
    if unfinished.empty:
        return None
    trials = ", ".join(
        f"{row['trial_id']} ({row['schedule']}, seed {row[SEED]}, {row['status']}, "
        f"{0 if pd.isna(row.get('epochs')) else int(row['epochs'])} epochs done)"
        for _, row in unfinished.iterrows()
    )
    return (
        f"**Study still running: {len(unfinished)} of {len(study.results)} trials unfinished**: {trials}. "
        "A comparison that involves them reads every seed of both schedules at one epoch, the latest that "
        "all their runs evaluated (marked *interim, at epoch N*), not at the runs' ends; the ranking by "
        "best metric counts their evaluations so far."
    )


def p_value(a: pd.Series, b: pd.Series) -> str:
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return "–"
    from scipy.stats import ttest_ind

    return f"{ttest_ind(a, b, equal_var=False).pvalue:.3f}"


def caveats(study: Study) -> list[str]:
    """What the comparison cannot show, as far as the study's own data tells."""
    found = [
        *_confounded_hyperparameters(study),
        *_not_converged(study),
        *_chance_level(study),
        *_mixed_environments(study),
    ]
    return found or ["None found."]


def _mixed_environments(study: Study) -> list[str]:
    """Trials that ran with different thread counts, processors or torch builds: their seeds cannot match."""
    from study.provenance import PAIRING_KEYS

    if "threads" not in study.results or study.results["threads"].isna().all():
        return [
            "- No trial recorded its environment (threads, CPU model, torch version): runs of one seed are "
            "shown paired only where their numbers agree over the epochs they share (see Pairs)."
        ]
    found = []
    for key in PAIRING_KEYS:
        values = study.results.get(key, pd.Series(dtype=object)).astype(object).fillna("–").astype(str)
        if values.nunique() > 1:
            counts = ", ".join(
                f"{value} ({n} trials)" for value, n in values.value_counts(sort=False).items()
            )
            found.append(f"`{key}` {counts}")
    if not found:
        return []
    return [
        "- The trials ran in different environments: "
        + "; ".join(found)
        + ". Runs of one seed across them compute different numbers; such comparisons are seed-matched, "
        "not paired (see Pairs). Run all pieces of a study with one `train.threads`, on one kind of machine."
    ]


def _confounded_hyperparameters(study: Study) -> list[str]:
    best = study.best_per_schedule()
    differing = []
    for key in study.keys:
        values = {row["schedule"]: row[key] for _, row in best.iterrows() if not is_missing(row[key])}
        if len(values) > 1 and len({shown_value(v) for v in values.values()}) > 1:
            shown = ", ".join(f"{s} {shown_value(v)}" for s, v in values.items())
            differing.append(f"`{key}` ({shown})")
    if not differing:
        return []
    if (study.saved.get("tune") or {}).get("sampler") == "grid":
        why = "Each schedule ran every point of its grid: these are each one's best, not one shared setting."
    else:
        why = "Schedule and these values are confounded; `search.paired: true` runs every schedule at the "
        why += "same sampled values."
    return [
        "- The schedules were compared at different hyperparameters: " + "; ".join(differing) + ". " + why
    ]


def _not_converged(study: Study, last: int = 2) -> list[str]:
    """Schedules whose metric still rose over their last evaluations (mean curve over seeds)."""
    curves = best_curves(study)
    metric = study.metric
    if curves.empty or metric not in curves:
        return []
    rising = []
    for schedule, rows in curves.dropna(subset=[metric]).groupby("schedule", sort=False):
        mean = rows.groupby("epoch")[metric].mean().sort_index()
        if len(mean) <= last:
            continue
        rise = (mean.iloc[-1] - mean.iloc[-1 - last]) * 100
        if rise > 0:
            rising.append(f"{schedule} +{rise:.2f} (epoch {mean.index[-1 - last]} → {mean.index[-1]})")
    if not rising:
        return []
    return [
        f"- Not converged: {metric} still rose over the last {last} evaluations of "
        + ", ".join(rising)
        + " points (mean over seeds). The comparison holds for this budget only."
    ]


def _chance_level(study: Study) -> list[str]:
    """Expected mAP and rank-1 of a random ranking of the evaluation split."""
    try:
        chance = chance_level(study)
    except (UserError, OSError, ValueError, KeyError) as error:
        return [f"- Chance level not computed: the evaluation split could not be read ({error})."]
    if chance is None:
        return []
    queries, gallery, mAP, rank1 = chance
    return [
        f"- Chance level of this evaluation split ({queries} queries, {gallery} gallery images): a random "
        f"ranking scores {mAP * 100:.2f} % mAP and {rank1 * 100:.2f} % rank-1 in expectation."
    ]

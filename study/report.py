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
or several studies) to FILE, with plots in a folder named after FILE beside it. Folders of the same
study name are the pieces of one study (run on several machines or days, each with some of its
schedules or seeds: ``merge_pieces``) and are reported as one; ``--final`` then trains into the first.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study.config import read_yaml
from study.errors import UserError, cli, description
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
    pieces: tuple[Path, ...] = ()  # the folders of a study run in pieces (merge_pieces), else empty

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
                    "mAP_std": trials[best_map].std(ddof=1),
                    "rank1_mean": trials[best_rank1].mean(),
                    "rank1_std": trials[best_rank1].std(ddof=1),
                    "final_mean": trials[final_map].mean(),
                    "final_std": trials[final_map].std(ddof=1),
                    "epochs": trials["epochs"].mean(),
                    "statuses": _counts(trials["status"]),
                }
            )
        return pd.DataFrame(rows)

    def piece_folder(self, trial_id: str) -> Path:
        """The study folder a trial ran in: its own piece's when the study was run in pieces."""
        return Path(self.results.set_index("trial_id").loc[trial_id, "piece"]) if self.pieces else self.folder

    def trial_folder(self, trial_id: str) -> Path:
        """A trial's run folder (in its own piece's folder when the study was run in pieces)."""
        row = self.results.set_index("trial_id").loc[trial_id]
        return self.piece_folder(trial_id) / row.get("run_dir", f"trials/{trial_id}")

    def retrain_command(self, trial_id: str) -> str:
        """The command that trains a trial again: from its config.yaml, or, where its trials/ folder was
        not kept (pieces committed as tables), from the study.yaml it ran from with its schedule, values
        and seed set, which builds the same run config."""
        config = self.trial_folder(trial_id) / "config.yaml"
        if config.exists():
            return f"python -m study.train {config} --out DIR"
        row = self.results.set_index("trial_id").loc[trial_id]
        variants = (self.saved.get("search") or {}).get("variants") or {}
        schedule = variants.get(row["schedule"], {"name": row["schedule"]})
        values = {
            **{f"schedule.{key}": value for key, value in schedule.items()},
            **{key: row[key] for key in self.keys if not _missing(row[key])},
            "train.seed": row[SEED],
        }
        sets = " ".join(f"--set {shlex.quote(f'{key}={_as_typed(value)}')}" for key, value in values.items())
        return f"python -m study.train {self.piece_folder(trial_id) / 'study.yaml'} {sets} --out DIR"

    def sampled(self, trial_id: str) -> dict[str, Any]:
        """A trial's schedule and searched values, as the sweep's searcher gave them (seed included)."""
        from study.search_space import SCHEDULE_KEY, SEED_KEY

        row = self.results.set_index("trial_id").loc[trial_id]
        values = {k: config_value(row[k]) for k in self.keys if not _missing(row[k])}
        return {SCHEDULE_KEY: row["schedule"], **values, SEED_KEY: int(row[SEED])}

    def trial_configs(self) -> dict[str, Any]:
        """Each trial's run config (a RunConfig), rebuilt from the study's settings as the sweep built it.

        Raises a UserError when the settings no longer build (e.g. a user's schedule is not importable).
        """
        from study.search_space import parse_search_space

        space = parse_search_space({k: v for k, v in self.saved.items() if k != "_name"}, self.name)
        return {trial_id: space.run_config(self.sampled(trial_id)) for trial_id in self.results["trial_id"]}

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


# Settings that pieces of one study may differ in: which of its trials they ran, how many ran at once
# on how much of the machine, and where this machine keeps the data.
PIECE_KEYS = {("search", "schedules"), ("search", "seeds"), ("search", "when"), ("tune", "num_samples")}
LOCAL_KEYS = {
    ("data", "root"),
    ("data", "cache_dir"),
    ("data", "synthetic_dir"),
    ("tune", "max_concurrent"),
    ("tune", "resources"),
}


def merge_pieces(studies: list[Study]) -> list[Study]:
    """Merge the folders of one study run in pieces (same search space, different schedules or seeds).

    A study too long for one machine or session runs as pieces, e.g. ``--set search.seeds=[0]
    --set 'search.schedules=[finetune,base_cy]' --set tune.num_samples=2`` into its own folder each;
    folders of the same study name are reported as one study. They must agree on every other
    setting, on the ``when`` entries they share, and hold no trial (schedule and seed) twice.
    """
    merged: dict[str, list[Study]] = {}
    for study in studies:
        merged.setdefault(study.name, []).append(study)
    return [group[0] if len(group) == 1 else _merge(group) for group in merged.values()]


def _merge(pieces: list[Study]) -> Study:
    first = pieces[0]
    for piece in pieces[1:]:
        for key in _differing_settings(first.saved, piece.saved):
            raise UserError(
                f"{first.folder} and {piece.folder} are pieces of study {first.name!r} but differ in "
                f"{'.'.join(key)}; report them separately (each its own --out) or run them alike"
            )
    results = pd.concat([p.results.assign(piece=str(p.folder)) for p in pieces], ignore_index=True)
    twice = results[results.duplicated(["schedule", SEED], keep=False)]
    if not twice.empty:
        row = twice.iloc[0]
        folders = " and ".join(
            twice[(twice["schedule"] == row["schedule"]) & (twice[SEED] == row[SEED])]["piece"]
        )
        raise UserError(f"{row['schedule']} seed {row[SEED]} was trained in {folders}: keep one of them")
    epochs = pd.concat([p.epochs for p in pieces], ignore_index=True)
    saved = _merged_settings([p.saved for p in pieces])
    keys = list(dict.fromkeys(k for p in pieces for k in p.keys))
    folders = tuple(p.folder for p in pieces)
    return Study(first.folder, first.name, saved, results, epochs, first.prefix, keys, folders)


def _differing_settings(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, ...]]:
    differing = []
    for section in sorted(set(a) | set(b)):
        left, right = a.get(section), b.get(section)
        if not (isinstance(left, dict) and isinstance(right, dict)):
            differing += [(section,)] if left != right else []
            continue
        for key in sorted(set(left) | set(right)):
            if (section, key) in PIECE_KEYS | LOCAL_KEYS or left.get(key) == right.get(key):
                continue
            differing.append((section, key))
    shared = set((a.get("search") or {}).get("when") or {}) & set((b.get("search") or {}).get("when") or {})
    differing += [
        ("search", "when", s) for s in sorted(shared) if a["search"]["when"][s] != b["search"]["when"][s]
    ]
    return differing


def _merged_settings(saved: list[dict[str, Any]]) -> dict[str, Any]:
    merged = copy.deepcopy(saved[0])
    search = merged.setdefault("search", {})
    search["schedules"] = list(dict.fromkeys(s for piece in saved for s in piece["search"]["schedules"]))
    search["seeds"] = sorted({seed for piece in saved for seed in piece["search"]["seeds"]})
    search["when"] = {k: v for piece in saved for k, v in ((piece["search"].get("when")) or {}).items()}
    tune = merged.setdefault("tune", {})
    if tune.get("sampler") == "grid":  # the whole grid: its size follows from the merged schedules
        tune.pop("num_samples", None)
    else:
        tune["num_samples"] = sum((piece.get("tune") or {}).get("num_samples", 1) for piece in saved)
    return merged


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
    return (
        f"{len(trials)} trials ({_counts(trials['status'])}) of {trials['schedule'].nunique()} schedules"
        f"{pieces}; ranked by best {study.metric} (the best of a run's evaluations; final: its last one); "
        "mean ± sample std over the seeds (n in the seeds column), in %."
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
            _pm(row["mAP_mean"], row["mAP_std"]),
            _pm(row["rank1_mean"], row["rank1_std"]),
            _pm(row["final_mean"], row["final_std"]),
            row["seeds"],
            f"{row['epochs']:g}",
            configs[row["schedule"]],
            trials[row["schedule"]],
            _counts(study.results.loc[study.results["schedule"] == row["schedule"], "status"]),
        ]
        for _, row in best.iterrows()
    ]
    return markdown_table(header, rows)


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table as lines: the header, its rule and one line per row.

    >>> markdown_table(["schedule", "mAP"], [["finetune", "19.58"]])
    ['| schedule | mAP |', '|---|---|', '| finetune | 19.58 |']
    """

    def line(cells: list[Any]) -> str:
        return f"| {' | '.join(map(str, cells))} |"

    return [line(header), "|" + "---|" * len(header), *map(line, rows)]


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
    """The baseline, and every other schedule's best configuration compared with its best, paired by seed."""
    baseline = baseline_schedule(study)
    best = study.best_per_schedule()
    if baseline is None or baseline not in set(best["schedule"]):
        return baseline, []
    reference_row = best[best["schedule"] == baseline].iloc[0]
    reference, reference_trials = final_per_seed(study, reference_row), seed_trials(study, reference_row)
    configs = rebuilt_configs(study)
    found = []
    for _, row in best.iterrows():
        if row["schedule"] != baseline:
            compared = paired_comparison(row["schedule"], final_per_seed(study, row), reference)
            trials = seed_trials(study, row)
            seeds = compared.differences.index
            pairs = tuple(trial_pair(study, trials[s], reference_trials[s], configs) for s in seeds)
            if compared.seeds:
                found.append(dataclasses.replace(compared, pairs=pairs))
    return baseline, found


def verdict(study: Study) -> list[str]:
    """Each schedule against the baseline in words, decided by the paired per-seed difference's 95 % CI."""
    baseline, found = comparisons(study)
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
        if c.seeds < 2:
            detail = f"{gap:+.2f} points on 1 seed; one seed gives no interval, so no call can be made"
            lines.append(f"- **{c.schedule}**: {detail}; {pairing_call(list(c.pairs))}.")
            continue
        words = c.call if c.call == "no detectable difference" else f"{c.call} than {baseline}"
        lines.append(
            f"- **{c.schedule}**: {words}: {gap:+.2f} points (95 % CI {c.low * 100:+.2f} to "
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
        values = {row["schedule"]: row[key] for _, row in best.iterrows() if not _missing(row[key])}
        if len(values) > 1 and len({_value(v) for v in values.values()}) > 1:
            shown = ", ".join(f"{s} {_value(v)}" for s, v in values.items())
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


def chance_level(study: Study) -> tuple[int, int, float, float] | None:
    """(queries, gallery images, expected mAP, expected rank-1) of a uniformly random ranking.

    Per query with m true matches among the N gallery images it is ranked against (junk removed
    as in the Market-1501 protocol), E[AP] = H_N / N + (m - 1) / (N - 1) · (1 - H_N / N) and
    P(rank-1 is a match) = m / N; both are averaged over the queries that have a match.
    """
    from study.config import config_from_dict
    from study.data import split_samples

    config = config_from_dict({k: v for k, v in study.saved.items() if k in ("model", "data", "train")})
    _, query, gallery = split_samples(config.data)
    g_pid = np.array([s.pid for s in gallery])
    g_cam = np.array([s.camid for s in gallery])
    aps, tops = [], []
    for sample in query:
        kept = (g_pid != -1) & ~((g_pid == sample.pid) & (g_cam == sample.camid))
        n = int(kept.sum())
        m = int((kept & (g_pid == sample.pid)).sum())
        if m == 0:
            continue
        aps.append(random_ranking_ap(n, m))
        tops.append(m / n)
    if not aps:
        return None
    return len(query), len(gallery), float(np.mean(aps)), float(np.mean(tops))


def random_ranking_ap(n: int, m: int) -> float:
    """Expected AP of a uniformly random ranking of n items, m of them true matches.

    The i-th match at rank r has the other m - 1 spread over the n - 1 other ranks, (r - 1)(m - 1)/(n - 1)
    of them before it in expectation: E[AP] = E[1/r] + (m - 1)/(n - 1) · (1 - E[1/r]), E[1/r] = H_n / n.

    >>> random_ranking_ap(1, 1)
    1.0
    """
    mean_inverse_rank = float(np.sum(1.0 / np.arange(1, n + 1))) / n
    return mean_inverse_rank + ((m - 1) / (n - 1) if n > 1 else 0.0) * (1 - mean_inverse_rank)


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
    ]
    rows = []
    for _, row in best.iterrows():
        if row["schedule"] == "finetune":
            continue
        values = per_seed(row)
        if values.empty or baseline.empty:
            continue
        common = values.index.intersection(baseline.index)
        better = int((values[common] > baseline[common]).sum())
        gap = (values.mean() - baseline.mean()) * 100
        rows.append(
            [
                row["schedule"],
                _pm(values.mean(), values.std(ddof=1)),
                f"{gap:+.2f}",
                _p_value(values, baseline),
                f"{better}/{len(common)}",
            ]
        )
    if not rows:
        return ["No schedule besides `finetune` has been evaluated yet."]
    header = ["schedule", f"final {study.prefix} mAP", "Δ vs finetune", "p", "seeds better"]
    return [*lines, "", *markdown_table(header, rows)]


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
    varying = sorted(
        {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
    )
    if len(complete) < 2 * len(varying) + 1 or not varying:
        return [
            f"Not computed: needs a varying parameter and at least 2 completed configurations per varying "
            f"parameter, plus one (has {len(complete)} for {len(varying)})."
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
                _pm(mAP.mean(), mAP.std(ddof=1)),
                _pm(rank1.mean(), rank1.std(ddof=1)),
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
        p = _p_value(by_label["best"], by_label["finetune"])
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
                _pm(stats.loc[(schedule, e), "mean"], stats.loc[(schedule, e), "std"])
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
            cells = [_pm(row[(c, "mean")], row[(c, "std")]) for c in columns if c != "accuracy"]
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
                _pm(row[(c, "mean")], row[(c, "std")]) if n > 1 else _percent(row[(c, "mean")])
                for c in columns
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


def _line_plot(rows: pd.DataFrame, column: str, scale: float, label: str, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _distinct_colors(ax, rows["schedule"].nunique())
    for schedule, group in rows.groupby("schedule", sort=False):
        stats = (group.groupby("epoch")[column].agg(["mean", "min", "max"]) * scale).reset_index()
        (line,) = ax.plot(stats["epoch"], stats["mean"], marker="o", markersize=3, label=schedule)
        ax.fill_between(stats["epoch"], stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
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


# ----------------------------------------------------------------------------- formatting


def _pm(mean: float, std: float) -> str:
    """``mean ± std`` in %; the mean alone when there is no spread to give (one seed)."""
    if _missing(mean):
        return "–"
    return f"{mean * 100:.2f}" if _missing(std) else f"{mean * 100:.2f} ± {std * 100:.2f}"


def _percent(value: Any) -> str:
    return "–" if _missing(value) else f"{value * 100:.2f}"


def _counts(statuses: pd.Series) -> str:
    return ", ".join(f"{n} {status}" for status, n in statuses.value_counts().items())


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def config_value(value: Any) -> Any:
    """A results.csv value as the type the config wants: whole floats that pandas made of ints become ints."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _as_typed(value: Any) -> str:
    """A results.csv value as ``--set`` reads it back: whole floats (an int column padded with NaN) as
    integers, other floats to the last digit."""
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(int(value)) if isinstance(value, np.integer) else str(value)


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=description(__doc__))
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
    for study in studies:
        print(f"{study.folder}: {len(study.results)} trials, {len(study.epochs)} epoch rows", flush=True)
    studies = merge_pieces(studies)
    for study in studies:
        if study.pieces:
            pieces = f"{len(study.pieces)} folders reported as one"
            print(f"study {study.name}: {pieces}, {len(study.results)} trials in all")
    reports = []
    for study in studies:
        final = None
        if args.final and study.prefix == "test":
            print(f"{study.folder} was evaluated on the test protocol already: --final retrains nothing")
        elif args.final:
            from study.final import retrain_final  # trains models: the report itself only reads

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

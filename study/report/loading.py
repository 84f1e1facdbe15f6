"""The study as read from disk: a study folder's settings and tables (``Study``, ``load_study``), and
the folders of one study run in pieces reported as one (``merge_pieces``)."""

from __future__ import annotations

import copy
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study.config import read_yaml
from study.errors import UserError
from study.report.formatting import is_missing, status_counts

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
                    "statuses": status_counts(trials["status"]),
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
            **{key: row[key] for key in self.keys if not is_missing(row[key])},
            "train.seed": row[SEED],
        }
        sets = " ".join(f"--set {shlex.quote(f'{key}={_as_typed(value)}')}" for key, value in values.items())
        return f"python -m study.train {self.piece_folder(trial_id) / 'study.yaml'} {sets} --out DIR"

    def sampled(self, trial_id: str) -> dict[str, Any]:
        """A trial's schedule and searched values, as the sweep's searcher gave them (seed included)."""
        from study.search_space import SCHEDULE_KEY, SEED_KEY

        row = self.results.set_index("trial_id").loc[trial_id]
        values = {k: config_value(row[k]) for k in self.keys if not is_missing(row[k])}
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


def best_curves(study: Study) -> pd.DataFrame:
    """Epoch rows of each schedule's best configuration (all its seeds), diverged epochs left out."""
    if study.epochs.empty:
        return study.epochs
    trials = {t: row["schedule"] for _, row in study.best_per_schedule().iterrows() for t in row["trial_ids"]}
    rows = study.epochs[study.epochs["trial_id"].isin(trials)]
    if "diverged" in rows:
        rows = rows[~rows["diverged"].astype(bool)]
    return rows


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

"""The study's tables: results.csv (one row per trial) and epochs.csv (one row per trial and epoch)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from study import run_folder
from study.files import atomic_write_csv
from study.prefixes import SHARING_KEYS
from study.provenance import ENVIRONMENT_KEYS
from study.search_space import (
    SCHEDULE_KEY,
    SEED_KEY,
    SearchSpace,
)
from study.sweep.location import InStudyFolder
from study.sweep.searcher import CONFIGURATION_KEY, trial_params

WRITE_EVERY_S = 10.0


class StudyRecorder(InStudyFolder, Callback):
    """Ray Tune callback that keeps every reported epoch and writes results.csv and epochs.csv.

    Its state is saved with Ray's experiment checkpoint, so ``--resume`` continues the same tables;
    epochs a restored trial repeats replace the earlier rows.
    """

    def __init__(self, out: Path, space: SearchSpace):
        self.out = Path(out)
        self.space = space
        self.epochs: dict[str, dict[int, dict[str, Any]]] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        self.ended: dict[str, str] = {}  # trial id -> TERMINATED or ERROR, from the hooks
        self.written = 0.0

    def get_state(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "configs": self.configs, "ended": self.ended}

    def set_state(self, state: dict[str, Any]) -> None:
        self.epochs, self.configs, self.ended = state["epochs"], state["configs"], state["ended"]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.pop(trial.trial_id, None)
        self.configs[trial.trial_id] = dict(trial.config)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = epoch_row(result, self.space.tune.metric)
        self.epochs.setdefault(trial.trial_id, {})[row["epoch"]] = row
        if time.monotonic() - self.written > WRITE_EVERY_S:
            self.write(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended[trial.trial_id] = "TERMINATED"
        self.write(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended[trial.trial_id] = "ERROR"
        self.write(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.write(trials)

    def write(self, trials: list) -> None:
        """Rewrite both tables atomically."""
        statuses = {}
        for trial in trials:
            self.configs.setdefault(trial.trial_id, dict(trial.config))
            statuses[trial.trial_id] = self.ended.get(trial.trial_id, trial.status)
        write_tables(self.out, self.space, self.configs, self.epochs, statuses)
        self.written = time.monotonic()


def epoch_row(result: dict[str, Any], metric: str) -> dict[str, Any]:
    """One epochs.csv row from a Tune result: the trainer's record, validation metrics where computed."""
    from ray.tune.result import AUTO_RESULT_KEYS

    dropped = {*AUTO_RESULT_KEYS, "trial_id", "done", "experiment_tag", "should_checkpoint"}
    row = {k: v for k, v in result.items() if k not in dropped and not k.startswith("best_")}
    if not row.get("validated"):
        prefix = metric.split("_")[0]
        row = {k: v for k, v in row.items() if not k.startswith(f"{prefix}_")}
    return row


def trial_status(ray_status: str, rows: list[dict[str, Any]]) -> str:
    """finished, stopped (by ASHA), diverged, error, or Ray's running/pending/paused."""
    if rows and rows[-1].get("diverged"):
        return "diverged"
    if ray_status == "ERROR":
        return "error"
    if ray_status == "TERMINATED":
        planned = rows[-1].get("epochs_planned") if rows else None
        return "finished" if planned is not None and len(rows) >= planned else "stopped"
    return ray_status.lower()


def write_tables(
    out: Path,
    space: SearchSpace,
    configs: dict[str, dict[str, Any]],
    epochs: dict[str, dict[int, dict[str, Any]]],
    statuses: dict[str, str],
) -> None:
    """Write results.csv (one row per trial) and epochs.csv (one row per trial and epoch)."""
    prefix = space.tune.metric.split("_")[0]
    keys = [k for k in space.searched_keys() if k != SCHEDULE_KEY]
    results, all_epochs = [], []
    for trial_id, config in configs.items():
        sampled = trial_params(config)
        schedule = sampled.get(SCHEDULE_KEY, space.schedules[0])
        rows = [epochs.get(trial_id, {})[e] for e in sorted(epochs.get(trial_id, {}))]
        who = {"trial_id": trial_id, "schedule": schedule, "seed": sampled[SEED_KEY]}
        # the environment and the shared prefix are a trial's, in results.csv; epochs.csv keeps the numbers
        trial_keys = (*ENVIRONMENT_KEYS, *SHARING_KEYS)
        all_epochs += [{**who, **{k: v for k, v in row.items() if k not in trial_keys}} for row in rows]
        status = trial_status(statuses.get(trial_id, "PENDING"), rows)
        results.append(
            {
                "trial_id": trial_id,
                "configuration": config.get(CONFIGURATION_KEY),
                "schedule": schedule,
                **{key: sampled.get(key) for key in keys},
                "seed": sampled[SEED_KEY],
                "status": status,
                **trial_summary(rows, prefix),
                "run_dir": f"trials/{trial_id}",
            }
        )
    atomic_write_csv(out / "results.csv", results)
    atomic_write_csv(out / "epochs.csv", all_epochs, _epoch_columns(all_epochs))


def trial_summary(rows: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """Epochs done, best and final validation mAP and rank-1 of one trial's epoch rows."""
    done = [r for r in rows if not r.get("diverged")]
    summary = run_folder.summary_of(done, prefix)
    return {
        "epochs": summary.pop("epochs"),
        "epochs_planned": rows[-1].get("epochs_planned") if rows else None,
        "periods_done": done[-1].get("periods_done") if done else 0,
        **summary,
        **{key: rows[-1].get(key) for key in SHARING_KEYS if rows},
    }


def _epoch_columns(rows: list[dict[str, Any]]) -> list[str]:
    first = ["trial_id", "schedule", "seed", "epoch", "period", "periods_done", "validated", "loss"]
    seen = list(dict.fromkeys(k for row in rows for k in row))
    return first + [k for k in seen if k not in first]

"""W&B logging from the driver: a Ray Tune callback with one run, and one thread, per trial."""

from __future__ import annotations

import math
import queue
import threading
from pathlib import Path
from typing import Any

from ray.tune import Callback

from study.config import config_from_dict
from study.search_space import (
    SCHEDULE_KEY,
    SearchSpace,
)
from study.sweep.location import InStudyFolder
from study.sweep.searcher import CONFIGURATION_KEY, trial_params

# Tune's bookkeeping, not the trial's measurements.
WANDB_SKIPPED = {
    "config",
    "trial_id",
    "experiment_tag",
    "done",
    "should_checkpoint",
    "node_ip",
    "pid",
    "hostname",
}


class StudyWandb(InStudyFolder, Callback):
    """W&B logging from the driver: one run per trial, grouped by study, tagged with its schedule.

    The run's config is the trial's whole run config (nested: W&B shows ``schedule.lr``,
    ``train.seed``, ``model.backbone``), with ``label`` (the schedule or variant compared),
    ``configuration`` and ``study``; every reported epoch is logged (``epoch``, ``period``,
    ``period_end`` mark the period boundaries), and each run's summary holds its last values and
    the best so far (``best_val_mAP``, ``best_epoch``). Each run has a thread of its own, so Tune's
    loop never waits on W&B, and the API key stays in this process's environment (Ray's own W&B
    logger hands it to an actor through a runtime environment, which Ray writes to its logs). Runs
    are in DIR/wandb.
    """

    def __init__(self, space: SearchSpace, out: Path, mode: str):
        self.space = space
        self.out = out
        self.mode = mode
        self.settings = config_from_dict(space.base).wandb
        self.runs: dict[str, WandbRun] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.runs:
            return
        sampled = trial_params(trial.config)
        schedule = sampled.get(SCHEDULE_KEY, self.space.schedules[0])
        # the whole run config (model, data, schedule, train), as W&B shows nested keys: schedule.lr
        config = {
            "label": schedule,  # the schedule or variant compared: group by it
            "configuration": trial.config.get(CONFIGURATION_KEY),
            "study": self.space.name,
            **self.space.run_config(sampled).to_dict(),
        }
        self.runs[trial.trial_id] = WandbRun(
            project=self.settings.project,
            entity=self.settings.entity,
            group=self.space.name,
            job_type="trial",
            id=trial.trial_id,
            name=f"{schedule}-{trial.trial_id}",
            tags=[schedule, *self.settings.tags],
            config=config,
            dir=str(self.out),
            mode=self.mode,
            resume="allow",
            settings={"console": "off", "silent": True, "x_disable_machine_info": True},
        )

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run = self.runs.get(trial.trial_id)
        if run is not None:
            run.log({k: v for k, v in result.items() if k not in WANDB_SKIPPED and _is_loggable(v)})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial.trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # An interrupted sweep stops its running trials without completing them: end their runs too.
        for trial_id in list(self.runs):
            self._finish(trial_id)

    def _finish(self, trial_id: str) -> None:
        run = self.runs.pop(trial_id, None)
        if run is not None:
            run.finish()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "runs": {}}  # saved with Tune's snapshot: open runs are not state


def _is_loggable(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) and not (
        isinstance(value, float) and math.isnan(value)
    )


class WandbRun:
    """One W&B run fed from a queue by a thread of its own: init, every logged dict, finish."""

    def __init__(self, **init: Any):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, args=(init,), daemon=True)
        self.thread.start()

    def log(self, data: dict[str, Any]) -> None:
        self.queue.put(data)

    def finish(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _run(self, init: dict[str, Any]) -> None:
        import wandb

        run = wandb.init(reinit="create_new", **init)
        try:
            while (data := self.queue.get()) is not None:
                run.log(data)
        finally:
            run.finish()

"""The sweep's console: one study-level progress line (a bar on a terminal) instead of Tune's table.

``study cuhk03_tuned: 3 finished, 2 running, 10 pending of 15 trials; 412 of 1345 epochs (31 %);
best val_mAP 23.41 % (#4 incremental_rollback); ETA 3 h 10 min``

Epochs count what the trials train: epochs a trial took from another's shared prefix are not
trained again, and the planned total of a grid already leaves them out. The ETA divides the epochs
left by the rate at which this session of the sweep has trained them (all trials together, waits
and evaluations included), so it follows the concurrency the cluster gives.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from study.search_space import SCHEDULE_KEY, SearchSpace
from study.sweep.searcher import CONFIGURATION_KEY
from study.trainer import duration

PRINT_EVERY_S = 60.0  # a line in a log file at most this often (and whenever a trial ends)


@dataclass
class TrialProgress:
    schedule: str
    configuration: int | None
    epoch: int = 0  # the last epoch reported
    shared: int = 0  # leading epochs taken from another trial, not trained by this one
    best: float | None = None
    ended: str | None = None  # finished or error, once the trial ends

    @property
    def trained(self) -> int:
        return max(0, self.epoch - self.shared)


class StudyProgress(Callback):
    """Ray Tune callback that shows how far the study is: trials, epochs, the best so far, an ETA."""

    def __init__(
        self, space: SearchSpace, planned_epochs: int, every_s: float = PRINT_EVERY_S, clock=time.monotonic
    ):
        self.space = space
        self.planned = planned_epochs
        self.every_s = every_s
        self.clock = clock
        self.trials: dict[str, TrialProgress] = {}
        self.start: tuple[float, int] | None = None  # (time, epochs trained) at this session's first result
        self.printed = -float("inf")
        self.bar: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "bar": None, "start": None, "printed": -float("inf")}

    def get_state(self) -> dict[str, Any]:
        return {"trials": self.trials}

    def set_state(self, state: dict[str, Any]) -> None:
        self.trials = state["trials"]

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        progress = self._trial(trial)
        progress.epoch = max(progress.epoch, result.get("epoch", 0))
        progress.shared = result.get("shared_epochs") or 0
        value = result.get(self.space.tune.metric) if result.get("validated") else None
        if value is not None and (progress.best is None or self._better(value, progress.best)):
            progress.best = value
        if self.start is None:
            self.start = (self.clock(), self.trained())  # the rate counts the epochs after this one
        self.show(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial(trial).ended = "finished"
        self.show(trials, now=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial(trial).ended = "error"
        self.show(trials, now=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.show(trials, now=True)
        if self.bar is not None:
            self.bar.close()

    def trained(self) -> int:
        return sum(t.trained for t in self.trials.values())

    def show(self, trials: list, now: bool = False) -> None:
        line = self.line(trials)
        if sys.stdout.isatty():
            self._bar(line)
        elif now or self.clock() - self.printed >= self.every_s:
            print(line, flush=True)
            self.printed = self.clock()

    def line(self, trials: list) -> str:
        """The progress line; ``trials``: Tune's trials (their statuses count the running ones)."""
        finished = sum(t.ended == "finished" for t in self.trials.values())
        errors = sum(t.ended == "error" for t in self.trials.values())
        ended = {trial_id for trial_id, t in self.trials.items() if t.ended}
        running = sum(t.status == "RUNNING" and t.trial_id not in ended for t in trials)
        pending = max(0, self.space.num_trials - finished - errors - running)
        counts = f"{finished} finished, {running} running, {pending} pending"
        counts += f", {errors} failed" if errors else ""
        trained = self.trained()
        share = f" ({100 * trained / self.planned:.0f} %)" if self.planned else ""
        line = f"study {self.space.name}: {counts} of {self.space.num_trials} trials; "
        line += f"{trained} of {self.planned} epochs{share}"
        best = self._best()
        if best is not None:
            number = f"#{best.configuration} " if best.configuration is not None else ""
            line += f"; best {self.space.tune.metric} {best.best * 100:.2f} % ({number}{best.schedule})"
        eta = self._eta(trained)
        return line + (f"; ETA {eta}" if eta else "")

    def _trial(self, trial: Any) -> TrialProgress:
        if trial.trial_id not in self.trials:
            config = trial.config
            schedule = config.get(SCHEDULE_KEY, self.space.schedules[0])
            self.trials[trial.trial_id] = TrialProgress(schedule, config.get(CONFIGURATION_KEY))
        return self.trials[trial.trial_id]

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.space.tune.mode == "max" else value < than

    def _best(self) -> TrialProgress | None:
        scored = [t for t in self.trials.values() if t.best is not None]
        if not scored:
            return None
        pick = max if self.space.tune.mode == "max" else min
        return pick(scored, key=lambda t: t.best)

    def _eta(self, trained: int) -> str | None:
        if self.start is None or trained <= self.start[1] or trained >= self.planned:
            return None
        rate = (trained - self.start[1]) / max(self.clock() - self.start[0], 1e-9)  # epochs per second
        return duration(max(0, self.planned - trained) / rate)

    def _bar(self, line: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=self.planned, unit="epoch", dynamic_ncols=True, desc=f"study {self.space.name}"
            )
        self.bar.n = min(self.trained(), self.planned)
        self.bar.set_postfix_str(line.split("; ", 1)[1] if "; " in line else "", refresh=True)

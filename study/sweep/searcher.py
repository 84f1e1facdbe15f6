"""Optuna's view of a study: the planned configurations (TPE's or a grid's), each once per seed, as a
Ray Tune searcher."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from study.search_space import (
    SCHEDULE_KEY,
    SEED_KEY,
    SearchSpace,
)
from study.sweep.location import InStudyFolder

CONFIGURATION_KEY = "__configuration__"  # in a Tune trial's config: the configuration it is a seed of


class Suggest:
    """Optuna define-by-run space: the schedule, then only the parameters that schedule has.

    Values Optuna suggests are recorded in its trial; fixed values are returned. A class, not a
    closure, because Ray pickles the searcher for ``--resume``.
    """

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        schedules = self.space.schedules
        if len(schedules) > 1:
            schedule = trial.suggest_categorical(SCHEDULE_KEY, list(schedules))
        else:
            schedule = schedules[0]
        for param in self.space.params_for(schedule):
            if not param.fixed:
                param.suggest(trial)
        return self.fixed(schedule)

    def fixed(self, schedule: str) -> dict[str, Any]:
        """The fixed values of a schedule's configuration (and the schedule, when only one is compared)."""
        fixed = {SCHEDULE_KEY: schedule} if len(self.space.schedules) == 1 else {}
        return fixed | {p.key: p.args[0] for p in self.space.params_for(schedule) if p.fixed}


def schedule_of(space: SearchSpace, configuration: int) -> str:
    """Configuration c compares schedule c mod k, so that every schedule gets its share (TPE's studies;
    a grid's configuration c is its point c)."""
    return space.schedules[configuration % len(space.schedules)]


@dataclass
class SeedOutcome:
    """How one seed of a configuration ended, as Optuna is to learn it."""

    value: float | None  # the last reported metric; None when there is none
    failed: bool = False  # diverged, or ended in an error
    stopped: bool = False  # stopped early (ASHA) before its planned epochs


class StudySearcher(InStudyFolder, Searcher):
    """Ray Tune searcher: the study's planned configurations, each once per seed, sampled by Optuna.

    Configuration c (0 .. num_samples - 1) is the Optuna trial with user attribute ``configuration``
    = c; its schedule is fixed to schedule c mod k and TPE samples the rest (with ``search.paired``,
    the others of each group of k take the values of its first, so every schedule runs at the same
    values and the comparison is not confounded with them); Tune runs it once per
    seed. With ``tune.sampler: grid`` configuration c is grid point c (``SearchSpace.grid``), enqueued
    whole: Optuna records its values (for the trial table and parameter importance) and samples
    nothing. Every validation is an intermediate value of its configuration (the mean over the seeds
    at that epoch, once every seed reached it; each seed's curve is a user attribute), so Optuna's
    dashboard draws the curves of a running study. Optuna learns, once every seed has ended: FAIL
    when any seed diverged or failed (the metric of a diverged trial is a placeholder TPE must not
    learn from, and a setting that diverges for one seed in n is not one to recommend); PRUNED (the
    epochs only some seeds reached are intermediate values too) when a seed was stopped early by
    ASHA or none reported the metric; else the mean over the seeds of their last reported metric.

    optuna.db is written at once, Tune's snapshot (with this searcher's state) every few seconds: a
    kill in between leaves Optuna trials the snapshot never saw. A resumed study adopts them for the
    configurations they were asked for (instead of asking new ones) and never tells a trial twice,
    so it runs exactly the planned configurations and seeds.

    ``make_searcher`` builds ``StudySearcher(space, Path("runs/demo"))`` (optuna.db in that folder).
    """

    def __init__(self, space: SearchSpace, out: Path):
        super().__init__(metric=space.tune.metric, mode=space.tune.mode)
        self.space = space
        self.out = Path(out)  # optuna.db's folder
        self.suggest_space = Suggest(space)
        self.grid = space.grid() if space.tune.sampler == "grid" else None
        self._study: Any = None
        self.next_configuration = 0
        self.queue: list[tuple[int, int]] = []  # (configuration, seed index) not yet given to a trial
        self.configs: dict[int, dict[str, Any]] = {}  # configuration -> its sampled and fixed values
        self.optuna_numbers: dict[int, int] = {}  # configuration -> Optuna trial number
        self.trials: dict[str, tuple[int, int]] = {}  # Tune trial id -> (configuration, seed index)
        self.validations: dict[
            int, dict[int, dict[int, float]]
        ] = {}  # configuration -> seed -> epoch -> metric
        self.outcomes: dict[int, dict[int, SeedOutcome]] = {}

    @property
    def study(self) -> Any:
        import optuna

        if self._study is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            settings = self.space.tune
            self._study = optuna.create_study(
                storage=optuna.storages.RDBStorage(f"sqlite:///{self.out / 'optuna.db'}"),
                study_name=self.space.name,
                direction="maximize" if settings.mode == "max" else "minimize",
                sampler=optuna.samplers.TPESampler(
                    seed=settings.seed, n_startup_trials=settings.startup_trials
                ),
                load_if_exists=True,
            )
        return self._study

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self.queue:
            if self.next_configuration >= self.space.tune.num_samples:
                return Searcher.FINISHED
            self._ask(self.next_configuration)
            self.queue = [(self.next_configuration, s) for s in range(len(self.space.seeds))]
            self.next_configuration += 1
        configuration, seed = self.queue.pop(0)
        self.trials[trial_id] = (configuration, seed)
        return {
            **self.configs[configuration],
            SEED_KEY: self.space.seeds[seed],
            CONFIGURATION_KEY: configuration,
        }

    def _ask(self, configuration: int) -> None:
        """Ask Optuna for configuration c, or adopt the trial a killed run asked for it."""
        import optuna

        left = [
            t
            for t in self.study.get_trials(deepcopy=False)
            if t.user_attrs.get("configuration") == configuration
        ]
        if left and left[0].state.is_finished():
            schedule = left[0].params.get(SCHEDULE_KEY, self.space.schedules[0])
            values = {**left[0].params, **self.suggest_space.fixed(schedule)}
            number = left[0].number
        else:
            if not left:  # a new one: enqueued with its schedule, then popped by ask()
                point = self._fixed_point(configuration)
                self.study.enqueue_trial(point, user_attrs={"configuration": configuration})
            if left and left[0].state == optuna.trial.TrialState.RUNNING:
                trial = optuna.trial.Trial(self.study, left[0]._trial_id)  # suggests return what it holds
            else:
                trial = self.study.ask()
            fixed = self.suggest_space(trial)
            values, number = {**trial.params, **fixed}, trial.number
        self.configs[configuration] = values
        self.optuna_numbers[configuration] = number

    def _fixed_point(self, configuration: int) -> dict[str, Any]:
        """What configuration c has fixed before TPE samples: its schedule and, when the study pairs
        schedules, the sampled values of the first configuration of its group; in a grid, every value."""
        if self.grid is not None:
            point = self.grid[configuration]
            one = len(self.space.schedules) == 1  # the schedule is then no Optuna parameter
            return {k: v for k, v in point.items() if not (one and k == SCHEDULE_KEY)}
        if len(self.space.schedules) == 1:
            return {}
        schedule = schedule_of(self.space, configuration)
        point = {SCHEDULE_KEY: schedule}
        first = configuration - configuration % len(self.space.schedules)
        if self.space.paired and first != configuration:
            own = {p.key for p in self.space.params_for(schedule) if not p.fixed}
            point |= {k: v for k, v in self.configs[first].items() if k in own}
        return point

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Every validation of a seed; once every seed has validated an epoch, their mean is the
        configuration's intermediate value at that epoch (Optuna's dashboard draws the curves)."""
        configuration, seed = self._locate(trial_id, result)
        if not self._remember(configuration, seed, result):
            return
        epoch = result["epoch"]
        values = [
            by_epoch[epoch] for by_epoch in self.validations[configuration].values() if epoch in by_epoch
        ]
        if len(values) == len(self.space.seeds):
            self._report(configuration, {epoch: values})

    def _remember(self, configuration: int, seed: int, result: dict) -> bool:
        """Keep a result's validation, if it has one; whether it had."""
        if not (result.get("validated") and self.metric in result and "epoch" in result):
            return False
        seeds = self.validations.setdefault(configuration, {})
        seeds.setdefault(seed, {})[result["epoch"]] = result[self.metric]
        return True

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        result = result or {}
        configuration, seed = self._locate(trial_id, result)
        self._remember(configuration, seed, result)  # a trial ASHA stops skips on_trial_result for it
        failed = error or bool(result.get("diverged"))
        value = None if failed else result.get(self.metric)
        planned = result.get("epochs_planned")
        stopped = value is not None and planned is not None and result.get("epoch", planned) < planned
        self.outcomes.setdefault(configuration, {})[seed] = SeedOutcome(value, failed, stopped)
        if len(self.outcomes[configuration]) == len(self.space.seeds):
            self._tell(configuration)

    def _tell(self, configuration: int) -> None:
        import optuna

        number = self.optuna_numbers[configuration]
        outcomes = list(self.outcomes[configuration].values())
        frozen = self.study.get_trials(deepcopy=False)[number]
        if frozen.state.is_finished():  # told before a kill that Tune's snapshot did not see
            return
        by_epoch: dict[int, list[float]] = {}  # with the epochs not every seed reached (one stopped early)
        for seed_values in self.validations.get(configuration, {}).values():
            for epoch, value in seed_values.items():
                by_epoch.setdefault(epoch, []).append(value)
        self._report(configuration, by_epoch)
        if any(o.failed for o in outcomes):
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
            return
        values = [o.value for o in outcomes if o.value is not None]
        if values and not any(o.stopped for o in outcomes):
            self.study.tell(number, sum(values) / len(values))
            return
        self.study.tell(number, state=optuna.trial.TrialState.PRUNED)

    def _report(self, configuration: int, by_epoch: dict[int, list[float]]) -> None:
        """Report the mean over seeds at each epoch not reported yet; each seed's curve as a user attr."""
        import optuna

        number = self.optuna_numbers[configuration]
        frozen = self.study.get_trials(deepcopy=False)[number]
        if frozen.state.is_finished():
            return
        trial = optuna.trial.Trial(self.study, frozen._trial_id)
        for epoch, values in sorted(by_epoch.items()):
            if epoch not in frozen.intermediate_values:
                trial.report(sum(values) / len(values), epoch)
        for seed, values in self.validations.get(configuration, {}).items():
            curve = {str(epoch): value for epoch, value in sorted(values.items())}
            trial.set_user_attr(f"{self.metric} seed {self.space.seeds[seed]}", curve)

    def _locate(self, trial_id: str, result: dict) -> tuple[int, int]:
        """The (configuration, seed index) of a trial; from its config when Tune's snapshot is newer."""
        if trial_id not in self.trials:
            config = result.get("config", {})
            located = (config[CONFIGURATION_KEY], self.space.seeds.index(config[SEED_KEY]))
            self.trials[trial_id] = located
            if located in self.queue:
                self.queue.remove(located)
        return self.trials[trial_id]

    STATE = ("next_configuration", "queue", "configs", "optuna_numbers", "trials", "validations", "outcomes")

    def get_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STATE}

    def set_state(self, state: dict[str, Any]) -> None:
        for name in self.STATE:
            setattr(self, name, state.get(name, getattr(self, name)))  # a study from before a name existed

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.get_state(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.set_state(pickle.load(file))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None}  # the Optuna study is reopened from optuna.db


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune trial's config as logged to W&B: the sampled and fixed keys and ``train.seed``."""
    return {k: v for k, v in config.items() if k != CONFIGURATION_KEY}


def make_searcher(space: SearchSpace, out: Path) -> StudySearcher:
    """Optuna (its study in DIR/optuna.db) over the planned configurations, each once per seed."""
    return StudySearcher(space, out)

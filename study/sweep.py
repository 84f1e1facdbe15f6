"""``python -m study.sweep SEARCH_SPACE.yaml [--out DIR] [--set k=v] [--address ADDR] [--resume]``: a study.

Ray Tune spreads the trials over the CPUs and GPUs of a Ray cluster, Optuna's TPE proposes the
configurations, and every trial trains one schedule with the shared trainer and reports each epoch.

The search-space file format is described in ``study/search_space.py``. Each trial's sampled dict
(flat dotted keys plus ``train.seed``) is what W&B logs as its config.

How the pieces fit:
- The plan: ``StudySearcher`` asks Optuna for ``num_samples`` configurations and runs each once
  per seed; configuration c compares schedule c mod k, so every schedule gets its share, and TPE
  samples the other values. optuna.db holds one trial per configuration: the mean over its seeds
  of the last reported metric, FAIL when any seed diverged or failed, PRUNED (with its per-period
  means) when ASHA stopped a seed. A kill at any moment loses no planned configuration or seed.
- Early stopping: ASHA measures time in completed periods (``periods_done``, +1 on the last epoch
  of each period), so its rungs fall on period ends, never in the dip right after a rollback.
- Every epoch is reported and carries the metric: epochs without validation repeat the last
  validated value (0 before the first), ``validated`` says which epochs computed it.
- A trial whose loss becomes NaN/inf reports a last result flagged ``diverged`` (metric 0, for Tune and
  ASHA only) and ends; the study goes on and Optuna records its configuration as FAIL.
- A trial that fails (its node lost) restarts from its last checkpoint, up to TRIAL_RETRIES times.
- Each trial's newest checkpoint is kept once, in Tune's folder (``tune/<trial id>/checkpoint_*/``):
  the trainer's file leaves the run folder once Tune holds its copy, and comes back from Tune when
  the trial is restored. A resumed trial continues from the newest checkpoint, Tune's or one a kill
  left in its run folder before Tune took it, and first reports again the epochs that a kill left
  out of Tune's last snapshot, so neither ASHA nor the tables miss an epoch.

Results in DIR (default ``runs/<search-space name>``): ``study.yaml`` (the resolved search space),
``.lock`` (held while a sweep runs there), ``tune/`` (Ray's experiment, for ``--resume``),
``trials/<trial id>/`` (each trial's run folder), ``wandb/``, ``optuna.db`` (one Optuna trial per
configuration), ``results.csv`` (one row per trial) and ``epochs.csv`` (one row per trial and epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import importlib.util
import logging
import math
import netrc
import os
import pickle
import queue
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from schedules import next_epoch
from study.config import RunConfig, config_from_dict, read_yaml
from study.errors import UserError, cli
from study.files import atomic_write_csv, atomic_write_text, check_output_folder, remove_stale_temporaries
from study.search_space import (
    SCHEDULE_KEY,
    SEED_KEY,
    SearchSpace,
    TuneSettings,
    load_search_space,
    set_dotted,
)

try:  # the "sweep" extra; checking a search space works without it
    from ray.tune import Callback
    from ray.tune.search import Searcher
except ImportError:
    Callback = Searcher = object

CONFIGURATION_KEY = "__configuration__"  # in a Tune trial's config: the configuration it is a seed of
EXPERIMENT = "tune"  # Ray's experiment folder inside the study folder
# ASHA stops any trial at max_t periods: set far beyond any plan, so trials end with their own plan.
ASHA_MAX_PERIODS = 1000
WRITE_EVERY_S = 10.0
LOCK = ".lock"  # held by the sweep running in a study folder
TRIAL_RETRIES = 2  # restarts of a failed trial (a lost node, a killed worker) before it counts as an error


# ----------------------------------------------------------------------------- Optuna's view


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
    """Configuration c compares schedule c mod k, so that every schedule gets its share."""
    return space.schedules[configuration % len(space.schedules)]


@dataclass
class SeedOutcome:
    """How one seed of a configuration ended, as Optuna is to learn it."""

    value: float | None  # the last reported metric; None when there is none
    failed: bool = False  # diverged, or ended in an error
    stopped: bool = False  # stopped early (ASHA) before its planned epochs


class StudySearcher(Searcher):
    """Ray Tune searcher: the study's planned configurations, each once per seed, sampled by Optuna.

    Configuration c (0 .. num_samples - 1) is the Optuna trial with user attribute ``configuration``
    = c; its schedule is fixed to schedule c mod k and TPE samples the rest (with ``search.paired``,
    the others of each group of k take the values of its first, so every schedule runs at the same
    values and the comparison is not confounded with them); Tune runs it once per
    seed. Optuna learns, once every seed has ended: FAIL when any seed diverged or failed (the metric
    of a diverged trial is a placeholder TPE must not learn from, and a setting that diverges for one
    seed in n is not one to recommend); PRUNED, with the mean over seeds at every completed period as
    its intermediate values, when a seed was stopped early by ASHA or none reported the metric; else
    the mean over the seeds of their last reported metric.

    optuna.db is written at once, Tune's snapshot (with this searcher's state) every few seconds: a
    kill in between leaves Optuna trials the snapshot never saw. A resumed study adopts them for the
    configurations they were asked for (instead of asking new ones) and never tells a trial twice,
    so it runs exactly the planned configurations and seeds.

    >>> StudySearcher(space, "sqlite:///runs/demo/optuna.db")  # what make_searcher builds
    """

    def __init__(self, space: SearchSpace, storage: str):
        super().__init__(metric=space.tune.metric, mode=space.tune.mode)
        self.space = space
        self.storage = storage
        self.suggest_space = Suggest(space)
        self._study: Any = None
        self.next_configuration = 0
        self.queue: list[tuple[int, int]] = []  # (configuration, seed index) not yet given to a trial
        self.configs: dict[int, dict[str, Any]] = {}  # configuration -> its sampled and fixed values
        self.optuna_numbers: dict[int, int] = {}  # configuration -> Optuna trial number
        self.trials: dict[str, tuple[int, int]] = {}  # Tune trial id -> (configuration, seed index)
        self.periods: dict[int, dict[int, dict[int, float]]] = {}  # configuration -> seed -> period -> metric
        self.outcomes: dict[int, dict[int, SeedOutcome]] = {}

    @property
    def study(self) -> Any:
        import optuna

        if self._study is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            settings = self.space.tune
            self._study = optuna.create_study(
                storage=optuna.storages.RDBStorage(self.storage),
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
        schedules, the sampled values of the first configuration of its group."""
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
        configuration, seed = self._locate(trial_id, result)
        done = result.get("periods_done", 0)
        if result.get("validated") and done > 0 and self.metric in result:
            # The first validated epoch of each completed-period count is that period's end.
            self.periods.setdefault(configuration, {}).setdefault(seed, {}).setdefault(
                done, result[self.metric]
            )

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        result = result or {}
        configuration, seed = self._locate(trial_id, result)
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
        if any(o.failed for o in outcomes):
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
            return
        values = [o.value for o in outcomes if o.value is not None]
        if values and not any(o.stopped for o in outcomes):
            self.study.tell(number, sum(values) / len(values))
            return
        trial = optuna.trial.Trial(self.study, frozen._trial_id)
        by_period: dict[int, list[float]] = {}
        for periods in self.periods.get(configuration, {}).values():
            for period, metric in periods.items():
                by_period.setdefault(period, []).append(metric)
        for period, metrics in sorted(by_period.items()):
            if period not in frozen.intermediate_values:
                trial.report(sum(metrics) / len(metrics), period)
        self.study.tell(number, state=optuna.trial.TrialState.PRUNED)

    def _locate(self, trial_id: str, result: dict) -> tuple[int, int]:
        """The (configuration, seed index) of a trial; from its config when Tune's snapshot is newer."""
        if trial_id not in self.trials:
            config = result.get("config", {})
            located = (config[CONFIGURATION_KEY], self.space.seeds.index(config[SEED_KEY]))
            self.trials[trial_id] = located
            if located in self.queue:
                self.queue.remove(located)
        return self.trials[trial_id]

    STATE = ("next_configuration", "queue", "configs", "optuna_numbers", "trials", "periods", "outcomes")

    def get_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STATE}

    def set_state(self, state: dict[str, Any]) -> None:
        for name in self.STATE:
            setattr(self, name, state[name])

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


# ----------------------------------------------------------------------------- one trial


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its sampled config."""

    space: SearchSpace
    out: str


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune trainable: train one sampled configuration with the shared trainer, reporting every epoch."""
    from ray import tune

    from schedules import build_schedule
    from study.trainer import Diverged, train_run

    # Ray logs a line per checkpoint; with a checkpoint every period that drowns the progress table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    trial_id = tune.get_context().get_trial_id()
    sampled = trial_params(config)
    run_config = context.space.run_config(sampled)
    run_dir = Path(context.out) / "trials" / trial_id
    tune_epoch = restore_from_tune(tune.get_checkpoint(), run_dir)
    plan = build_schedule(run_config.schedule).plan()
    reporter = EpochReporter(plan, context.space.tune, run_dir)
    reporter.catch_up(tune_epoch)
    try:
        train_run(run_config, run_dir, resume=True, on_epoch=reporter)
    except Diverged as error:
        reporter.report_divergence(str(error))


def periods_done(record: dict[str, Any], plan: list) -> int:
    """Completed periods after an epoch: the counter ASHA measures time in.

    The trainer's ``period_end`` says whether the epoch ended its period (a period may end early on a
    plateau); records written before it existed follow the plan.
    """
    ended = record.get("period_end", plan[record["epoch"] - 1].last_in_period)
    return record["period"] if ended else record["period"] - 1


def worst_value(mode: str) -> float:
    """The metric reported before the first validation and after a divergence."""
    return 0.0 if mode == "max" else math.inf


class EpochReporter:
    """The trainer's ``on_epoch``: reports each epoch's record to Tune, with the checkpoint when there is one.

    Every report carries the tuning metric: the last validated value is carried forward on epochs
    without validation (0 for mode max before the first one), and ``validated`` says which epochs
    computed it. ``periods_done`` counts completed periods; ASHA's rungs fall on period ends.
    ``best_*`` hold the best validated epoch so far, so W&B's summary (the last values) shows the best.
    """

    def __init__(self, plan: list, tune_settings: TuneSettings, run_dir: Path):
        self.plan = plan
        self.metric = tune_settings.metric
        self.mode = tune_settings.mode
        self.run_dir = run_dir
        self.epoch = 0
        self.periods_done = 0
        self.records: list[dict[str, Any]] = []
        self.last = worst_value(self.mode)
        self.best: dict[str, Any] | None = None

    def __call__(self, record: dict[str, Any], checkpoint: Path | None, keep: bool = False) -> None:
        """Report one epoch; its checkpoint leaves the run folder once Tune holds a copy, unless ``keep``."""
        self._remember(record)
        result = {
            **record,
            self.metric: self.last,
            "validated": self.metric in record,
            "periods_done": self.periods_done,
            # the maximum plan until the run is over (periods may end early): then the epochs it took
            "epochs_planned": self.epoch if next_epoch(self.plan, self.records) is None else len(self.plan),
            "diverged": False,
            **self._best_so_far(),
        }
        self._report(result, checkpoint, keep)

    def catch_up(self, tune_epoch: int) -> None:
        """Start a resumed trial: Tune restored it from ``tune_epoch`` (0: from scratch).

        The trainer continues from the newest checkpoint in the run folder, which a kill may have
        left ahead of Tune's last snapshot; the epochs in between are reported again (the last with
        that checkpoint), so Tune, ASHA and the tables miss none of them.
        """
        history = history_to_resume(self.run_dir)
        newest = newest_checkpoint(self.run_dir)
        for record in history:
            if record["epoch"] <= tune_epoch:
                self._remember(record)
            else:
                last = newest is not None and record["epoch"] == checkpoint_epoch(newest)
                self(record, newest if last else None, keep=True)  # the trainer resumes from it

    def report_divergence(self, message: str) -> None:
        """Report the epoch whose loss became NaN/inf as the trial's last result, flagged ``diverged``."""
        from ray import tune

        epoch = min(self.epoch + 1, len(self.plan))
        result = {
            "epoch": epoch,
            "period": self.periods_done + 1,  # the diverging epoch is in the period after the completed ones
            "loss": math.nan,
            self.metric: worst_value(self.mode),
            "validated": False,
            "periods_done": self.periods_done,
            "epochs_planned": len(self.plan),
            "diverged": True,
            **self._best_so_far(),
        }
        print(f"trial diverged: {message}")
        tune.report(result)

    def _remember(self, record: dict[str, Any]) -> None:
        self.epoch = record["epoch"]
        self.periods_done = periods_done(record, self.plan)
        self.records.append(record)
        value = record.get(self.metric)
        if value is None:
            return
        self.last = value
        best = None if self.best is None else self.best[self.metric]
        if best is None or (value > best if self.mode == "max" else value < best):
            self.best = record

    def _best_so_far(self) -> dict[str, Any]:
        if self.best is None:
            return {}
        prefix = self.metric.split("_")[0]
        best = {f"best_{k}": v for k, v in self.best.items() if k.startswith(f"{prefix}_")}
        return {**best, "best_epoch": self.best["epoch"]}

    def _report(self, result: dict[str, Any], checkpoint: Path | None, keep: bool) -> None:
        from ray import tune

        if checkpoint is None:
            tune.report(result)
            return
        for old in checkpoint.parent.glob("epoch-*.pt"):
            if old != checkpoint:  # what a restore or a kill left: Tune holds a newer one now
                old.unlink(missing_ok=True)
        stage = self.run_dir / ".to-tune"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        try:
            _link_or_copy(checkpoint, stage / checkpoint.name)
            for name in ("config.yaml", "metrics.csv"):
                shutil.copy2(self.run_dir / name, stage / name)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(stage)))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        if not keep:  # Tune copied it into its folder before report returned
            checkpoint.unlink(missing_ok=True)


class CheckpointKeptOnce(Callback):
    """Ray Tune callback: when a trial ends, its run folder's checkpoints go; Tune's copy is the one kept.

    A running trial removes each file itself once Tune holds it (``EpochReporter``), but a trial
    that ASHA stops ends inside that report, so the driver removes what is left.
    """

    def __init__(self, out: Path):
        self.out = Path(out)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.checkpoint is None:
            return
        for path in (self.out / "trials" / trial.trial_id / "checkpoints").glob("epoch-*.pt"):
            path.unlink(missing_ok=True)


def restore_from_tune(checkpoint: Any, run_dir: Path) -> int:
    """Copy the checkpoint Tune restores a trial from into its run folder (the trial may have moved).

    Returns the checkpoint's epoch, 0 when Tune starts the trial from scratch.
    """
    if checkpoint is None:
        return 0
    epoch = 0
    with checkpoint.as_directory() as folder:
        for file in Path(folder).iterdir():
            target = run_dir / ("checkpoints" if file.suffix == ".pt" else "") / file.name
            if file.suffix == ".pt":
                epoch = checkpoint_epoch(file)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
    return epoch


def checkpoint_epoch(path: Path) -> int:
    """The epoch of ``checkpoints/epoch-NNNN.pt`` or ``epoch-NNNN-mid.pt``."""
    return int(path.stem[6:10])


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The run folder's checkpoint of the latest epoch, the one the trainer resumes from."""
    return max((run_dir / "checkpoints").glob("epoch-*.pt"), key=checkpoint_epoch, default=None)


def history_to_resume(run_dir: Path) -> list[dict[str, Any]]:
    """The epochs a resumed run keeps: metrics.csv rows up to the newest checkpoint."""
    newest = newest_checkpoint(run_dir)
    metrics = run_dir / "metrics.csv"
    if newest is None or not metrics.exists():
        return []
    last = checkpoint_epoch(newest)
    with metrics.open() as file:
        rows = [{k: _number(v) for k, v in row.items() if v != ""} for row in csv.DictReader(file)]
    return [row for row in rows if row["epoch"] <= last]


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# ----------------------------------------------------------------------------- W&B


def wandb_mode(configured: str) -> str:
    """online, offline or disabled: ``auto`` is online when an API key is configured, else offline."""
    if configured != "auto":
        return configured
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if wandb_key_configured() else "offline"


def wandb_notice(configured: str, mode: str, out: Path) -> str | None:
    """What the console says when ``wandb.mode: auto`` chose offline, and why; None otherwise."""
    if configured != "auto" or mode != "offline":
        return None
    why = "WANDB_MODE=offline" if os.environ.get("WANDB_MODE") else "no API key configured"
    return f"W&B: {why}; logging offline to {out}/wandb (upload later with `wandb sync`)"


def wandb_key_configured() -> bool:
    """Whether WANDB_API_KEY is set or ``wandb login`` stored a key in the netrc file (never read out)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class StudyWandb(Callback):
    """W&B logging from the driver: one run per trial, grouped by study, tagged with its schedule.

    The run's config is the trial's sampled dict (flat dotted keys and ``train.seed``); every reported
    epoch is logged. Each run has a thread of its own, so Tune's loop never waits on W&B, and the API
    key stays in this process's environment (Ray's own W&B logger hands it to an actor through a
    runtime environment, which Ray writes to its logs). Runs are in DIR/wandb.
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
        self.runs[trial.trial_id] = WandbRun(
            project=self.settings.project,
            entity=self.settings.entity,
            group=self.space.name,
            job_type="trial",
            id=trial.trial_id,
            name=f"{schedule}-{trial.trial_id}",
            tags=[schedule, *self.settings.tags],
            config=sampled,
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


# ----------------------------------------------------------------------------- results.csv, epochs.csv


class StudyRecorder(Callback):
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
        all_epochs += [{**who, **row} for row in rows]
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
    validated = [r for r in done if r.get(f"{prefix}_mAP") is not None]
    best = max(validated, key=lambda r: r[f"{prefix}_mAP"]) if validated else {}
    final = validated[-1] if validated else {}
    return {
        "epochs": len(done),
        "epochs_planned": rows[-1].get("epochs_planned") if rows else None,
        "periods_done": done[-1].get("periods_done") if done else 0,
        f"best_{prefix}_mAP": best.get(f"{prefix}_mAP"),
        "best_epoch": best.get("epoch"),
        f"best_{prefix}_rank1": best.get(f"{prefix}_rank1"),
        f"final_{prefix}_mAP": final.get(f"{prefix}_mAP"),
        f"final_{prefix}_rank1": final.get(f"{prefix}_rank1"),
        "final_loss": done[-1].get("loss") if done else None,
        "train_seconds": sum(r.get("seconds", 0.0) for r in done),
        "peak_gpu_mib": max((r["peak_gpu_mib"] for r in done if r.get("peak_gpu_mib")), default=None),
    }


def _epoch_columns(rows: list[dict[str, Any]]) -> list[str]:
    first = ["trial_id", "schedule", "seed", "epoch", "period", "periods_done", "validated", "loss"]
    seen = list(dict.fromkeys(k for row in rows for k in row))
    return first + [k for k in seen if k not in first]


# ----------------------------------------------------------------------------- the study


def check_installed(wandb_mode: str) -> None:
    """A study needs the sweep extra, unlike the trainer: Ray Tune, Optuna and (unless disabled) W&B.

    >>> check_installed("disabled")  # UserError naming what is missing, e.g. "needs ray and optuna"
    """
    needed = ["ray", "optuna"] + (["wandb"] if wandb_mode != "disabled" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing == ["wandb"]:
        raise UserError("W&B logging needs wandb: pip install wandb, or set wandb.mode=disabled")
    if missing:
        names = f"{', '.join(missing[:-1])} and {missing[-1]}" if len(missing) > 1 else missing[0]
        raise UserError(f"python -m study.sweep needs {names}: pip install -e '.[sweep]'")


def check_study_dir(out: Path, space: SearchSpace, resume: bool) -> bool:
    """Refuse a folder holding another study (or this one without --resume); True when Ray can restore it."""
    marker = out / "study.yaml"
    if marker.exists():
        saved = read_yaml(marker)
        if not resume:
            raise UserError(
                f"{out} already holds the study {saved.get('_name', '?')!r}; "
                "pass --resume to continue it or choose another --out"
            )
        if {k: v for k, v in saved.items() if k != "_name"} != space.source:
            sections = sorted({*saved, *space.source} - {"_name"})
            differ = [s for s in sections if saved.get(s) != space.source.get(s)]
            raise UserError(
                f"{out} holds a different study (section {', '.join(differ)} differs); resume with the same "
                "search space and --set options, or choose another --out"
            )
        return (out / EXPERIMENT / "tuner.pkl").exists()
    if resume:
        raise UserError(f"{out} holds no study to resume; run without --resume to start one")
    if out.exists() and any(p.name != LOCK for p in out.iterdir()):
        raise UserError(f"{out} is not empty and holds no study; choose another --out")
    return False


def check_data(config: RunConfig) -> None:
    """Generate the synthetic data set once, or check the data set's layout and split, before any trial."""
    from study.data import split_samples

    if config.data.root != "synthetic" and not Path(config.data.root).exists():
        raise UserError(
            f"data.root {config.data.root!r} does not exist; download the data set there, "
            "or point data.root at it (--set data.root=PATH)"
        )
    split_samples(config.data)


def check_resources(tune_settings: TuneSettings, machines: list[dict[str, float]]) -> None:
    """Refuse per-trial resources that no machine of the Ray cluster can ever give (a trial runs on one).

    >>> check_resources(TuneSettings("val_mAP", gpu=1), [{"CPU": 16.0}])  # UserError: no GPU
    """
    for name, key, asked in (("cpu", "CPU", tune_settings.cpu), ("gpu", "GPU", tune_settings.gpu)):
        most = max((machine.get(key, 0) for machine in machines), default=0)
        if asked > most:
            where = "the Ray cluster's largest machine has" if len(machines) > 1 else "this Ray machine has"
            raise UserError(
                f"tune.resources.{name}={asked:g} per trial, but {where} {most:g} {key}s; "
                f"lower tune.resources.{name} (--set tune.resources.{name}=...) or add machines"
            )


# How long a Ray address may take to accept a connection before it counts as unreachable.
ADDRESS_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001


def check_address(address: str | None, option: str = "--address") -> None:
    """Refuse a Ray address that is malformed or where nothing answers within ADDRESS_TIMEOUT_S.

    None and ``local`` start a Ray of this study's own; ``auto`` is looked up as Ray does (a cluster
    running on this machine); ``HOST:PORT`` is a cluster's GCS, ``ray://HOST[:PORT]`` a Ray Client
    server (port 10001 by default). A TCP connection is tried before ``ray.init``, which would retry
    for minutes.

    >>> check_address("127.0.0.1:6399")  # UserError: no Ray cluster answers at 127.0.0.1:6399 ...
    """
    if address in (None, "", "local"):
        return
    shown, target = address, address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            raise UserError(
                f"{option} auto: no Ray cluster runs on this machine; start one with `ray start --head`,"
                f" or leave out {option} to start a Ray of this study's own"
            ) from None
        except (ImportError, AttributeError):  # Ray moved its lookup; ray.init still reports errors
            return
        if target is None:
            return
        shown = f"{target} ({option} auto)"
    rest = target.removeprefix("ray://")
    host, colon, port = rest.rpartition(":")
    if target.startswith("ray://") and not colon:
        host, port = rest, str(RAY_CLIENT_PORT)
    host = host.strip("[]")  # [::1]:6379
    if not (host and "/" not in host and port.isdigit() and 0 < int(port) < 65536):
        raise UserError(
            f"{option} {address!r} is not a Ray address; use auto, HOST:PORT (a cluster's head, "
            "e.g. 10.0.0.5:6379) or ray://HOST:PORT"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as error:
        reason = "no answer" if isinstance(error, TimeoutError) else error.strerror or type(error).__name__
        raise UserError(
            f"no Ray cluster answers at {shown} ({reason} within {ADDRESS_TIMEOUT_S:g} s); start one with"
            f" `ray start --head --port={port}` there, or check {option}"
        ) from None


def check_ray(address: str | None, tune_settings: TuneSettings) -> None:
    """Before anything is created: the Ray to join answers, and a Ray started here can run a trial.

    ``address`` is --address (else RAY_ADDRESS); nothing is checked when this process already joined
    a Ray, where the study runs. A cluster's resources are checked once joined (``check_resources``).
    """
    import ray

    if ray.is_initialized():
        return
    option = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    check_address(address, option)
    if address in (None, "", "local"):  # Ray starts here, with at most this machine's CPUs and GPUs
        import torch

        check_resources(tune_settings, [{"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}])


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m study.sweep",
        description="Run a study: Ray Tune trials, Optuna TPE, W&B logging.",
        epilog="The search-space format is described in study/search_space.py and atop search_spaces/*.yaml.",
    )
    parser.add_argument("search_space", help="search-space YAML: a run config plus search and tune sections")
    parser.add_argument("--out", help="study folder (default runs/<search-space name>)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. tune.num_samples=4"
    )
    parser.add_argument(
        "--address", help="join this Ray cluster (e.g. auto, or HOST:6379) instead of starting a local one"
    )
    parser.add_argument("--resume", action="store_true", help="continue the study in --out")
    args = parser.parse_args(argv)

    space = load_search_space(args.search_space, args.set)
    base = config_from_dict(space.base)
    mode = wandb_mode(base.wandb.mode)
    check_installed(mode)
    out = Path(args.out or Path("runs") / space.name).resolve()
    check_output_folder(out)
    restore = check_study_dir(out, space, args.resume)
    check_ray(args.address, space.tune)
    check_data(base)
    if notice := wandb_notice(base.wandb.mode, mode, out):
        print(notice)
    fresh = not out.exists()
    try:
        with study_lock(out):
            remove_stale_temporaries(out)  # of result tables a kill interrupted; under the lock
            print(describe(space))
            statuses = run_study(space, out, args.address, restore, mode)
    except UserError:
        if fresh:  # refused before any trial (a cluster short of resources): leave no empty folder
            with contextlib.suppress(OSError):
                (out / LOCK).unlink(missing_ok=True)
                out.rmdir()
        raise
    print(summary_line(statuses))
    print(f"wrote {out}/results.csv and {out}/epochs.csv; next: python -m study.report {out}")
    if "interrupted" in statuses or len(statuses) < space.num_trials:
        print(f"interrupted; continue with: python -m study.sweep {args.search_space} --out {out} --resume")
        raise SystemExit(130)
    if "error" in statuses:  # a bug or a lost machine, not a bad configuration: diverged trials are results
        print(f"{statuses.count('error')} trial(s) failed; their errors are in {out}/tune/*/error.txt")
        raise SystemExit(1)


@contextlib.contextmanager
def study_lock(out: Path) -> Iterator[None]:
    """Hold DIR/.lock while the study runs: a second sweep on the folder is refused with one line.

    The kernel releases the lock when this process ends, however it ends, so a killed sweep leaves
    nothing stuck; the file only names the last holder.
    """
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK).open("a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "?"
            raise UserError(
                f"{out} is in use by another python -m study.sweep (process {holder}); "
                "wait for it to end, or choose another --out"
            ) from None
        file.truncate(0)
        file.write(f"{os.getpid()}\n")
        file.flush()
        yield


def run_study(space: SearchSpace, out: Path, address: str | None, restore: bool, mode: str) -> list[str]:
    """Start or join Ray, run (or restore) the Tuner, and return every trial's status."""
    import ray

    started = not ray.is_initialized()
    scratch = out / ".tmp"
    if started:
        init_ray(address, scratch)
    try:
        check_resources(space.tune, [node["Resources"] for node in ray.nodes() if node["Alive"]])
        tuner = make_tuner(space, out, mode, restore)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the CLIReporter table instead of Ray's new output
        # Keeping one checkpoint per trial snapshots the experiment at every period end; that is intended.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        tuner.fit()
    finally:
        if started:
            ray.shutdown()
            shutil.rmtree(scratch, ignore_errors=True)
    return mark_interrupted(out)


def mark_interrupted(out: Path) -> list[str]:
    """Mark trials that Ray's last snapshot holds unfinished as ``interrupted``; return every status.

    An interrupted sweep stops its running trials (so they look stopped); ``--resume`` continues them.
    """
    from ray.tune import ExperimentAnalysis

    if not (out / "results.csv").exists():
        return []
    saved = {t.trial_id: t.status for t in ExperimentAnalysis(str(out / EXPERIMENT)).trials}
    with (out / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        unfinished = saved.get(row["trial_id"]) not in (None, "TERMINATED", "ERROR")
        if unfinished and row["status"] not in ("finished", "diverged"):
            row["status"] = "interrupted"
    atomic_write_csv(out / "results.csv", rows)
    return [row["status"] for row in rows]


def init_ray(address: str | None, scratch: Path) -> None:
    """Join ``address`` (or RAY_ADDRESS), or start a local Ray without its dashboard.

    Ray's workers get this project on PYTHONPATH and keep temporary files in ``scratch``: Ray kills
    them at the end, and W&B's temporary folders would otherwise pile up in /tmp.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    root = str(Path(__file__).resolve().parent.parent)
    # The project, the working directory and PYTHONPATH: where plug-in schedules (module:Class) live.
    paths = [root, os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    scratch.mkdir(parents=True, exist_ok=True)
    env_vars = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "TMPDIR": str(scratch)}
    runtime_env = {"env_vars": env_vars}
    # Ray's token authentication stays on; its notice on every local start is noise for a local study.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env)
        else:
            ray.init(include_dashboard=False, runtime_env=runtime_env)
    except BaseException as error:
        shutil.rmtree(scratch, ignore_errors=True)
        if address and isinstance(error, ConnectionError | ValueError):  # e.g. the cluster just ended
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UserError(f"cannot join the Ray cluster at {address}: {detail}") from None
        raise


def make_tuner(space: SearchSpace, out: Path, mode: str, restore: bool) -> Any:
    """A new Tuner (StudySearcher, ASHA on periods, W&B and the tables), or the restored one."""
    from ray import tune

    context = TrialContext(space, str(out))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), {"cpu": space.tune.cpu, "gpu": space.tune.gpu}
    )
    if restore:
        path = str(out / EXPERIMENT)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    marker = yaml.safe_dump({"_name": space.name, **space.source}, sort_keys=False)
    atomic_write_text(out / "study.yaml", marker)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=space.tune.metric,
            mode=space.tune.mode,
            search_alg=make_searcher(space, out),
            scheduler=make_scheduler(space),
            num_samples=space.num_trials,
            max_concurrent_trials=space.tune.max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=str(out),
            callbacks=make_callbacks(space, out, mode),
            progress_reporter=make_reporter(space),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # A trial whose node is lost (or that fails) restarts from its last checkpoint.
            failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
            verbose=1,
        ),
    )


def make_callbacks(space: SearchSpace, out: Path, mode: str) -> list:
    """The results tables, one copy of each checkpoint, and W&B unless it is disabled."""
    callbacks: list = [StudyRecorder(out, space), CheckpointKeptOnce(out)]
    if mode != "disabled":
        callbacks.append(StudyWandb(space, out, mode))
    return callbacks


def make_searcher(space: SearchSpace, out: Path) -> StudySearcher:
    """Optuna TPE (its study in DIR/optuna.db) over the planned configurations, each once per seed."""
    return StudySearcher(space, f"sqlite:///{out / 'optuna.db'}")


def make_scheduler(space: SearchSpace) -> Any:
    """ASHA with time measured in completed periods (rungs on period ends), or FIFO."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    asha = space.tune.asha
    if asha is None:
        return FIFOScheduler()
    return AsyncHyperBandScheduler(
        time_attr="periods_done",
        max_t=ASHA_MAX_PERIODS,
        grace_period=asha.grace_periods,
        reduction_factor=asha.reduction_factor,
    )


def make_reporter(space: SearchSpace) -> Any:
    """Ray's CLIReporter with the schedule, the tuned values, epoch, periods, metric and loss."""
    from ray.tune import CLIReporter

    parameters = {
        key: "schedule" if key == SCHEDULE_KEY else key.removeprefix("schedule.")
        for key in space.tuned_keys()
    }
    if len(space.seeds) > 1:
        parameters[SEED_KEY] = "seed"
    metric = space.tune.metric
    return CLIReporter(
        parameter_columns=parameters,
        metric_columns={"epoch": "epoch", "periods_done": "periods", metric: metric, "loss": "loss"},
        sort_by_metric=True,
        max_report_frequency=30,
    )


def trial_dirname(trial: Any) -> str:
    """Ray's folder for a trial: its id."""
    return trial.trial_id


def describe(space: SearchSpace) -> str:
    """``study demo: 6 trials (3 configurations x 2 seeds); epochs per trial: finetune 9, ...``."""
    from schedules import build_schedule

    epochs = []
    for schedule in space.schedules:
        data = space.base_for(schedule)
        for param in space.params_for(schedule):
            if param.fixed:
                set_dotted(data, param.key, param.args[0])
        tuned = any(not p.fixed and p.schedule_param for p in space.params_for(schedule))
        total = build_schedule(config_from_dict(data).schedule).total_epochs
        epochs.append(f"{schedule} {total}{' at the base values' if tuned else ''}")
    return (
        f"study {space.name}: {space.num_trials} trials ({space.tune.num_samples} configurations x "
        f"{len(space.seeds)} seeds); epochs per trial: {', '.join(epochs)}"
    )


def summary_line(statuses: list[str]) -> str:
    """``8 trials: 5 finished, 2 stopped, 1 diverged``."""
    counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
    return f"{len(statuses)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())


if __name__ == "__main__":
    sys.exit(main())

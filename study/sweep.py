"""``python -m study.sweep SEARCH_SPACE.yaml [--out DIR] [--set k=v] [--address ADDR] [--resume]``: a study.

Ray Tune spreads the trials over the CPUs and GPUs of a Ray cluster, Optuna's TPE proposes the
configurations, and every trial trains one schedule with the shared trainer and reports each epoch.

The search-space file format is described in ``study/search_space.py``. Each trial's sampled dict
(flat dotted keys plus ``train.seed``) is what W&B logs as its config.

How the pieces fit:
- Seeds: ``SeedRepeater`` (Ray's Repeater) asks Optuna for a configuration and runs it once per
  seed; Optuna is told the mean over the seeds of the last reported metric, or FAIL when any seed
  diverged or failed. optuna.db holds one trial per configuration.
- Schedules: with several, configuration i has its schedule fixed to schedule i mod k (points Optuna
  evaluates first), so every schedule gets its share; Optuna's TPE samples the other values.
- Early stopping: ASHA measures time in completed periods (``periods_done``, +1 on the last epoch
  of each period), so its rungs fall on period ends, never in the dip right after a rollback.
- Every epoch is reported and carries the metric: epochs without validation repeat the last
  validated value (0 before the first), ``validated`` says which epochs computed it.
- A trial whose loss becomes NaN/inf reports a last result flagged ``diverged`` (metric 0, for Tune and
  ASHA only) and ends; the study goes on and Optuna records its configuration as FAIL.
- Each trial keeps only its newest checkpoint; Tune holds a copy for ``--resume``. A resumed trial
  continues from the newest checkpoint in its run folder and first reports again the epochs that a
  kill left out of Tune's last snapshot, so neither ASHA nor the tables miss an epoch.

Results in DIR (default ``runs/<search-space name>``): ``study.yaml`` (the resolved search space),
``tune/`` (Ray's experiment, for ``--resume``), ``trials/<trial id>/`` (each trial's run folder),
``wandb/``, ``optuna.db`` (one Optuna trial per configuration, the mean over its seeds),
``results.csv`` (one row per trial) and ``epochs.csv`` (one row per trial and epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import logging
import math
import netrc
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

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
    from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor
    from ray.tune import Callback
    from ray.tune.search import Repeater
except ImportError:
    Callback = WandbLoggerCallback = _WandbLoggingActor = Repeater = object

TRIAL_INDEX = "__trial_index__"  # set by ray.tune.search.Repeater: which seed of a configuration
EXPERIMENT = "tune"  # Ray's experiment folder inside the study folder
# ASHA stops any trial at max_t periods: set far beyond any plan, so trials end with their own plan.
ASHA_MAX_PERIODS = 1000
WRITE_EVERY_S = 10.0


# ----------------------------------------------------------------------------- Optuna's view


class Suggest:
    """Optuna define-by-run space: the schedule, then only the parameters that schedule has.

    Values Optuna suggests are captured by OptunaSearch; fixed values are returned. A class,
    not a closure, because Ray pickles the searcher for ``--resume``.
    """

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        schedules = self.space.schedules
        fixed: dict[str, Any] = {}
        if len(schedules) > 1:
            schedule = trial.suggest_categorical(SCHEDULE_KEY, list(schedules))
        else:
            schedule = fixed[SCHEDULE_KEY] = schedules[0]
        for param in self.space.params_for(schedule):
            if param.fixed:
                fixed[param.key] = param.args[0]
            else:
                param.suggest(trial)
        return fixed


def balanced_schedules(space: SearchSpace) -> list[dict[str, Any]]:
    """Points Optuna evaluates first: configuration i gets schedule i mod k, so each gets its share."""
    if len(space.schedules) == 1:
        return []
    k = len(space.schedules)
    return [{SCHEDULE_KEY: space.schedules[i % k]} for i in range(space.tune.num_samples)]


class SeedRepeater(Repeater):
    """Ray's Repeater (each configuration once per seed) that tells Optuna FAIL for a failed configuration.

    A configuration is FAIL in Optuna when any of its seeds diverged or ended in an error: the metric
    a diverged trial reports is a placeholder TPE must not learn from, and a setting that diverges for
    one seed in n is not one to recommend. Otherwise Optuna gets the mean over the seeds of their last
    reported metric (a seed stopped by ASHA counts with its last value); a configuration none of whose
    seeds reported the metric is PRUNED.

    >>> SeedRepeater(OptunaSearch(space=Suggest(space), ...), repeat=len(space.seeds))  # make_searcher
    """

    def __init__(self, searcher: Any, repeat: int):
        super().__init__(searcher, repeat=repeat, set_index=True)
        self.failed: set[str] = set()  # primary trial ids of configurations with a failed seed

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        group = self._trial_id_to_group[trial_id]
        metric = self.searcher.metric
        result = result or {}
        failed = error or bool(result.get("diverged"))
        if failed:
            self.failed.add(group.primary_trial_id)
        value = None if failed else result.get(metric)
        group.report(trial_id, math.nan if value is None else value)  # nan: no value from this seed
        if not group.finished_reporting():
            return
        scores = [s for s in group.scores() if not math.isnan(s)]
        if group.primary_trial_id in self.failed:
            self.searcher.on_trial_complete(group.primary_trial_id, error=True)
        elif not scores:
            self.searcher.on_trial_complete(group.primary_trial_id)
        else:
            self.searcher.on_trial_complete(group.primary_trial_id, {metric: sum(scores) / len(scores)})


def trial_params(config: dict[str, Any], seeds: tuple[int, ...]) -> dict[str, Any]:
    """A Tune trial's config as logged to W&B: the sampled keys plus ``train.seed`` for its repeat index."""
    sampled = {k: v for k, v in config.items() if k != TRIAL_INDEX}
    sampled[SEED_KEY] = seeds[config.get(TRIAL_INDEX, 0)]
    return sampled


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
    sampled = trial_params(config, context.space.seeds)
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


def periods_done(step: Any) -> int:
    """Completed periods after an epoch: the counter ASHA measures time in."""
    return step.period if step.last_in_period else step.period - 1


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
        self.last = worst_value(self.mode)
        self.best: dict[str, Any] | None = None

    def __call__(self, record: dict[str, Any], checkpoint: Path | None) -> None:
        self._remember(record)
        step = self.plan[record["epoch"] - 1]
        result = {
            **record,
            self.metric: self.last,
            "validated": self.metric in record,
            "periods_done": periods_done(step),
            "epochs_planned": len(self.plan),
            "diverged": False,
            **self._best_so_far(),
        }
        self._report(result, checkpoint)

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
                self(record, newest if last else None)

    def report_divergence(self, message: str) -> None:
        """Report the epoch whose loss became NaN/inf as the trial's last result, flagged ``diverged``."""
        from ray import tune

        epoch = min(self.epoch + 1, len(self.plan))
        step = self.plan[epoch - 1]
        result = {
            "epoch": epoch,
            "period": step.period,
            "loss": math.nan,
            self.metric: worst_value(self.mode),
            "validated": False,
            "periods_done": step.period - 1,
            "epochs_planned": len(self.plan),
            "diverged": True,
            **self._best_so_far(),
        }
        print(f"trial diverged: {message}")
        tune.report(result)

    def _remember(self, record: dict[str, Any]) -> None:
        self.epoch = record["epoch"]
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

    def _report(self, result: dict[str, Any], checkpoint: Path | None) -> None:
        from ray import tune

        if checkpoint is None:
            tune.report(result)
            return
        for old in checkpoint.parent.glob("epoch-*.pt"):
            if old != checkpoint:  # the newest is enough to resume; Tune keeps a copy of it too
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


class _WandbActor(_WandbLoggingActor):
    def run(self) -> None:
        super().run()
        # Stop W&B's service before Ray ends this actor; otherwise its atexit hook prints a traceback.
        self._wandb.teardown()


class StudyWandb(WandbLoggerCallback):
    """Ray's W&B logger: one run per trial, grouped by study, tagged with its schedule.

    The run's config is the trial's sampled dict (flat dotted keys and ``train.seed``); every
    reported epoch is logged. Runs are logged from the driver machine, in DIR/wandb.
    """

    _logger_actor_cls = _WandbActor

    def __init__(self, space: SearchSpace, out: Path, mode: str):
        settings = config_from_dict(space.base).wandb
        quiet = {"console": "off", "silent": True, "x_disable_machine_info": True}
        super().__init__(
            project=settings.project,
            group=space.name,
            excludes=["config"],
            entity=settings.entity,
            dir=str(out),
            mode=mode,
            job_type="trial",
            settings=quiet,
        )
        self.space = space
        self.tags = list(settings.tags)

    def log_trial_start(self, trial: Any) -> None:
        sampled = trial_params(trial.config, self.space.seeds)
        schedule = sampled.get(SCHEDULE_KEY, self.space.schedules[0])
        self._start_logging_actor(
            trial,
            [*self._exclude_results, *self.excludes],
            id=trial.trial_id,
            name=f"{schedule}-{trial.trial_id}",
            project=self.project,
            group=self.group,
            resume="allow",
            allow_val_change=True,
            config=sampled,
            tags=[schedule, *self.tags],
            **self.kwargs,
        )

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # An interrupted sweep stops its running trials without ending their W&B runs: end them here,
        # or Ray waits upload_timeout (30 min) for runs that never finish.
        for trial in list(self._trial_queues):
            self._signal_logging_actor_stop(trial)
        super().on_experiment_end(trials, **info)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        # Ray merges result["config"] into the W&B config; keep it the sampled dict set at the start.
        super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if k != "config"})


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
        sampled = trial_params(config, space.seeds)
        schedule = sampled.get(SCHEDULE_KEY, space.schedules[0])
        rows = [epochs.get(trial_id, {})[e] for e in sorted(epochs.get(trial_id, {}))]
        who = {"trial_id": trial_id, "schedule": schedule, "seed": sampled[SEED_KEY]}
        all_epochs += [{**who, **row} for row in rows]
        status = trial_status(statuses.get(trial_id, "PENDING"), rows)
        results.append(
            {
                "trial_id": trial_id,
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
    if out.exists() and any(out.iterdir()):
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
        epilog="The search-space format is described in study/sweep.py and atop search_spaces/*.yaml.",
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
    remove_stale_temporaries(out)  # of result tables a kill interrupted
    if mode == "offline" and base.wandb.mode == "auto":
        print(f"W&B: no API key configured; logging offline to {out}/wandb (upload later with `wandb sync`)")
    print(describe(space))
    fresh = not out.exists()
    try:
        statuses = run_study(space, out, args.address, restore, mode)
    except UserError:
        if fresh:  # refused before any trial (a cluster short of resources): leave no empty folder
            with contextlib.suppress(OSError):
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


def run_study(space: SearchSpace, out: Path, address: str | None, restore: bool, mode: str) -> list[str]:
    """Start or join Ray, run (or restore) the Tuner, and return every trial's status."""
    import ray

    started = not ray.is_initialized()
    scratch = out / ".tmp"
    if started:
        init_ray(address, scratch)
    try:
        check_resources(space.tune, [node["Resources"] for node in ray.nodes() if node["Alive"]])
        os.environ["WANDB_MODE"] = mode  # Ray's W&B callback asks for an API key unless this says offline
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
    """A new Tuner (OptunaSearch in a SeedRepeater over the seeds, ASHA on periods), or the restored one."""
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
            verbose=1,
        ),
    )


def make_callbacks(space: SearchSpace, out: Path, mode: str) -> list:
    """The results tables, and W&B unless it is disabled."""
    callbacks: list = [StudyRecorder(out, space)]
    if mode != "disabled":
        callbacks.append(StudyWandb(space, out, mode))
    return callbacks


def make_searcher(space: SearchSpace, out: Path) -> Any:
    """OptunaSearch (TPE, study in DIR/optuna.db) in a SeedRepeater that runs each configuration per seed."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = space.tune
    searcher = OptunaSearch(
        space=Suggest(space),
        metric=settings.metric,
        mode=settings.mode,
        points_to_evaluate=balanced_schedules(space) or None,
        sampler=optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=settings.startup_trials),
        study_name=space.name,
        storage=optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}"),
    )
    return SeedRepeater(searcher, repeat=len(space.seeds))


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
        parameters[TRIAL_INDEX] = "seed#"
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

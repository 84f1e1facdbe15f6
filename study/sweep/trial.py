"""One trial: train a sampled configuration with the shared trainer, reporting every epoch to Tune.

Tune staging: a checkpoint goes to Tune with each period end (and mid-period one) and leaves the
run folder once Tune holds its copy; a restored trial gets it back from Tune.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from schedules import next_epoch
from study import run_folder
from study.errors import UserError
from study.files import atomic_write_text
from study.prefixes import PREFIXES, SHARING_KEYS, PrefixStore
from study.search_space import (
    SearchSpace,
    TuneSettings,
)
from study.sweep.location import InStudyFolder
from study.sweep.preflight import USER_ERROR
from study.sweep.ray_private import quiet_checkpoint_lines
from study.sweep.searcher import trial_params


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its sampled config."""

    space: SearchSpace
    out: str


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune trainable: train one sampled configuration with the shared trainer, reporting every epoch."""
    from ray import tune

    quiet_checkpoint_lines()
    try:
        _run_trial(config, context, tune.get_context().get_trial_id())
    except UserError as error:  # the same in every trial: the sweep stops with this one line
        atomic_write_text(Path(context.out) / USER_ERROR, str(error))
        raise


def _run_trial(config: dict[str, Any], context: TrialContext, trial_id: str) -> None:
    from ray import tune

    from study.trainer import Diverged, train_run

    sampled = trial_params(config)
    run_config = context.space.run_config(sampled)
    run_dir = Path(context.out) / "trials" / trial_id
    tune_epoch = restore_from_tune(tune.get_checkpoint(), run_dir)
    plan = run_config.built_schedule.plan()
    reporter = EpochReporter(plan, context.space.tune, run_dir)
    # Epochs another trial trains alike are trained once (study.prefixes): this may wait for them.
    with PrefixStore(Path(context.out) / PREFIXES).joined(trial_id, run_config, run_dir) as prefixes:
        reporter.shared = shared_columns(prefixes.taken)
        reporter.catch_up(tune_epoch)
        try:
            train_run(run_config, run_dir, resume=True, on_epoch=reporter, prefixes=prefixes)
        except Diverged as error:
            reporter.report_divergence(str(error))


def shared_columns(taken: dict[str, Any] | None) -> dict[str, Any]:
    """What a trial's results say of its shared prefix: epochs taken from another trial, and whose."""
    epochs, trained_by = SHARING_KEYS
    return {epochs: taken["epochs"] if taken else 0, trained_by: taken["trained_by"] if taken else ""}


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
        self.shared: dict[str, Any] = {}  # shared_columns(): reported with every epoch

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
            **self.shared,
        }
        self._report(result, checkpoint, keep)

    def catch_up(self, tune_epoch: int) -> None:
        """Start a resumed trial: Tune restored it from ``tune_epoch`` (0: from scratch).

        The trainer continues from the newest checkpoint in the run folder, which a kill may have
        left ahead of Tune's last snapshot; the epochs in between are reported again (the last with
        that checkpoint), so Tune, ASHA and the tables miss none of them.
        """
        newest = run_folder.newest_checkpoint(self.run_dir)
        if newest is None:
            return
        path, checkpoint = newest
        for record in checkpoint["history"]:
            if record["epoch"] <= tune_epoch:
                self._remember(record)
            else:
                last = record["epoch"] == checkpoint["epoch"]
                self(record, path if last else None, keep=True)  # the trainer resumes from it

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
        for old in run_folder.checkpoints(self.run_dir):
            if old != checkpoint:  # what a restore or a kill left: Tune holds a newer one now
                old.unlink(missing_ok=True)
        stage = self.run_dir / ".to-tune"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        try:
            _link_or_copy(checkpoint, stage / checkpoint.name)
            for name in (run_folder.CONFIG, run_folder.METRICS):
                shutil.copy2(self.run_dir / name, stage / name)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(stage)))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        if not keep:  # Tune copied it into its folder before report returned
            checkpoint.unlink(missing_ok=True)


class CheckpointKeptOnce(InStudyFolder, Callback):
    """Ray Tune callback: when a trial ends, its run folder's checkpoints go; Tune's copy is the one kept.

    A running trial removes each file itself once Tune holds it (``EpochReporter``), but a trial
    that ASHA stops ends inside that report, so the driver removes what is left.
    """

    def __init__(self, out: Path):
        self.out = Path(out)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.checkpoint is None:
            return
        for path in run_folder.checkpoints(self.out / "trials" / trial.trial_id):
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
            target = run_dir / (run_folder.CHECKPOINTS if file.suffix == ".pt" else "") / file.name
            if file.suffix == ".pt":
                epoch = run_folder.checkpoint_epoch(file)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
    return epoch


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
